// Guest-only tap file: a real volagentd with a `thin` pool (vda data 32 MiB =
// 512 blocks of 64 KiB, vdb metadata 8 MiB), run by
// test/vm/thin-no-stale-data.test.ts. A new volume never shows data of a
// deleted one: volumes (and a snapshot and a clone) are filled with a pattern
// and deleted, then new volumes are made, each written in one 4 KiB piece per
// 64 KiB block, until the pool's metadata (thin_dump) maps one of their
// blocks to a data block the deleted ones held; read whole, every new volume
// holds its pieces and zeros, never the old pattern. Only the control API is
// used, as Cinder's driver does: volumes are written and read through block
// exports.
import { mkdtemp, open, writeFile } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';
import type { Test } from 'tap';

import type { AgentProcess, ThinPoolSpec } from '../../helpers/agent.js';
import { startAgent } from '../../helpers/agent.js';
import { poolDmName, poolMappings, poolThinIds, readThinRows, removeAgentDevices } from '../../helpers/thin-state.js';
import { inVmGuest } from '../../helpers/vm.js';
import { native } from '../../../src/native/binding.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const POOL = 'thin0';
const METADATA = '/dev/vdb';
const DEVICE_DIR = '/dev/volagent-test';
const OLD_MARK = 'STALE-OLD-DATA!!';
/** Size of each new volume, and how many of its blocks get a 4 KiB piece. */
const NEW_BYTES = 8 * MiB;
const NEW_PIECES = 64;
/** 512 data blocks, 64 provisioned per try, and the deleted ones held at least 208: dm-thin's allocator, which moves on from its last block and wraps, reaches them within 5 tries. */
const MAX_TRIES = 8;

/** A volume's block export: its device path, removed by `done`. */
async function blockExport(t: Test, agent: AgentProcess, volume: string): Promise<{ node: string; done: () => Promise<void> }> {
  const made = await agent.request('POST', `/v1/volumes/${volume}/exports`, { protocol: 'block' });
  t.equal(made.status, 201, made.text);
  t.equal(made.body.uri, path.join(DEVICE_DIR, POOL, volume), 'a thin volume is exported as its own node');
  return {
    node: made.body.uri,
    done: async () => { t.equal((await agent.request('DELETE', `/v1/exports/${made.body.id}`)).status, 204); },
  };
}

async function writePieces(node: string, pieces: Array<{ offset: number; data: Buffer }>): Promise<void> {
  const handle = await open(node, 'r+');
  try {
    for (const { offset, data } of pieces) await handle.write(data, 0, data.length, offset);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function readWhole(node: string, length: number): Promise<Buffer> {
  const handle = await open(node, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, 0);
    if (bytesRead !== length) throw new Error(`short read of ${node}: ${bytesRead} of ${length}`);
    return buffer;
  } finally {
    await handle.close();
  }
}

const thinIdOf = (catalogPath: string, name: string): number => {
  const row = readThinRows(catalogPath, POOL).devices.find((d) => d.name === name);
  if (!row) throw new Error(`no thin device ${name} in the catalog`);
  return row.thin_id;
};

/** The 4 KiB pieces new volume `n` gets: one in each of its first NEW_PIECES blocks, at an offset of its own. */
function piecesOf(n: number): Array<{ offset: number; data: Buffer }> {
  const within = (n % 15 + 1) * 4 * KiB;
  return Array.from({ length: NEW_PIECES }, (_, k) => ({ offset: k * BLOCK + within, data: Buffer.alloc(4 * KiB, `NEW-${n}-BLOCK-${k}|`) }));
}

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/thin-no-stale-data.test.ts');
} else {
  const top = t;
  t.setTimeout(400_000);
  const dir = await mkdtemp('/tmp/thin-stale-');
  const catalogPath = path.join(dir, 'catalog.db');
  const thin: ThinPoolSpec = { name: POOL, backend: 'thin', dataDevice: '/dev/vda', metadataDevice: METADATA, deviceDir: DEVICE_DIR, blockSize: '64KiB', minFree: '5%' };
  t.teardown(async () => {
    await removeAgentDevices(POOL).catch(() => undefined);
  });
  const agent: AgentProcess = await startAgent(top, { dir, pools: [thin], startTimeoutMs: 120_000 });
  let made = 0;

  /**
   * Makes new volumes, each written in NEW_PIECES partial blocks, until one
   * of them is mapped onto a data block of `oldBlocks`; then reads each one
   * whole through a block export, and deletes them.
   */
  async function reuseAndRead(t: Test, oldBlocks: Set<number>): Promise<void> {
    const volumes: Array<{ id: string; n: number }> = [];
    let reused: Array<[number, number]> = [];
    for (let i = 0; i < MAX_TRIES && reused.length === 0; i++) {
      const n = ++made;
      const id = `new${n}`;
      const created = await agent.request('PUT', `/v1/volumes/${id}`, { tenant: 'acme', pool: POOL, sizeBytes: NEW_BYTES });
      t.equal(created.status, 201, created.text);
      volumes.push({ id, n });
      const exported = await blockExport(t, agent, id);
      await writePieces(exported.node, piecesOf(n));
      await exported.done();
      const mapping = (await poolMappings(POOL, METADATA)).get(thinIdOf(catalogPath, id))!;
      t.same([...mapping.keys()].sort((a, b) => a - b), Array.from({ length: NEW_PIECES }, (_, k) => k), `${id}: a block provisioned for each piece, no other`);
      t.equal((await agent.request('GET', `/v1/volumes/${id}`)).body.allocatedBytes, NEW_PIECES * BLOCK, `${id}: allocatedBytes says so`);
      reused = [...mapping].filter(([, data]) => oldBlocks.has(data));
    }
    t.ok(reused.length > 0, `within ${MAX_TRIES} tries a new volume holds data blocks of the deleted ones (${volumes.length} tries, ${reused.length} blocks reused)`);
    // Clean pages only: every read below comes from the devices, not from the page cache.
    await writeFile('/proc/sys/vm/drop_caches', '3');
    for (const { id, n } of volumes) {
      const expected = Buffer.alloc(NEW_BYTES);
      for (const { offset, data } of piecesOf(n)) data.copy(expected, offset);
      const exported = await blockExport(t, agent, id);
      const content = await readWhole(exported.node, NEW_BYTES);
      await exported.done();
      t.equal(content.indexOf(OLD_MARK), -1, `${id}: no byte of the old pattern`);
      t.ok(content.equals(expected), `${id}: its own pieces, zeros everywhere else (the reused blocks too)`);
    }
    for (const { id } of volumes) t.equal((await agent.request('DELETE', `/v1/volumes/${id}`)).status, 204);
    t.same(await poolThinIds(POOL, METADATA), [], 'the pool holds no thin device');
  }

  await t.test('a deleted volume\'s blocks, reused by new volumes, read zeros where unwritten', async (t) => {
    const [pool] = await native.dmTable(poolDmName(POOL));
    t.notMatch(pool!.params, /skip_block_zeroing/, 'the pool zeroes newly provisioned blocks');
    const size = 24 * MiB;
    t.equal((await agent.request('PUT', '/v1/volumes/old', { tenant: 'acme', pool: POOL, sizeBytes: size })).status, 201);
    const exported = await blockExport(t, agent, 'old');
    await writePieces(exported.node, [{ offset: 0, data: Buffer.alloc(size, OLD_MARK) }]);
    await exported.done();
    const oldId = thinIdOf(catalogPath, 'old');
    const oldBlocks = new Set((await poolMappings(POOL, METADATA)).get(oldId)!.values());
    t.equal(oldBlocks.size, size / BLOCK, 'the old volume holds 384 data blocks');
    const deleted = await agent.request('DELETE', '/v1/volumes/old');
    t.equal(deleted.status, 204, deleted.text);
    t.equal((await agent.request('GET', '/v1/volumes/old')).status, 404);
    t.notOk(readThinRows(catalogPath, POOL).devices.some((d) => d.thin_id === oldId), 'its thin id is not recorded');
    t.same(await poolThinIds(POOL, METADATA), [], 'nor in the pool: its blocks are free');
    await reuseAndRead(t, oldBlocks);
  });

  await t.test('the blocks of a deleted volume, its snapshot and its clone, reused, read zeros where unwritten', async (t) => {
    const size = 8 * MiB;
    t.equal((await agent.request('PUT', '/v1/volumes/orig', { tenant: 'acme', pool: POOL, sizeBytes: size })).status, 201);
    let exported = await blockExport(t, agent, 'orig');
    await writePieces(exported.node, [{ offset: 0, data: Buffer.alloc(size, OLD_MARK) }]);
    await exported.done();
    t.equal((await agent.request('PUT', '/v1/volumes/orig/snapshots/orig-s1')).status, 201);
    const clone = await agent.request('PUT', '/v1/volumes/orig-c1?wait=true', { tenant: 'acme', source: { volume: 'orig' } });
    t.equal(clone.status, 201, clone.text);
    t.match(clone.body, { pool: POOL, cloneMethod: 'thin_snapshot' });
    // Writes to shared blocks copy them: the origin's first half and 16 of the clone's blocks get blocks of their own.
    exported = await blockExport(t, agent, 'orig');
    await writePieces(exported.node, [{ offset: 0, data: Buffer.alloc(size / 2, OLD_MARK) }]);
    await exported.done();
    exported = await blockExport(t, agent, 'orig-c1');
    await writePieces(exported.node, Array.from({ length: 16 }, (_, k) => ({ offset: k * 4 * BLOCK, data: Buffer.alloc(4 * KiB, OLD_MARK) })));
    await exported.done();
    const mappings = await poolMappings(POOL, METADATA);
    t.same([...mappings.keys()].sort((a, b) => a - b), ['orig', 'orig@orig-s1', 'orig-c1'].map((name) => thinIdOf(catalogPath, name)).sort((a, b) => a - b), 'the pool holds the three thin devices');
    const oldBlocks = new Set([...mappings.values()].flatMap((m) => [...m.values()]));
    t.equal(oldBlocks.size, 128 + 64 + 16, 'they hold 208 data blocks: 128 shared, 64 copied for the origin, 16 for the clone');
    for (const [method, url] of [['DELETE', '/v1/volumes/orig-c1'], ['DELETE', '/v1/volumes/orig/snapshots/orig-s1'], ['DELETE', '/v1/volumes/orig']] as const) {
      const res = await agent.request(method, url);
      t.equal(res.status, 204, `${url}: ${res.text}`);
    }
    t.same(await poolThinIds(POOL, METADATA), [], 'the pool holds no thin device: their blocks are free');
    await reuseAndRead(t, oldBlocks);
    t.equal((await agent.request('GET', '/v1/check')).body.clean, true, 'check is clean');
    t.equal(await agent.stop(), 0);
  });
}
