// A copy is the volume at one instant (issue 19, item 4). On an ext4 pool
// (no reflink: the clone is a copy_file_range copy, an operation), a writer
// stamps 4 KiB blocks through a writable NBD export, one write at a time,
// each block carrying the write's global sequence number n and its block
// number k, while the volume is cloned, snapshotted and registered as an
// image with mode "clone". Each copy must hold exactly a prefix of the write
// sequence: with n0 the highest stamp in it, every block is what the writes
// 1..n0 left there (the prefill, n = 0, where none wrote). The agent holds
// the export's writes for the time of the copy; without the hold the copy
// reads a volume that changes under it and tears.
//
// A writable block export (a loop device, whose writes the agent cannot
// hold) makes the three copy-based operations 409 VOLUME_IN_USE with nothing
// changed; a read-only one does not; on XFS (reflink, atomic on its own)
// neither holds nor refuses.
import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess } from '../helpers/agent.js';
import { poolEntries, readCatalog, startAgent, waitOperation } from '../helpers/agent.js';
import { sha256 } from '../helpers/files.js';
import { makeLoopFs, TEST_ROOT } from '../helpers/loop-fs.js';
import type { LoopFs } from '../helpers/loop-fs.js';
import { RawNbdClient } from '../helpers/nbd-client.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { seededRandom } from '../helpers/random.js';
import { Command, ReplyType } from '../../src/exports/nbd/protocol.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 4 * KiB;
const VOLUME_BYTES = 256 * MiB;
const BLOCKS = VOLUME_BYTES / BLOCK;
const STAMP_MAGIC = 0x56415351; // "VASQ"
const SEED = Number(process.env.VOLAGENT_TEST_SEED ?? 0x19404);

/** A block stamped with write `n` to block `k`: the 16-byte record [magic, k, n] repeated over the block. */
function stamp(into: Buffer, at: number, n: number, k: number): void {
  into.writeUInt32BE(STAMP_MAGIC, at);
  into.writeUInt32BE(k, at + 4);
  into.writeBigUInt64BE(BigInt(n), at + 8);
  for (let filled = 16; filled < BLOCK; filled *= 2) into.copy(into, at + filled, at, at + filled);
}

/**
 * One NBD client writing stamped blocks in a loop, each write sent once the
 * previous one was answered, so the writes have one order: `log[n - 1]` is
 * the block write n went to.
 */
class StampWriter {
  readonly log: number[] = [];
  private stopping = false;
  private running: Promise<void> | undefined;
  private readonly waiters: Array<{ count: number; resolve: () => void }> = [];

  constructor(private readonly client: RawNbdClient, private readonly random: () => number) {}

  start(): void {
    this.running = this.loop();
    this.running.catch(() => undefined);
  }

  get count(): number {
    return this.log.length;
  }

  /** Resolves once `count` writes have been answered (rejects when the writer failed). */
  async until(count: number): Promise<void> {
    if (this.log.length >= count) return;
    await Promise.race([new Promise<void>((resolve) => this.waiters.push({ count, resolve })), this.running!.then(() => { throw new Error('the writer stopped'); })]);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.running;
  }

  private async loop(): Promise<void> {
    const payload = Buffer.alloc(BLOCK);
    while (!this.stopping) {
      const n = this.log.length + 1;
      const k = Math.floor(this.random() * BLOCKS);
      stamp(payload, 0, n, k);
      const cookie = this.client.request(Command.WRITE, k * BLOCK, BLOCK, 0, payload);
      const reply = await this.client.chunk();
      if (reply.cookie !== cookie || reply.type !== ReplyType.NONE) throw new Error(`write ${n}: reply type ${reply.type} for cookie ${reply.cookie}`);
      this.log.push(k);
      for (const waiter of this.waiters.filter((w) => w.count <= this.log.length)) {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
  }
}

interface PrefixCheck {
  /** The highest write number in the copy. */
  n0: number;
  /** Blocks that are not what writes 1..n0 left there. */
  wrong: Array<{ block: number; found: string; expected: number }>;
}

/** Reads `file` and checks it against the writer's log: every block is what writes 1..n0 left, n0 being the highest stamp found. */
async function checkPrefix(file: string, log: number[]): Promise<PrefixCheck> {
  const found = new Array<number>(BLOCKS);
  const handle = await open(file, 'r');
  try {
    const chunk = Buffer.alloc(4 * MiB);
    const expected = Buffer.alloc(BLOCK);
    for (let offset = 0; offset < VOLUME_BYTES; offset += chunk.length) {
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, offset);
      if (bytesRead !== chunk.length) throw new Error(`${file}: short read at ${offset}`);
      for (let at = 0; at < chunk.length; at += BLOCK) {
        const k = (offset + at) / BLOCK;
        const n = Number(chunk.readBigUInt64BE(at + 8));
        stamp(expected, 0, n, k);
        if (chunk.readUInt32BE(at) === STAMP_MAGIC && expected.equals(chunk.subarray(at, at + BLOCK))) found[k] = n;
      }
    }
  } finally {
    await handle.close();
  }
  const n0 = found.reduce((max, n) => (n !== undefined && n > max ? n : max), 0);
  const last = new Array<number>(BLOCKS).fill(0);
  for (let n = 1; n <= n0; n++) last[log[n - 1]!] = n;
  const wrong: PrefixCheck['wrong'] = [];
  for (let k = 0; k < BLOCKS; k++) {
    if (found[k] !== last[k]) wrong.push({ block: k, found: found[k] === undefined ? 'not one whole stamp' : String(found[k]), expected: last[k]! });
  }
  return { n0, wrong };
}

if (!skipUnlessRoot(t)) {
  await mkdir(TEST_ROOT, { recursive: true });
  const filesystems: LoopFs[] = [];
  let agent: AgentProcess | undefined;
  t.teardown(async () => {
    await agent?.kill().catch(() => undefined);
    for (const fs of filesystems) await fs.cleanup();
  });
  const ext4 = await makeLoopFs('ext4', 1600 * MiB);
  filesystems.push(ext4);
  const xfs = await makeLoopFs('xfs', 320 * MiB);
  filesystems.push(xfs);
  const copyPool = path.join(ext4.mountPoint, 'pool');
  const reflinkPool = path.join(xfs.mountPoint, 'pool');
  const dir = path.join(ext4.mountPoint, 'agent');
  for (const made of [copyPool, reflinkPool, dir]) await mkdir(made);
  agent = await startAgent(t, { dir, pools: [{ name: 'copy', path: copyPool }, { name: 'fast', path: reflinkPool }] });
  const live = agent;
  const objectFile = (pool: string, name: string): string => path.join(pool, 'objects', `${name}.raw`);

  await t.test('a clone, a snapshot and an image registered by clone of a volume written through NBD during the copy each hold exactly a prefix of the writes', async (t) => {
    t.equal((await live.request('PUT', '/v1/volumes/v', { pool: 'copy', tenant: 't1', sizeBytes: VOLUME_BYTES })).status, 201);
    // Every block stamped n = 0, so the whole volume is data the copy reads.
    const file = await open(objectFile(copyPool, 'v'), 'r+');
    const prefill = Buffer.alloc(4 * MiB);
    for (let offset = 0; offset < VOLUME_BYTES; offset += prefill.length) {
      for (let at = 0; at < prefill.length; at += BLOCK) stamp(prefill, at, 0, (offset + at) / BLOCK);
      await file.write(prefill, 0, prefill.length, offset);
    }
    await file.close();
    const exported = await live.request('POST', '/v1/volumes/v/exports', { protocol: 'nbd', readOnly: false });
    t.equal(exported.status, 201, exported.text);
    const client = await RawNbdClient.connect(/socket=(.*)$/.exec(exported.body.uri)![1]!);
    t.teardown(() => client.destroy());
    t.equal((await client.open(exported.body.id)).at(-1)!.type, 1, 'GO answered ACK');
    const writer = new StampWriter(client, seededRandom(SEED));
    t.comment(`seed ${SEED}`);
    writer.start();
    await writer.until(2000);

    const copies: Array<{ what: string; request: () => Promise<{ status: number; body: any; text: string }>; file: (body: any) => string }> = [
      { what: 'clone', request: () => live.request('PUT', '/v1/volumes/c1', { tenant: 't1', source: { volume: 'v' } }), file: () => objectFile(copyPool, 'c1') },
      { what: 'snapshot', request: () => live.request('PUT', '/v1/volumes/v/snapshots/s1'), file: () => objectFile(copyPool, 'v@s1') },
      {
        what: 'image registered by clone', request: () => live.request('PUT', '/v1/images/img1', { volume: 'v', mode: 'clone', tenant: 't1' }),
        file: (body) => objectFile(copyPool, body.image.volumeId),
      },
    ];
    for (const copy of copies) {
      const before = writer.count;
      const reply = await copy.request();
      t.equal(reply.status, 202, `${copy.what}: a copy, run as an operation: ${reply.text}`);
      const operation = await waitOperation(live, reply.body.operation.id);
      t.same({ state: operation.state, error: operation.error }, { state: 'succeeded', error: undefined }, `${copy.what}: the operation succeeded`);
      const after = writer.count;
      await writer.until(after + 200);
      const { n0, wrong } = await checkPrefix(copy.file(reply.body), writer.log);
      t.comment(`${copy.what}: writes answered before the request ${before}, when the operation ended ${after}; the copy holds writes 1..${n0}`);
      t.same(wrong.slice(0, 5), [], `${copy.what}: every block is what writes 1..${n0} left (${wrong.length} of ${BLOCKS} blocks are not)`);
      t.ok(n0 >= before, `${copy.what}: every write answered before the request is in the copy`);
      t.ok(n0 < writer.count, `${copy.what}: the writer went on after the copy's instant`);
    }
    await writer.stop();
    client.disconnect();
  });

  /** The catalog's rows, the export rows and both pools' files: what a refused request must leave as it was. */
  const state = async (): Promise<unknown> => ({
    catalog: readCatalog(live.catalogPath), exports: (await live.request('GET', '/v1/exports')).body,
    copyPool: await poolEntries(copyPool), reflinkPool: await poolEntries(reflinkPool),
  });

  await t.test('a writable block export (a loop device) makes a copy-based clone, snapshot and register-by-clone 409 VOLUME_IN_USE, nothing changed; a read-only one does not', async (t) => {
    t.equal((await live.request('PUT', '/v1/volumes/w', { pool: 'copy', tenant: 't1', sizeBytes: 16 * MiB })).status, 201);
    const data = await open(objectFile(copyPool, 'w'), 'r+');
    await data.write(Buffer.alloc(MiB, 0x5a), 0, MiB, 3 * MiB);
    await data.close();
    const exported = await live.request('POST', '/v1/volumes/w/exports', { protocol: 'block', readOnly: false });
    t.equal(exported.status, 201, exported.text);
    t.match(exported.body.uri, /^\/dev\/loop\d+$/);
    const before = await state();
    const refused = [
      await live.request('PUT', '/v1/volumes/w-clone', { tenant: 't1', source: { volume: 'w' } }),
      await live.request('PUT', '/v1/volumes/w/snapshots/w-snap'),
      await live.request('PUT', '/v1/images/w-image', { volume: 'w', mode: 'clone', tenant: 't1' }),
    ];
    for (const reply of refused) {
      t.equal(reply.status, 409, reply.text);
      t.same(reply.body.error.code, 'VOLUME_IN_USE');
      t.same(reply.body.error.details, { volume: 'w', exports: [exported.body.id] });
    }
    t.same(await state(), before, 'no row, operation, image or file was made');
    t.equal((await live.request('DELETE', `/v1/exports/${exported.body.id}`)).status, 204);

    const readOnly = await live.request('POST', '/v1/volumes/w/exports', { protocol: 'block', readOnly: true });
    t.equal(readOnly.status, 201, readOnly.text);
    const made = [
      { reply: await live.request('PUT', '/v1/volumes/w-clone?wait=true', { tenant: 't1', source: { volume: 'w' } }), file: (): string => objectFile(copyPool, 'w-clone') },
      { reply: await live.request('PUT', '/v1/volumes/w/snapshots/w-snap?wait=true'), file: (): string => objectFile(copyPool, 'w@w-snap') },
      { reply: await live.request('PUT', '/v1/images/w-image?wait=true', { volume: 'w', mode: 'clone', tenant: 't1' }), file: (): string => objectFile(copyPool, made[2]!.reply.body.volumeId) },
    ];
    t.same(made.map((m) => m.reply.status), [201, 201, 201], made.map((m) => m.reply.text).join('\n'));
    t.same(made.map((m) => m.reply.body.cloneMethod ?? m.reply.body.mode), ['copy_file_range', 'copy_file_range', 'clone']);
    for (const m of made) t.equal(await sha256(m.file()), await sha256(objectFile(copyPool, 'w')), `${m.file()} is a copy of w`);
    t.equal((await live.request('DELETE', `/v1/exports/${readOnly.body.id}`)).status, 204);
  });

  await t.test('on a reflink pool a writable block export refuses nothing: a reflink is atomic on its own', async (t) => {
    t.equal((await live.request('PUT', '/v1/volumes/x', { pool: 'fast', tenant: 't1', sizeBytes: 16 * MiB })).status, 201);
    const exported = await live.request('POST', '/v1/volumes/x/exports', { protocol: 'block', readOnly: false });
    t.equal(exported.status, 201, exported.text);
    const made = [
      await live.request('PUT', '/v1/volumes/x-clone', { tenant: 't1', source: { volume: 'x' } }),
      await live.request('PUT', '/v1/volumes/x/snapshots/x-snap'),
      await live.request('PUT', '/v1/images/x-image', { volume: 'x', mode: 'clone', tenant: 't1' }),
    ];
    t.same(made.map((reply) => reply.status), [201, 201, 201], made.map((reply) => reply.text).join('\n'));
    t.same(made.map((reply) => reply.body.cloneMethod ?? reply.body.mode), ['reflink', 'reflink', 'clone']);
    t.equal((await live.request('DELETE', `/v1/exports/${exported.body.id}`)).status, 204);
  });
}
