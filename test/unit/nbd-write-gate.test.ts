// The write gate of an export (src/exports/nbd/write-gate.ts) through the real
// NBD server and a file target: while it is held, write-type commands and
// their replies wait (on every connection, one that connects during the hold
// too) and nothing reaches the file, while reads and flushes are answered;
// the release performs them. A hold waits for the writes in flight, within a
// bound. A client that goes away while its write is held leaves nothing
// waiting and its write is not performed; one that sends DISC has its held
// write performed before the connection ends.
import { open, writeFile } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import { FileTarget } from '../../src/exports/nbd/file-target.js';
import { Command, ReplyType } from '../../src/exports/nbd/protocol.js';
import { NbdServer } from '../../src/exports/nbd/server.js';
import { WriteDrainTimeoutError, WriteGate } from '../../src/exports/nbd/write-gate.js';
import { RawNbdClient } from '../helpers/nbd-client.js';
import { tempDir } from '../helpers/temp-dir.js';

const BLOCK = 4096;
const SIZE = 1024 * 1024;
/** How long a held reply is watched for not coming. */
const QUIET_MS = 200;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what: string, condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

const dir = await tempDir(t);
const file = path.join(dir, 'volume.raw');
await writeFile(file, Buffer.alloc(SIZE));
const target = await FileTarget.open(file, false);
t.teardown(() => target.close());
const gate = new WriteGate();
const server = new NbdServer({
  lookup: (name) => (name === 'vol' ? { name, target, writeGate: gate, attach: () => () => undefined } : undefined),
  allowList: false, exportNames: () => ['vol'],
});
const socketPath = path.join(dir, 'nbd.sock');
await server.listen([{ kind: 'unix', path: socketPath }]);
t.teardown(() => server.close());

async function client(): Promise<RawNbdClient> {
  const made = await RawNbdClient.connect(socketPath);
  t.teardown(() => made.destroy());
  const replies = await made.open('vol');
  if (replies.at(-1)!.type !== 1) throw new Error('GO was not acknowledged');
  return made;
}

async function fileBytes(offset: number): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const bytes = Buffer.alloc(BLOCK);
    await handle.read(bytes, 0, BLOCK, offset);
    return bytes;
  } finally {
    await handle.close();
  }
}

t.test('held writes wait with their replies on every connection while reads and flushes are answered; the release performs them', async (t) => {
  const a = await client();
  const release = gate.hold();
  const w1 = a.request(Command.WRITE, 0, BLOCK, 0, Buffer.alloc(BLOCK, 0x11));
  const w2 = a.request(Command.WRITE, BLOCK, BLOCK, 0, Buffer.alloc(BLOCK, 0x22));
  const read = a.request(Command.READ, 0, BLOCK);
  const readReply = await a.chunk();
  t.same({ cookie: readReply.cookie, type: readReply.type }, { cookie: read, type: ReplyType.OFFSET_DATA }, 'the read is answered first');
  t.ok(readReply.payload.subarray(8).equals(Buffer.alloc(BLOCK)), 'and reads the volume without the held writes');
  const flush = a.request(Command.FLUSH, 0, 0);
  const flushReply = await a.chunk();
  t.same({ cookie: flushReply.cookie, type: flushReply.type }, { cookie: flush, type: ReplyType.NONE }, 'a flush is answered');
  const b = await client();
  const w3 = b.request(Command.WRITE, 2 * BLOCK, BLOCK, 0, Buffer.alloc(BLOCK, 0x33));
  await until('three writes at the gate', () => gate.waitingCount === 3);
  const nextA = a.chunk();
  const nextB = b.chunk();
  t.equal(await Promise.race([nextA.then(() => 'reply'), nextB.then(() => 'reply'), sleep(QUIET_MS).then(() => 'none')]), 'none', `no write is answered within ${QUIET_MS} ms`);
  t.same([await fileBytes(0), await fileBytes(BLOCK), await fileBytes(2 * BLOCK)], [Buffer.alloc(BLOCK), Buffer.alloc(BLOCK), Buffer.alloc(BLOCK)], 'nothing reached the file');
  t.equal(gate.inFlightCount, 0);
  release();
  const answered = [await nextA, await a.chunk(), await nextB];
  t.same(answered.map((r) => r.type), [ReplyType.NONE, ReplyType.NONE, ReplyType.NONE]);
  t.same(new Set(answered.map((r) => r.cookie)), new Set([w1, w2, w3]), 'each held write is answered once performed');
  t.same([await fileBytes(0), await fileBytes(BLOCK), await fileBytes(2 * BLOCK)], [Buffer.alloc(BLOCK, 0x11), Buffer.alloc(BLOCK, 0x22), Buffer.alloc(BLOCK, 0x33)]);
  t.equal(gate.held, false);
});

t.test('a hold waits for the writes in flight, and gives up after its bound', async (t) => {
  const leave = await gate.enter();
  const release = gate.hold();
  await t.rejects(gate.drained(50), new WriteDrainTimeoutError(1, 50), 'a write that does not end within the bound: WriteDrainTimeoutError');
  let drained = false;
  const waiting = gate.drained(5000).then(() => { drained = true; });
  await sleep(20);
  t.equal(drained, false, 'not drained while the write is in flight');
  leave();
  await waiting;
  t.equal(gate.inFlightCount, 0);
  release();
});

t.test('a client that goes away while its write is held leaves nothing waiting, and the write is not performed', async (t) => {
  const c = await client();
  const before = server.connectionCount();
  const release = gate.hold();
  c.request(Command.WRITE, 3 * BLOCK, BLOCK, 0, Buffer.alloc(BLOCK, 0x44));
  await until('the write at the gate', () => gate.waitingCount === 1);
  c.destroy();
  await until('the connection to end while the gate is held', () => gate.waitingCount === 0 && server.connectionCount() === before - 1);
  release();
  await sleep(50);
  t.ok((await fileBytes(3 * BLOCK)).equals(Buffer.alloc(BLOCK)), 'the abandoned write never reached the file');
  t.equal(gate.inFlightCount, 0);
});

t.test('after DISC a held write is performed, then the connection ends', async (t) => {
  const d = await client();
  const before = server.connectionCount();
  const release = gate.hold();
  d.request(Command.WRITE, 4 * BLOCK, BLOCK, 0, Buffer.alloc(BLOCK, 0x55));
  await until('the write at the gate', () => gate.waitingCount === 1);
  d.disconnect();
  await sleep(QUIET_MS);
  t.equal(server.connectionCount(), before, 'the connection waits for its held write');
  release();
  await until('the connection to end', () => server.connectionCount() === before - 1);
  t.ok((await fileBytes(4 * BLOCK)).equals(Buffer.alloc(BLOCK, 0x55)), 'the write was performed');
});
