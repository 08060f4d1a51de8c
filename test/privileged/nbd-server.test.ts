// The NBD server against real clients (libnbd's nbdinfo and nbdcopy, qemu-img,
// qemu-io) and a raw client for what real clients never send. The server runs
// in this process over file and block-device targets; the exports layer's
// wiring into the agent is tested with the agent.
import { createHash, randomBytes } from 'node:crypto';
import { open, readFile, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';
import type { Test } from 'tap';

import { BlockTarget } from '../../src/exports/nbd/block-target.js';
import type { ExportHandle } from '../../src/exports/nbd/connection.js';
import { FileTarget } from '../../src/exports/nbd/file-target.js';
import { AllocationState, Command, CommandFlag, Info, NbdErrno, Option, Reply, ReplyType, TransmissionFlag } from '../../src/exports/nbd/protocol.js';
import { NbdServer } from '../../src/exports/nbd/server.js';
import type { ExportTarget } from '../../src/exports/nbd/target.js';
import { goData, RawNbdClient } from '../helpers/nbd-client.js';
import { makeLoopDevice } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { outcome } from '../helpers/run.js';
import { tempDir } from '../helpers/temp-dir.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

interface Served {
  socket: string;
  uri(name: string): string;
  server: NbdServer;
  attached: Map<string, number>;
}

/** A server on a unix socket in `dir`, serving `targets` by name; closed at teardown. */
async function serve(t: Test, dir: string, targets: Record<string, ExportTarget>, options: { allowList?: boolean; handshakeTimeoutMs?: number } = {}): Promise<Served> {
  const attached = new Map<string, number>();
  const lookup = (name: string): ExportHandle | undefined => {
    const target = Object.hasOwn(targets, name) ? targets[name] : undefined;
    if (!target) return undefined;
    return {
      name, target, description: `volume behind ${name}`,
      attach: () => {
        attached.set(name, (attached.get(name) ?? 0) + 1);
        return () => attached.set(name, attached.get(name)! - 1);
      },
    };
  };
  const server = new NbdServer({ lookup, allowList: options.allowList ?? false, exportNames: () => Object.keys(targets), ...(options.handshakeTimeoutMs ? { handshakeTimeoutMs: options.handshakeTimeoutMs } : {}) });
  const socket = path.join(dir, 'nbd.sock');
  await server.listen([{ kind: 'unix', path: socket }]);
  t.teardown(() => server.close());
  return { socket, server, attached, uri: (name) => `nbd+unix:///${name}?socket=${socket}` };
}

/** A 64 MiB sparse file with data at 8 MiB (1 MiB) and 40 MiB (3 MiB). */
async function sparseVolume(dir: string, name: string): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, '');
  await truncate(file, SIZE);
  const handle = await open(file, 'r+');
  await handle.write(randomBytes(MiB), 0, MiB, 8 * MiB);
  await handle.write(randomBytes(3 * MiB), 0, 3 * MiB, 40 * MiB);
  await handle.close();
  return file;
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}


async function openTarget(t: Test, make: () => Promise<ExportTarget>): Promise<ExportTarget> {
  const target = await make();
  t.teardown(() => target.close());
  return target;
}

if (!skipUnlessRoot(t)) {
  t.test('nbdinfo: size, flags, block sizes, base:allocation; --map is the file\'s data extents', async (t) => {
    const dir = await tempDir(t, 'volagent-nbd-');
    const file = await sparseVolume(dir, 'v.raw');
    const served = await serve(t, dir, { 'exp-rw': await openTarget(t, () => FileTarget.open(file, false)) });
    const info = await outcome('nbdinfo', ['--json', served.uri('exp-rw')]);
    t.equal(info.code, 0, info.stderr);
    const exported = JSON.parse(info.stdout).exports[0];
    t.match(exported, {
      'export-name': 'exp-rw', 'export-size': SIZE, contexts: ['base:allocation'], is_read_only: false, can_flush: true, can_fua: true,
      can_trim: true, can_zero: true, can_fast_zero: true, can_multi_conn: true, can_df: true,
      block_size_minimum: 1, block_size_preferred: 4096, block_size_maximum: 32 * MiB, description: 'volume behind exp-rw',
    });
    const map = await outcome('nbdinfo', ['--map', '--json', served.uri('exp-rw')]);
    t.equal(map.code, 0, map.stderr);
    const extents = (JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>).map((e) => [e.offset, e.length, e.type]);
    t.same(extents, [[0, 8 * MiB, 3], [8 * MiB, MiB, 0], [9 * MiB, 31 * MiB, 3], [40 * MiB, 3 * MiB, 0], [43 * MiB, 21 * MiB, 3]], 'holes and data as SEEK_DATA/SEEK_HOLE see them');
  });

  t.test('nbdcopy both ways and qemu-img: equal by sha256; map matches the file', async (t) => {
    const dir = await tempDir(t, 'volagent-nbd-');
    const source = await sparseVolume(dir, 'source.raw');
    const dest = path.join(dir, 'dest.raw');
    await writeFile(dest, '');
    await truncate(dest, SIZE);
    const served = await serve(t, dir, {
      src: await openTarget(t, () => FileTarget.open(source, true)),
      dst: await openTarget(t, () => FileTarget.open(dest, false)),
    });
    const copied = path.join(dir, 'copied.raw');
    t.equal((await outcome('nbdcopy', [served.uri('src'), copied])).code, 0, 'nbdcopy export -> file');
    t.equal(await sha256(copied), await sha256(source), 'equal by sha256');
    t.equal((await outcome('nbdcopy', [source, served.uri('dst')])).code, 0, 'nbdcopy file -> read-write export');
    t.equal(await sha256(dest), await sha256(source), 'the volume holds the file');
    const compare = await outcome('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', served.uri('src'), source]);
    t.equal(compare.code, 0, compare.stdout + compare.stderr);
    const overNbd = JSON.parse((await outcome('qemu-img', ['map', '--output=json', '-f', 'raw', served.uri('src')])).stdout) as Array<{ start: number; length: number; data: boolean }>;
    const local = JSON.parse((await outcome('qemu-img', ['map', '--output=json', '-f', 'raw', source])).stdout) as Array<{ start: number; length: number; data: boolean }>;
    const dataOf = (map: typeof overNbd): number[][] => map.filter((e) => e.data).map((e) => [e.start, e.length]);
    t.same(dataOf(overNbd), [[8 * MiB, MiB], [40 * MiB, 3 * MiB]], 'qemu-img map over NBD: the data extents');
    t.same(dataOf(overNbd), dataOf(local), "the same as the file's own map");
  });

  t.test('qemu-io: write with FUA, write-zeroes, reads back; the bytes are on disk', async (t) => {
    const dir = await tempDir(t, 'volagent-nbd-');
    const file = await sparseVolume(dir, 'v.raw');
    const served = await serve(t, dir, { v: await openTarget(t, () => FileTarget.open(file, false)) });
    const io = await outcome('qemu-io', ['-f', 'raw', '-c', 'write -f -P 0x5a 0 65536', '-c', `write -z ${8 * MiB} 65536`, '-c', 'read -P 0x5a 0 65536',
      '-c', `read -P 0 ${8 * MiB} 65536`, served.uri('v')]);
    t.equal(io.code, 0, io.stderr);
    t.notMatch(io.stdout, /Pattern verification failed|failed/, io.stdout);
    const handle = await open(file, 'r');
    const head = Buffer.alloc(65536);
    await handle.read(head, 0, 65536, 0);
    const zeroed = Buffer.alloc(65536, 1);
    await handle.read(zeroed, 0, 65536, 8 * MiB);
    await handle.close();
    t.ok(head.equals(Buffer.alloc(65536, 0x5a)), 'the FUA write is in the file');
    t.ok(zeroed.equals(Buffer.alloc(65536)), 'the write-zeroes range reads zero in the file');
  });

  t.test('a read-only export refuses writes with EPERM and the file is unchanged', async (t) => {
    const dir = await tempDir(t, 'volagent-nbd-');
    const file = await sparseVolume(dir, 'v.raw');
    const before = await sha256(file);
    const served = await serve(t, dir, { ro: await openTarget(t, () => FileTarget.open(file, true)) });
    const info = JSON.parse((await outcome('nbdinfo', ['--json', served.uri('ro')])).stdout).exports[0];
    t.match(info, { is_read_only: true, can_trim: false, can_zero: false });
    const io = await outcome('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4096', served.uri('ro')]);
    t.not(io.code, 0, 'qemu-io cannot open it for writing');
    t.match(io.stderr, /Could not open image: Permission denied/, 'qemu refuses a read-write open of a read-only export');
    const client = await RawNbdClient.connect(served.socket);
    t.teardown(() => client.destroy());
    await client.open('ro');
    for (const [type, payload] of [[Command.WRITE, Buffer.alloc(512, 1)], [Command.TRIM, undefined], [Command.WRITE_ZEROES, undefined]] as const) {
      const cookie = client.request(type, 0, 512, 0, payload);
      const chunk = await client.chunk();
      t.match(chunk, { cookie, type: ReplyType.ERROR }, `command ${type} refused`);
      t.equal(chunk.payload.readUInt32BE(0), NbdErrno.EPERM, 'EPERM');
    }
    t.equal(await sha256(file), before, 'the file is unchanged');
  });

  t.test('bounds and bad requests get errors; the connection stays usable and no byte outside the export is sent', async (t) => {
    const dir = await tempDir(t, 'volagent-nbd-');
    const file = await sparseVolume(dir, 'v.raw');
    const served = await serve(t, dir, { v: await openTarget(t, () => FileTarget.open(file, false)) });
    const content = await readFile(file);
    const client = await RawNbdClient.connect(served.socket);
    t.teardown(() => client.destroy());
    const go = await client.open('v', { allocation: true });
    t.equal(go.at(-1)!.type, Reply.ACK);
    const exportInfo = go.find((r) => r.type === Reply.INFO && r.data.readUInt16BE(0) === Info.EXPORT)!;
    t.equal(exportInfo.data.readBigUInt64BE(2), BigInt(SIZE));
    t.ok(exportInfo.data.readUInt16BE(10) & TransmissionFlag.CAN_MULTI_CONN, 'CAN_MULTI_CONN');
    const expectError = async (what: string, errno: number, type: number, offset: bigint | number, length: number, flags = 0, payload?: Buffer): Promise<void> => {
      const cookie = client.request(type, offset, length, flags, payload);
      const chunk = await client.chunk();
      t.match(chunk, { cookie, type: ReplyType.ERROR, flags: 1 }, what);
      t.equal(chunk.payload.readUInt32BE(0), errno, `${what}: errno ${errno}`);
    };
    await expectError('a read past the end', NbdErrno.EINVAL, Command.READ, SIZE - 4, 8);
    await expectError('a read at 2^63', NbdErrno.EINVAL, Command.READ, 2n ** 63n, 512);
    await expectError('a write past the end', NbdErrno.ENOSPC, Command.WRITE, SIZE, 512, 0, Buffer.alloc(512, 7));
    await expectError('an unknown command', NbdErrno.EINVAL, 42, 0, 512);
    await expectError('an unknown flag', NbdErrno.EINVAL, Command.READ, 0, 512, 1 << 9);
    await expectError('FUA on a read', NbdErrno.EINVAL, Command.READ, 0, 512, CommandFlag.FUA);
    await expectError('a zero-length read', NbdErrno.EINVAL, Command.READ, 0, 0);
    await expectError('a read over 32 MiB', NbdErrno.EOVERFLOW, Command.READ, 0, 32 * MiB + 1);
    await expectError('a write of 33 MiB (refused, its payload discarded unbuffered)', NbdErrno.EINVAL, Command.WRITE, 0, 33 * MiB, 0, Buffer.alloc(33 * MiB, 9));
    t.equal(await sha256(file), createHash('sha256').update(content).digest('hex'), 'nothing was written');
    const cookie = client.request(Command.READ, 8 * MiB, 4096);
    const chunk = await client.chunk();
    t.match(chunk, { cookie, type: ReplyType.OFFSET_DATA, flags: 1 }, 'a good read after all that');
    t.equal(chunk.payload.readBigUInt64BE(0), BigInt(8 * MiB));
    t.ok(chunk.payload.subarray(8).equals(content.subarray(8 * MiB, 8 * MiB + 4096)), 'the bytes of the export at that offset');
    const statusCookie = client.request(Command.BLOCK_STATUS, 0, 16 * MiB, CommandFlag.REQ_ONE);
    const status = await client.chunk();
    t.match(status, { cookie: statusCookie, type: ReplyType.BLOCK_STATUS, flags: 1 });
    t.same([status.payload.readUInt32BE(0), status.payload.length, status.payload.readUInt32BE(4), status.payload.readUInt32BE(8)],
      [1, 12, 8 * MiB, AllocationState.HOLE | AllocationState.ZERO], 'REQ_ONE: one extent, the leading hole');
    client.disconnect();
  });

  t.test('handshake limits: option data over 4096 bytes, LIST off, unknown names, a silent client is dropped', async (t) => {
    const dir = await tempDir(t, 'volagent-nbd-');
    const file = await sparseVolume(dir, 'v.raw');
    const served = await serve(t, dir, { 'exp-secret-1': await openTarget(t, () => FileTarget.open(file, true)) }, { handshakeTimeoutMs: 500 });
    const client = await RawNbdClient.connect(served.socket);
    t.teardown(() => client.destroy());
    await client.greet();
    client.sendOption(Option.INFO, Buffer.alloc(5000));
    t.match(await client.optionReply(), { option: Option.INFO, type: Reply.ERR_TOO_BIG });
    client.sendOption(Option.LIST);
    t.match(await client.optionReply(), { type: Reply.ERR_POLICY }, 'LIST is refused: export names are not to be guessed');
    for (const name of ['exp-secret-', 'EXP-SECRET-1', 'exp-secret-1 ', 'exp-secret-1\0', '../exp-secret-1', '']) {
      client.sendOption(Option.GO, goData(name));
      t.equal((await client.optionReply()).type, Reply.ERR_UNKNOWN, `no export for ${JSON.stringify(name)}`);
    }
    client.sendOption(Option.STARTTLS);
    t.equal((await client.optionReply()).type, Reply.ERR_POLICY, 'STARTTLS on a unix socket: not offered there (policy)');
    client.sendOption(Option.INFO, goData('exp-secret-1', [Info.NAME]));
    const replies = await client.optionReplies();
    t.equal(replies.at(-1)!.type, Reply.ACK, 'the connection is still usable');
    t.ok(replies.some((r) => r.type === Reply.INFO && r.data.readUInt16BE(0) === Info.NAME && r.data.subarray(2).toString() === 'exp-secret-1'));
    const started = Date.now();
    await new Promise<void>((resolve) => client.socket.once('close', () => resolve()));
    t.ok(Date.now() - started < 2000, 'the server dropped a client that never finished the handshake');

    const listing = await serve(t, await tempDir(t, 'volagent-nbd-'), { a: await openTarget(t, () => FileTarget.open(file, true)) }, { allowList: true });
    const list = await outcome('nbdinfo', ['--list', '--json', listing.uri('')]);
    t.equal(list.code, 0, list.stderr);
    t.same(JSON.parse(list.stdout).exports.map((e: { 'export-name': string }) => e['export-name']), ['a'], 'with allowList, LIST names the exports');
  });

  t.test('a block device (loop) as target: nbdcopy round trip, TRIM and WRITE_ZEROES reach the device', async (t) => {
    const loop = await makeLoopDevice(SIZE, 'nbd');
    t.teardown(() => loop.detach());
    const dir = await tempDir(t, 'volagent-nbd-');
    const source = await sparseVolume(dir, 'source.raw');
    const served = await serve(t, dir, { blk: await openTarget(t, () => BlockTarget.open(loop.device, false)) });
    const info = JSON.parse((await outcome('nbdinfo', ['--json', served.uri('blk')])).stdout).exports[0];
    t.match(info, { 'export-size': SIZE, can_trim: true, can_zero: true, can_fast_zero: false });
    t.equal((await outcome('nbdcopy', [source, served.uri('blk')])).code, 0);
    const back = path.join(dir, 'back.raw');
    t.equal((await outcome('nbdcopy', [served.uri('blk'), back])).code, 0);
    t.equal(await sha256(back), await sha256(source), 'round trip through the device');
    const io = await outcome('qemu-io', ['-f', 'raw', '-c', `write -z ${8 * MiB} ${MiB}`, '-c', `read -P 0 ${8 * MiB} ${MiB}`, served.uri('blk')]);
    t.equal(io.code, 0, io.stderr);
    t.notMatch(io.stdout, /failed/);
    const handle = await open(loop.device, 'r');
    const zeroed = Buffer.alloc(MiB, 1);
    await handle.read(zeroed, 0, MiB, 8 * MiB);
    await handle.close();
    t.ok(zeroed.equals(Buffer.alloc(MiB)), 'the device reads zeros there');
  });
}
