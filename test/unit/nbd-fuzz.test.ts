// 10 000 random and mutated handshakes and requests against the NBD server,
// seeded and reproducible (VOLAGENT_FUZZ_SEED replays a run): the server
// never crashes, every byte it sends for a read is the export's own byte at
// that offset, and afterwards a well-behaved client is still served.
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { open, writeFile } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import { FileTarget } from '../../src/exports/nbd/file-target.js';
import {
  Command, HandshakeFlag, IHAVEOPT, Option, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, ReplyType,
} from '../../src/exports/nbd/protocol.js';
import { NbdServer } from '../../src/exports/nbd/server.js';
import { RawNbdClient, goData, metaContextData } from '../helpers/nbd-client.js';
import { seededRandom } from '../helpers/random.js';
import { tempDir } from '../helpers/temp-dir.js';

const ITERATIONS = 10_000;
const CONCURRENCY = 16;
const SIZE = 1024 * 1024;
/** After the last byte received, how long silence ends an exchange. */
const IDLE_MS = 40;
const SEED = Number(process.env.VOLAGENT_FUZZ_SEED ?? 0x5eed);


interface Findings {
  connections: number;
  readsChecked: number;
  bytesChecked: number;
  outside: string[];
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

function option(code: number, data: Buffer, declared = data.length): Buffer {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(IHAVEOPT, 0);
  header.writeUInt32BE(code >>> 0, 8);
  header.writeUInt32BE(declared >>> 0, 12);
  return Buffer.concat([header, data]);
}

function request(type: number, flags: number, cookie: bigint, offset: bigint, length: number, magic = REQUEST_MAGIC): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(magic >>> 0, 0);
  header.writeUInt16BE(flags & 0xffff, 4);
  header.writeUInt16BE(type & 0xffff, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeBigUInt64BE(offset, 16);
  header.writeUInt32BE(length >>> 0, 24);
  return header;
}

/** Sends `bytes` and collects what the server sends back until it closes or `ms` pass. */
function exchange(socketPath: string, bytes: Buffer, ms: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const received: Buffer[] = [];
    const socket: Socket = connect(socketPath);
    const finish = (): void => {
      clearTimeout(timer);
      clearTimeout(idle);
      socket.destroy();
      resolve(Buffer.concat(received));
    };
    const timer = setTimeout(finish, ms);
    let idle: NodeJS.Timeout | undefined;
    socket.on('data', (d) => {
      received.push(d);
      clearTimeout(idle);
      idle = setTimeout(finish, IDLE_MS); // the server answers at once; silence means it is waiting for more
    });
    socket.on('error', finish);
    socket.on('close', finish);
    socket.on('connect', () => socket.write(bytes, () => undefined));
  });
}

/** Replies after the handshake: every read's data checked against `content`. */
function checkReplies(stream: Buffer, reads: Map<bigint, { offset: bigint; length: number }>, content: Buffer, findings: Findings, label: string): void {
  let at = 0;
  while (at + 4 <= stream.length) {
    const magic = stream.readUInt32BE(at);
    if (magic === STRUCTURED_REPLY_MAGIC) {
      if (at + 20 > stream.length) return;
      const type = stream.readUInt16BE(at + 6);
      const length = stream.readUInt32BE(at + 16);
      const payload = stream.subarray(at + 20, at + 20 + length);
      if (payload.length < length) return;
      if (type === ReplyType.OFFSET_DATA) {
        const offset = payload.readBigUInt64BE(0);
        const data = payload.subarray(8);
        const end = offset + BigInt(data.length);
        if (end > BigInt(content.length)) findings.outside.push(`${label}: data chunk at ${offset} runs to ${end}, past ${content.length}`);
        else if (!data.equals(content.subarray(Number(offset), Number(end)))) findings.outside.push(`${label}: data at ${offset} differs from the export`);
        findings.readsChecked += 1;
        findings.bytesChecked += data.length;
      }
      at += 20 + length;
    } else if (magic === SIMPLE_REPLY_MAGIC) {
      if (at + 16 > stream.length) return;
      const error = stream.readUInt32BE(at + 4);
      const cookie = stream.readBigUInt64BE(at + 8);
      at += 16;
      const read = reads.get(cookie);
      if (read && error === 0) {
        const data = stream.subarray(at, at + read.length);
        if (data.length < read.length) return;
        const end = read.offset + BigInt(read.length);
        if (end > BigInt(content.length)) findings.outside.push(`${label}: a read past the end was answered with data`);
        else if (!data.equals(content.subarray(Number(read.offset), Number(end)))) findings.outside.push(`${label}: simple read at ${read.offset} differs`);
        findings.readsChecked += 1;
        findings.bytesChecked += data.length;
        at += read.length;
      }
    } else {
      findings.outside.push(`${label}: bytes that are no reply (magic 0x${magic.toString(16)})`);
      return;
    }
  }
}

t.test(`${ITERATIONS} random and mutated handshakes and requests (seed ${SEED}): no crash, no byte outside the export`, async (t) => {
  t.comment(`fuzz seed ${SEED}; replay with VOLAGENT_FUZZ_SEED=${SEED}`);
  const dir = await tempDir(t, 'volagent-nbd-fuzz-');
  const content = randomBytes(SIZE);
  const roFile = path.join(dir, 'ro.raw');
  const rwFile = path.join(dir, 'rw.raw');
  await writeFile(roFile, content);
  await writeFile(rwFile, Buffer.alloc(SIZE));
  const ro = await FileTarget.open(roFile, true);
  const rw = await FileTarget.open(rwFile, false);
  t.teardown(async () => { await ro.close(); await rw.close(); });
  const targets: Record<string, FileTarget> = { ro, rw };
  const server = new NbdServer({
    lookup: (name) => (Object.hasOwn(targets, name) ? { name, target: targets[name]!, attach: () => () => undefined } : undefined),
    allowList: false, exportNames: () => Object.keys(targets), handshakeTimeoutMs: 300,
  });
  const socketPath = path.join(dir, 'nbd.sock');
  await server.listen([{ kind: 'unix', path: socketPath }]);
  t.teardown(() => server.close());

  const random = seededRandom(SEED);
  const int = (n: number): number => Math.floor(random() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;
  const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256)));
  const findings: Findings = { connections: 0, readsChecked: 0, bytesChecked: 0, outside: [] };
  const greeting = u32(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES);
  const offsets = (): bigint => pick([0n, BigInt(int(SIZE)), BigInt(SIZE - 1), BigInt(SIZE), BigInt(SIZE + int(4096)), 2n ** 63n - 1n, 2n ** 64n - 1n, BigInt(int(2 ** 31))]);
  const lengths = (): number => pick([0, 1, int(4096), int(65536), SIZE, SIZE + 1, 2 ** 32 - 1, 32 * 1024 * 1024 + 1]);

  const oneCase = async (i: number): Promise<void> => {
    const label = `case ${i}`;
    const kind = int(5);
    let payload: Buffer;
    const reads = new Map<bigint, { offset: bigint; length: number }>();
    let exportName = '';
    if (kind === 0) {
      payload = bytes(int(200)); // noise instead of client flags
    } else if (kind === 1) {
      // client flags, then mutated options: random codes, short data, wrong declared lengths
      const options: Buffer[] = [];
      for (let k = int(6); k > 0; k--) {
        const data = pick([Buffer.alloc(0), bytes(int(64)), goData(pick(['ro', 'rw', '', 'r', 'ro\0', 'x'.repeat(300)]), [int(5)]), metaContextData(pick(['ro', 'zz']), [pick(['base:allocation', 'base:', 'qemu:dirty-bitmap:x', ''])])]);
        const declared = pick([data.length, data.length + int(8), Math.max(0, data.length - int(8)), 5000]);
        options.push(option(pick([0, Option.LIST, Option.STARTTLS, Option.INFO, Option.STRUCTURED_REPLY, Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT, Option.EXTENDED_HEADERS, 99, 2 ** 31]), data, declared));
      }
      payload = Buffer.concat([pick([greeting, u32(int(2 ** 32)), u32(0)]), ...options]);
      const mutated = Buffer.from(payload);
      for (let k = int(3); k > 0 && mutated.length > 0; k--) mutated[int(mutated.length)] = int(256);
      payload = int(2) === 0 ? payload : mutated;
    } else {
      // a proper handshake, then random requests
      const name = pick(['ro', 'rw']);
      exportName = name;
      const structured = int(3) > 0;
      const parts: Buffer[] = [greeting];
      if (structured) parts.push(option(Option.STRUCTURED_REPLY, Buffer.alloc(0)), option(Option.SET_META_CONTEXT, metaContextData(name, ['base:allocation'])));
      parts.push(option(Option.GO, goData(name)));
      for (let k = 1 + int(12); k > 0; k--) {
        const type = pick([Command.READ, Command.READ, Command.READ, Command.WRITE, Command.FLUSH, Command.TRIM, Command.WRITE_ZEROES, Command.BLOCK_STATUS, Command.CACHE, 9, 200, int(65536)]);
        const cookie = BigInt(k) | (BigInt(int(2 ** 31)) << 16n);
        const valid = int(5) < 3; // most requests in range, so reads are answered with data that can be checked
        const flags = valid ? pick([0, 0, 0, 4]) : pick([0, 1, 2, 4, 8, 16, int(65536)]);
        let length = valid ? 1 + int(65536) : lengths();
        const offset = valid ? BigInt(int(SIZE - length + 1)) : offsets();
        if (type === Command.WRITE && length > 65536) length = int(65536); // a payload is sent with every write
        const magic = int(50) === 0 ? int(2 ** 32) : REQUEST_MAGIC;
        parts.push(request(type, flags, cookie, offset, length, magic));
        if (type === Command.WRITE) parts.push(bytes(Math.min(length, 512)), Buffer.alloc(Math.max(0, length - 512), i & 0xff));
        if (type === Command.READ) reads.set(cookie, { offset, length });
        if (magic !== REQUEST_MAGIC) break;
      }
      if (int(4) > 0) parts.push(request(Command.DISC, 0, 0n, 0n, 0));
      payload = Buffer.concat(parts);
      if (kind === 4) payload = payload.subarray(0, int(payload.length)); // truncated mid-message
    }
    const answer = await exchange(socketPath, payload, 400);
    findings.connections += 1;
    // The read-only export's content is known: every data reply must be it (the writable one changes under the fuzz).
    if (exportName === 'ro') {
      const start = findTransmission(answer);
      if (start >= 0) checkReplies(answer.subarray(start), reads, content, findings, label);
    }
  };

  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < ITERATIONS) await oneCase(next++);
  }));
  t.equal(findings.connections, ITERATIONS, 'every case ran');
  t.same(findings.outside, [], 'no answer carried a byte outside the export or other than its own');
  t.ok(findings.readsChecked > 1000, `${findings.readsChecked} reads answered with data were checked (${findings.bytesChecked} bytes)`);
  t.comment(`fuzz: ${findings.connections} connections, ${findings.readsChecked} data replies checked, ${findings.bytesChecked} bytes`);

  const client = await RawNbdClient.connect(socketPath);
  t.teardown(() => client.destroy());
  await client.open('ro');
  const cookie = client.request(Command.READ, 4096, 4096);
  const chunk = await client.chunk();
  t.match(chunk, { cookie, type: ReplyType.OFFSET_DATA });
  t.ok(chunk.payload.subarray(8).equals(content.subarray(4096, 8192)), 'afterwards a normal client is served');
  const handle = await open(roFile, 'r');
  t.ok((await handle.readFile()).equals(content), 'the read-only export is unchanged');
  await handle.close();
});

/** Offset of the first transmission reply (after the 18-byte greeting and every option reply), or -1. */
function findTransmission(answer: Buffer): number {
  let at = 18;
  while (at + 20 <= answer.length && answer.readBigUInt64BE(at) === 0x3e889045565a9n) at += 20 + answer.readUInt32BE(at + 16);
  return at <= answer.length ? at : -1;
}
