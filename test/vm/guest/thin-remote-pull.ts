// Guest-only tap file, run by test/vm/thin-remote-pull.test.ts: volumes
// pulled between two volagentd on one kernel, one with a `thin` pool (vda
// data 64 MiB, vdb metadata 8 MiB), one with a `file` pool in the guest's
// /tmp, each serving NBD over TLS (one pre-shared key) on its own port of
// 127.0.0.1. A thin volume pulled into the file pool, a file volume pulled
// into the thin pool (bytes equal, only the data stored), and pulls into the
// thin pool broken by a kill of either agent while the destination is held
// at `pull.copying`: nothing of them is left, in the kernel, the pool's
// metadata, the ledger or the catalog, and the pool's used blocks are as
// before. Between hosts as network namespaces: test/privileged/remote-pull.test.ts.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess, AgentSpec, ThinPoolSpec } from '../../helpers/agent.js';
import { readCatalog, startAgent, waitOperation } from '../../helpers/agent.js';
import { exportOverTls, PULL_BLOCK, PULL_DATA_BYTES, PULL_RUNS, PULL_SIZE, PULL_ZERO_RUN, untilPullHeld, writeRuns } from '../../helpers/pull-fixtures.js';
import { activeThinIds, poolMappings, poolStatus, poolThinIds, readThinRows, removeAgentDevices } from '../../helpers/thin-state.js';
import { inVmGuest } from '../../helpers/vm.js';

const POOL = 'thin0';
const METADATA = '/dev/vdb';
const DEVICE_DIR = '/dev/volagent-test';
const SIZE = PULL_SIZE;
const BLOCK = PULL_BLOCK;
const RUNS = PULL_RUNS;
const DATA_BYTES = PULL_DATA_BYTES;
const ZERO_RUN = PULL_ZERO_RUN;
const DATA_BLOCKS = RUNS.flatMap(([offset, length]) => Array.from({ length: length / BLOCK }, (_, k) => offset / BLOCK + k));

async function sha(file: string): Promise<string> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(SIZE);
    const { bytesRead } = await handle.read(buffer, 0, SIZE, 0);
    if (bytesRead !== SIZE) throw new Error(`short read of ${file}: ${bytesRead} of ${SIZE}`);
    return createHash('sha256').update(buffer).digest('hex');
  } finally {
    await handle.close();
  }
}

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/thin-remote-pull.test.ts');
} else {
  const top = t;
  t.setTimeout(400_000);
  const dir = await mkdtemp('/tmp/thin-pull-');
  const keys = path.join(dir, 'fleet.psk');
  await writeFile(keys, `fleet:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const filePool = path.join(dir, 'files');
  const fileOf = (name: string): string => path.join(filePool, 'objects', `${name}.raw`);
  const nodeOf = (name: string): string => path.join(DEVICE_DIR, POOL, name);
  for (const sub of ['thin-agent', 'file-agent', 'files']) await mkdir(path.join(dir, sub));
  const thin: ThinPoolSpec = { name: POOL, backend: 'thin', dataDevice: '/dev/vda', metadataDevice: METADATA, deviceDir: DEVICE_DIR, blockSize: '64KiB', minFree: '5%' };
  const thinSpec: AgentSpec = { dir: path.join(dir, 'thin-agent'), pools: [thin], nbdListen: ['tcp:127.0.0.1:10821'], nbdTls: { pskFile: keys }, startTimeoutMs: 120_000 };
  const fileSpec: AgentSpec = { dir: path.join(dir, 'file-agent'), pools: [{ name: 'files', path: filePool }], nbdListen: ['tcp:127.0.0.1:10822'], nbdTls: { pskFile: keys }, startTimeoutMs: 120_000 };
  t.teardown(async () => {
    await removeAgentDevices(POOL).catch(() => undefined);
  });
  // Agent starts are the slow part under TCG: the thin agent holds its second pull (the first
  // broken one) from the start, and its restart after the kill holds its next.
  const held = path.join(dir, 'held');
  let thinAgent: AgentProcess = await startAgent(top, { ...thinSpec, env: { VOLAGENT_FAILPOINTS: `pull.copying@2=hold:${held}` } });
  const fileAgent: AgentProcess = await startAgent(top, fileSpec);

  /** What a failed pull into the thin pool must leave: the pool, its metadata and the catalog as `before`. */
  async function thinState(): Promise<{ active: number[]; inPool: number[]; devices: string[]; usedBlocks: number; pending: string | null | undefined }> {
    const status = await poolStatus(POOL);
    if (status.state !== 'working') throw new Error(`pool ${POOL} is ${status.state}`);
    const rows = readThinRows(thinAgent.catalogPath, POOL);
    return {
      active: await activeThinIds(POOL), inPool: await poolThinIds(POOL, METADATA), devices: rows.devices.map((d) => d.name),
      usedBlocks: status.data.used, pending: rows.pool?.pending,
    };
  }

  await t.test('a thin volume pulled into the file pool over TLS: bytes equal, the file holds the data only', async (t) => {
    t.equal((await thinAgent.request('PUT', '/v1/volumes/t1', { tenant: 'acme', pool: POOL, sizeBytes: SIZE })).status, 201);
    await writeRuns(nodeOf('t1'), RUNS);
    t.equal((await thinAgent.request('GET', '/v1/volumes/t1')).body.allocatedBytes, DATA_BYTES, 'the source provisions its runs only');
    const exported = await exportOverTls(thinAgent, 't1', 10821);
    const remote = { uri: exported.uri, sizeBytes: SIZE, volume: 't1' };
    const pulled = await fileAgent.request('PUT', '/v1/volumes/f1?wait=true', { tenant: 'acme', source: { remote } });
    t.equal(pulled.status, 201, pulled.text);
    t.match(pulled.body, { id: 'f1', pool: 'files', sizeBytes: SIZE, state: 'available', cloneMethod: 'nbd_pull', source: { remote } });
    t.equal(await sha(fileOf('f1')), await sha(nodeOf('t1')), 'bytes equal');
    t.equal((await stat(fileOf('f1'))).blocks * 512, DATA_BYTES, 'the unprovisioned blocks are holes in the file');
    t.equal((await thinAgent.request('DELETE', `/v1/exports/${exported.id}`)).status, 204);
  });

  const f2 = { uri: '', sizeBytes: SIZE, volume: 'f2' };

  await t.test('a file volume pulled into the thin pool: bytes equal, the data blocks provisioned and no other', async (t) => {
    t.equal((await fileAgent.request('PUT', '/v1/volumes/f2', { tenant: 'acme', sizeBytes: SIZE })).status, 201);
    await writeRuns(fileOf('f2'), RUNS, ZERO_RUN);
    t.equal((await stat(fileOf('f2'))).blocks * 512, DATA_BYTES + ZERO_RUN[1], 'the source file allocates its runs and its written zeros');
    f2.uri = (await exportOverTls(fileAgent, 'f2', 10822)).uri;
    const before = await thinState();
    const pulled = await thinAgent.request('PUT', '/v1/volumes/t2?wait=true', { tenant: 'acme', pool: POOL, source: { remote: f2 } });
    t.equal(pulled.status, 201, pulled.text);
    t.match(pulled.body, { id: 't2', pool: POOL, sizeBytes: SIZE, state: 'available', cloneMethod: 'nbd_pull', source: { remote: f2 }, allocatedBytes: DATA_BYTES });
    t.equal(await sha(nodeOf('t2')), await sha(fileOf('f2')), 'bytes equal');
    const thinId = readThinRows(thinAgent.catalogPath, POOL).devices.find((d) => d.name === 't2')!.thin_id;
    const mapped = [...(await poolMappings(POOL, METADATA)).get(thinId)!.keys()].sort((a, b) => a - b);
    t.same(mapped, DATA_BLOCKS, 'thin_dump: the runs\' 48 blocks are mapped, none of the holes or the zeros');
    t.equal((await thinState()).usedBlocks - before.usedBlocks, DATA_BLOCKS.length, 'the pool\'s used data blocks grew by those 48');
  });

  await t.test('the destination killed mid-pull: after its restart no thin device, no row, the ledger settled, the used blocks as before', async (t) => {
    const before = await thinState();
    const started = await thinAgent.request('PUT', '/v1/volumes/t3', { tenant: 'acme', pool: POOL, source: { remote: f2 } });
    t.equal(started.status, 202, started.text);
    const operation = started.body.operation.id as string;
    await untilPullHeld(held);
    t.ok(readThinRows(thinAgent.catalogPath, POOL).devices.some((d) => d.name === 't3'), 'mid-pull: the new thin device is recorded');
    t.match(readCatalog(thinAgent.catalogPath).volumes.find((v) => v.id === 't3'), { state: 'creating' }, 'mid-pull: its row is creating');
    await thinAgent.kill();
    await rm(held);
    thinAgent = await startAgent(top, { ...thinSpec, env: { VOLAGENT_FAILPOINTS: `pull.copying=hold:${held}` } });
    t.equal((await thinAgent.request('GET', '/v1/volumes/t3')).status, 404);
    t.equal(readCatalog(thinAgent.catalogPath).volumes.find((v) => v.id === 't3'), undefined, 'no catalog row');
    t.same(await thinState(), before, 'no thin device active, in the pool\'s metadata or in the ledger; nothing pending; the used blocks as before');
    t.match((await thinAgent.request('GET', `/v1/operations/${operation}`)).body, { state: 'failed', error: { code: 'INTERNAL', message: 'interrupted: the agent stopped before the operation ended' } }, 'its operation failed: interrupted');
  });

  await t.test('the source killed mid-pull: REMOTE_FAILED, no thin device, no row, the ledger settled, the used blocks as before', async (t) => {
    const before = await thinState();
    const started = await thinAgent.request('PUT', '/v1/volumes/t4', { tenant: 'acme', pool: POOL, source: { remote: f2 } });
    t.equal(started.status, 202, started.text);
    await untilPullHeld(held);
    t.ok(readThinRows(thinAgent.catalogPath, POOL).devices.some((d) => d.name === 't4'), 'mid-pull: the new thin device is recorded');
    await fileAgent.kill();
    await rm(held);
    const op = await waitOperation(thinAgent, started.body.operation.id);
    t.match(op, { state: 'failed', error: { code: 'REMOTE_FAILED' } }, JSON.stringify(op));
    t.equal((await thinAgent.request('GET', '/v1/volumes/t4')).status, 404);
    t.equal(readCatalog(thinAgent.catalogPath).volumes.find((v) => v.id === 't4'), undefined, 'no catalog row');
    t.same(await thinState(), before, 'no thin device active, in the pool\'s metadata or in the ledger; nothing pending; the used blocks as before');
    t.equal((await thinAgent.request('GET', '/v1/check')).body.clean, true, 'check is clean');
    t.equal(await thinAgent.stop(), 0);
  });
}
