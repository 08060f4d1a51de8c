// The agent's NBD client (src/remote/) against real servers: qemu-nbd over
// TCP and a unix socket, plain, with TLS-PSK and with X.509 client
// certificates (verify-peer); the agent's own NBD server in this process,
// plain over TCP and unix, and behind Node's TLS server in PSK mode. Each
// checks the bytes read against the file, block status against the file's
// SEEK_DATA/SEEK_HOLE, and a pull into a fresh sparse file (equal bytes, only
// the data read and allocated). Refusals (a wrong key or identity, a
// certificate of another CA, nbds against a plain server, plain against a
// TLS server) fail the connect with their own error; an abort mid-pull
// rejects at once and the server sees the connection end. Every server is
// started and stopped (by pid) by its test.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import t from 'tap';
import type { Test } from 'tap';

import type { ExportHandle } from '../../src/exports/nbd/connection.js';
import { FileTarget } from '../../src/exports/nbd/file-target.js';
import { AllocationState, TransmissionFlag } from '../../src/exports/nbd/protocol.js';
import { NbdServer } from '../../src/exports/nbd/server.js';
import type { Extent, ExportTarget, ZeroOptions } from '../../src/exports/nbd/target.js';
import { native } from '../../src/native/binding.js';
import { NbdClient } from '../../src/remote/nbd-client.js';
import type { NbdClientTls } from '../../src/remote/nbd-client.js';
import { parseNbdUri } from '../../src/remote/nbd-uri.js';
import { pullExtents, writeToFd } from '../../src/remote/pull.js';
import type { PullResult } from '../../src/remote/pull.js';
import { TEST_ROOT } from '../helpers/loop-fs.js';
import { startTlsFront } from '../helpers/nbd-tls-front.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { startQemuNbd } from '../helpers/qemu-nbd.js';
import { makeTestPki } from '../helpers/tls-pki.js';
import type { TestPki } from '../helpers/tls-pki.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;
/** The source's data: [offset, length]; the rest is holes. The last run ends at the end of the export. */
const DATA: Array<[number, number]> = [[8 * MiB, MiB], [40 * MiB, 3 * MiB], [63 * MiB + 512 * KiB, 512 * KiB]];
const DATA_BYTES = DATA.reduce((sum, [, length]) => sum + length, 0);
const PSK = { identity: 'peer-a', key: randomBytes(32) };

async function testDir(t: Test): Promise<string> {
  await mkdir(TEST_ROOT, { recursive: true });
  const dir = await mkdtemp(path.join(TEST_ROOT, 'nbd-client-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A 64 MiB sparse file with random data at DATA. */
async function sparseSource(dir: string): Promise<string> {
  const file = path.join(dir, 'source.raw');
  await writeFile(file, '');
  await truncate(file, SIZE);
  const handle = await open(file, 'r+');
  for (const [offset, length] of DATA) await handle.write(randomBytes(length), 0, length, offset);
  await handle.sync();
  await handle.close();
  return file;
}

/** The file's data extents as SEEK_DATA/SEEK_HOLE see them. */
async function fileData(file: string): Promise<Array<[number, number]>> {
  const handle = await open(file, 'r');
  try {
    const size = (await handle.stat()).size;
    const extents: Array<[number, number]> = [];
    for (let at = 0; at < size;) {
      const batch = await native.dataExtents(handle.fd, at, size, 1024, file);
      extents.push(...batch.extents);
      at = batch.next;
    }
    return extents;
  } finally {
    await handle.close();
  }
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

/** Block status of the whole export, adjacent extents of one state merged: [offset, length, flags]. */
async function statusMap(client: NbdClient): Promise<Array<[number, number, number]>> {
  const map: Array<[number, number, number]> = [];
  for (let at = 0; at < client.sizeBytes;) {
    for (const { length, flags } of await client.blockStatus(at, client.sizeBytes - at)) {
      const last = map.at(-1);
      if (last && last[2] === flags) last[1] += length;
      else map.push([at, length, flags]);
      at += length;
    }
  }
  return map;
}

const HOLE = AllocationState.HOLE | AllocationState.ZERO;
const EXPECTED_MAP: Array<[number, number, number]> = [
  [0, 8 * MiB, HOLE], [8 * MiB, MiB, 0], [9 * MiB, 31 * MiB, HOLE], [40 * MiB, 3 * MiB, 0], [43 * MiB, 20 * MiB + 512 * KiB, HOLE], [63 * MiB + 512 * KiB, 512 * KiB, 0],
];

/** Pulls the export into a fresh sparse file; returns the result, the file and the progress reports. */
async function pullInto(client: NbdClient, dir: string, name: string, options: { chunkBytes?: number; queueDepth?: number } = {}) {
  const dest = path.join(dir, name);
  await writeFile(dest, '');
  await truncate(dest, client.sizeBytes);
  const handle = await open(dest, 'r+');
  const progress: Array<[number, number]> = [];
  let result: PullResult;
  const sink = writeToFd(handle.fd, { path: dest });
  try {
    result = await pullExtents(client, sink, { ...options, onProgress: (copied, known) => progress.push([copied, known]) });
    await handle.sync();
  } finally {
    await handle.close();
  }
  return { dest, result, progress, written: sink.bytesWritten };
}

/** What every good connection must show: the export's bytes, its block status, and a pull that reads and allocates only the data. */
async function checkExport(t: Test, client: NbdClient, source: string, dir: string, expect: { tls: boolean; tlsProtocol?: string }): Promise<void> {
  t.match(client, { sizeBytes: SIZE, readOnly: true, allocation: true, structuredReplies: true, tls: expect.tls, tlsProtocol: expect.tlsProtocol });
  t.ok(client.transmissionFlags & TransmissionFlag.HAS_FLAGS, 'transmission flags as the server sent them');
  const content = await readFile(source);
  const pieces = await Promise.all(Array.from({ length: SIZE / (4 * MiB) }, (_, i) => client.read(i * 4 * MiB, 4 * MiB)));
  t.ok(Buffer.concat(pieces).equals(content), 'the whole export, 16 reads in flight, equals the file');
  t.ok((await client.read(8 * MiB - 4 * KiB, 12 * KiB)).equals(content.subarray(8 * MiB - 4 * KiB, 8 * MiB + 8 * KiB)), 'a read across a hole and data');

  const map = await statusMap(client);
  t.same(map, EXPECTED_MAP, 'block status: data where the file has it, holes (HOLE|ZERO) elsewhere');
  t.same(map.filter(([, , flags]) => flags === 0).map(([offset, length]) => [offset, length]), await fileData(source), "the data extents are the file's SEEK_DATA/SEEK_HOLE map");

  const { dest, result, progress, written } = await pullInto(client, dir, `pulled-${randomBytes(3).toString('hex')}.raw`);
  t.same(result, { sizeBytes: SIZE, dataBytes: DATA_BYTES, extents: DATA.length, zeroBytesSkipped: 0, writtenBytes: DATA_BYTES }, 'the pull read exactly the data');
  t.equal(written, DATA_BYTES, 'the sink wrote the data and nothing else');
  t.equal(await sha256(dest), await sha256(source), 'the pulled file equals the source');
  t.same(await fileData(dest), DATA, 'the pulled file is sparse: data only where the source has it');
  t.ok((await stat(dest)).blocks <= (await stat(source)).blocks, `allocated blocks: ${(await stat(dest)).blocks} pulled <= ${(await stat(source)).blocks} source`);
  t.same(progress.at(-1), [DATA_BYTES, DATA_BYTES], 'the last progress report: all the data done, all of it known');
  t.ok(progress.every(([copied], i) => i === 0 || copied > progress[i - 1]![0]), 'progress only grows');
}

async function connect(t: Test, uri: string, tls?: NbdClientTls, options: { signal?: AbortSignal; maxInFlight?: number } = {}): Promise<NbdClient> {
  const client = await NbdClient.connect(parseNbdUri(uri), { ...(tls ? { tls } : {}), ...options });
  t.teardown(() => client.close());
  return client;
}

/** An export target that counts the bytes it reads and can hold reads until released. */
class ObservedTarget implements ExportTarget {
  readBytes = 0;
  hold = false;
  readonly held: Array<{ offset: number; release(): void }> = [];

  constructor(private readonly inner: ExportTarget) {}

  get sizeBytes(): number { return this.inner.sizeBytes; }
  get readOnly(): boolean { return this.inner.readOnly; }
  get canTrim(): boolean { return this.inner.canTrim; }
  get canFastZero(): boolean { return this.inner.canFastZero; }
  get multiConn(): boolean { return this.inner.multiConn; }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (this.hold) await new Promise<void>((release) => this.held.push({ offset, release }));
    this.readBytes += length;
    return this.inner.read(offset, length, into);
  }

  releaseAll(): void {
    this.hold = false;
    for (const read of this.held.splice(0)) read.release();
  }

  write(data: Buffer, offset: number, fua: boolean): Promise<void> { return this.inner.write(data, offset, fua); }
  flush(): Promise<void> { return this.inner.flush(); }
  trim(offset: number, length: number, fua: boolean): Promise<void> { return this.inner.trim(offset, length, fua); }
  zero(offset: number, length: number, options: ZeroOptions & { fast: boolean }): Promise<void> { return this.inner.zero(offset, length, options); }
  blockStatus(offset: number, length: number): Promise<Extent[]> { return this.inner.blockStatus(offset, length); }
  close(): Promise<void> { return this.inner.close(); }
}

interface Served {
  server: NbdServer;
  socket: string;
  port: number;
  /** Connections attached to each export now. */
  attached: Map<string, number>;
}

/** The agent's NBD server in this process, on a unix socket and on 127.0.0.1 (a port the kernel picks). */
async function serveAgent(t: Test, dir: string, targets: Record<string, ExportTarget>): Promise<Served> {
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
  const server = new NbdServer({ lookup, allowList: false, exportNames: () => Object.keys(targets) });
  const socket = path.join(dir, 'agent-nbd.sock');
  const bound = await server.listen([{ kind: 'unix', path: socket }, { kind: 'tcp', host: '127.0.0.1', port: 0 }]);
  t.teardown(() => server.close());
  return { server, socket, port: bound[1]!.port!, attached };
}

async function until(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  for (const started = Date.now(); !(await condition());) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

if (!skipUnlessRoot(t)) {
  t.test('qemu-nbd over TCP and a unix socket, plain: bytes, block status, a sparse pull', async (t) => {
    const dir = await testDir(t);
    const source = await sparseSource(dir);
    const tcp = await startQemuNbd(t, { file: source, exportName: 'vol', dir });
    const unixSocket = path.join(dir, 'qemu.sock');
    await startQemuNbd(t, { file: source, exportName: 'vol', dir, socket: unixSocket });
    for (const uri of [`nbd://127.0.0.1:${tcp.port}/vol`, `nbd+unix:///vol?socket=${unixSocket}`]) {
      await t.test(uri.split(':')[0]!, async (t) => {
        const client = await connect(t, uri);
        await checkExport(t, client, source, dir, { tls: false });
        await client.close();
        t.equal(client.destroyed, true, 'close() leaves no socket');
        await client.close(); // idempotent
        await t.rejects(client.read(0, 4096), { name: 'NbdConnectionClosedError', code: 'ERR_NBD_CLOSED', message: /the client was closed/ }, 'no request after close');
      });
    }
    await t.rejects(NbdClient.connect(parseNbdUri(`nbd://127.0.0.1:${tcp.port}/nope`)), {
      name: 'NbdExportNotFoundError', code: 'ERR_NBD_EXPORT_NOT_FOUND', message: /NBD_OPT_GO with NBD_REP_ERR_UNKNOWN.*no export named "nope"/,
    }, 'an unknown export');
  });

  t.test('qemu-nbd with TLS-PSK: TLS 1.3, bytes and pull; a wrong key or identity is refused at connect; plain nbd is told TLS is required', async (t) => {
    const dir = await testDir(t);
    const source = await sparseSource(dir);
    const pskDir = path.join(dir, 'psk');
    await mkdir(pskDir);
    await writeFile(path.join(pskDir, 'keys.psk'), `${PSK.identity}:${PSK.key.toString('hex')}\n`, { mode: 0o600 });
    const tcp = await startQemuNbd(t, { file: source, exportName: 'vol', dir, tls: { kind: 'psk', dir: pskDir } });
    const unixSocket = path.join(dir, 'qemu-tls.sock');
    await startQemuNbd(t, { file: source, exportName: 'vol', dir, socket: unixSocket, tls: { kind: 'psk', dir: pskDir } });
    for (const uri of [`nbds://127.0.0.1:${tcp.port}/vol`, `nbds+unix:///vol?socket=${unixSocket}`]) {
      await t.test(uri.split(':')[0]!, async (t) => {
        const client = await connect(t, uri, { psk: PSK });
        await checkExport(t, client, source, dir, { tls: true, tlsProtocol: 'TLSv1.3' });
      });
    }
    const tls = `nbds://127.0.0.1:${tcp.port}/vol`;
    for (const [what, psk] of [['a wrong key', { identity: PSK.identity, key: randomBytes(32) }], ['an unknown identity', { identity: 'peer-b', key: PSK.key }]] as const) {
      await t.rejects(NbdClient.connect(parseNbdUri(tls), { tls: { psk } }), {
        name: 'NbdTlsError', code: 'ERR_NBD_TLS', message: /the TLS handshake failed: .*the server hung up: does it know this PSK identity and key/,
        cause: { code: 'ECONNRESET' },
      }, `${what}: refused in the TLS handshake, before any option or data`);
    }
    await t.rejects(NbdClient.connect(parseNbdUri(`nbd://127.0.0.1:${tcp.port}/vol`)), {
      name: 'NbdTlsRequiredError', code: 'ERR_NBD_TLS_REQUIRED', message: /NBD_OPT_STRUCTURED_REPLY with NBD_REP_ERR_TLS_REQD.*the server requires TLS/,
    }, 'a plain client is told the server requires TLS');
    await t.rejects(NbdClient.connect(parseNbdUri(tls)), { name: 'NbdTlsConfigError', code: 'ERR_NBD_TLS_CONFIG', message: /requires TLS and no TLS credentials were given/ });
    await t.rejects(NbdClient.connect(parseNbdUri(`nbd://127.0.0.1:${tcp.port}/vol`), { tls: { psk: PSK } }), {
      name: 'NbdTlsConfigError', code: 'ERR_NBD_TLS_CONFIG', message: /TLS credentials were given for .*which is plaintext/,
    });
  });

  t.test('nbds against a plain qemu-nbd fails at STARTTLS and never goes on in plaintext', async (t) => {
    const dir = await testDir(t);
    const source = await sparseSource(dir);
    const plain = await startQemuNbd(t, { file: source, exportName: 'vol', dir });
    await t.rejects(NbdClient.connect(parseNbdUri(`nbds://127.0.0.1:${plain.port}/vol`), { tls: { psk: PSK } }), {
      name: 'NbdTlsRefusedError', code: 'ERR_NBD_TLS_REFUSED',
      message: /NBD_OPT_STARTTLS with NBD_REP_ERR_POLICY: TLS not configured; the URI requires TLS, so the client does not go on in plaintext/,
    });
    t.equal(await plain.exited(), false, 'the server is still up (the client aborted the option haggling)');
  });

  t.test('qemu-nbd with X.509 and verify-peer: a client certificate of its CA is served; one of another CA, or none, is refused', async (t) => {
    const dir = await testDir(t);
    const source = await sparseSource(dir);
    const pki: TestPki = await makeTestPki(path.join(dir, 'pki'));
    const server = await startQemuNbd(t, { file: source, exportName: 'vol', dir, tls: { kind: 'x509', dir: pki.serverDir, verifyPeer: true } });
    const uri = `nbds://127.0.0.1:${server.port}/vol`;
    const client = await connect(t, uri, { ca: pki.caCert, ...pki.client });
    await checkExport(t, client, source, dir, { tls: true, tlsProtocol: 'TLSv1.3' });

    for (const [what, tls] of [['a client certificate of another CA', { ca: pki.caCert, ...pki.rogueClient }], ['no client certificate', { ca: pki.caCert }]] as const) {
      await t.rejects(NbdClient.connect(parseNbdUri(uri), { tls }), {
        name: 'NbdTlsError', code: 'ERR_NBD_TLS', message: /the server ended the TLS session during the handshake \(does it trust this client's certificate\?\)/,
      }, `${what}: refused, no export opened`);
    }
    await t.rejects(NbdClient.connect(parseNbdUri(uri), { tls: { ca: pki.otherCaCert, ...pki.client } }), {
      name: 'NbdTlsError', code: 'ERR_NBD_TLS', message: /the TLS handshake failed: unable to verify the first certificate/, cause: { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' },
    }, 'a server certificate of a CA the client does not trust');
    await t.rejects(NbdClient.connect(parseNbdUri(uri), { tls: { ca: pki.caCert, ...pki.client, servername: 'storage-9.example' } }), {
      name: 'NbdTlsError', code: 'ERR_NBD_TLS', cause: { code: 'ERR_TLS_CERT_ALTNAME_INVALID' },
    }, 'a server certificate for another name');
  });

  t.test("the agent's own NBD server over TCP and unix: bytes, block status, a pull that reads only the data", async (t) => {
    const dir = await testDir(t);
    const source = await sparseSource(dir);
    const target = new ObservedTarget(await FileTarget.open(source, true));
    t.teardown(() => target.close());
    const served = await serveAgent(t, dir, { vol: target });
    for (const uri of [`nbd://127.0.0.1:${served.port}/vol`, `nbd+unix:///vol?socket=${served.socket}`]) {
      await t.test(uri.split(':')[0]!, async (t) => {
        const client = await connect(t, uri);
        t.match(client, { description: 'volume behind vol', minBlockBytes: 1, preferredBlockBytes: 4096, maxPayloadBytes: 32 * MiB });
        await checkExport(t, client, source, dir, { tls: false });
        const before = target.readBytes;
        const { dest, result } = await pullInto(client, dir, 'small-chunks.raw', { chunkBytes: 256 * KiB, queueDepth: 3 });
        t.same(result, { sizeBytes: SIZE, dataBytes: DATA_BYTES, extents: 3, zeroBytesSkipped: 0, writtenBytes: DATA_BYTES }, 'in 256 KiB chunks, 3 in flight');
        t.equal(target.readBytes - before, DATA_BYTES, 'the server read exactly the data bytes for the pull');
        t.equal(await sha256(dest), await sha256(source));
        await client.close();
        await until('the server to see the connection end', () => served.server.connectionCount() === 0);
        t.equal(served.attached.get('vol'), 0, 'the export has no connection attached');
      });
    }
  });

  t.test("the agent's server behind Node's TLS server in PSK mode: TLS 1.3 by default, TLS 1.2 when the server allows no more", async (t) => {
    const dir = await testDir(t);
    const source = await sparseSource(dir);
    const target = await FileTarget.open(source, true);
    t.teardown(() => target.close());
    const served = await serveAgent(t, dir, { vol: target });
    for (const [protocol, serverTls] of [
      ['TLSv1.3', {}],
      ['TLSv1.2', { maxVersion: 'TLSv1.2' as const, ciphers: 'DHE-PSK-AES256-GCM-SHA384:PSK-AES256-GCM-SHA384' }],
    ] as const) {
      await t.test(protocol, async (t) => {
        const front = await startTlsFront(t, served.socket, PSK, serverTls);
        const client = await connect(t, `nbds://127.0.0.1:${front.port}/vol`, { psk: PSK });
        t.equal(front.sessions.length, 1, 'one TLS session, made by the front');
        await checkExport(t, client, source, dir, { tls: true, tlsProtocol: protocol });
        for (const [what, psk] of [['a wrong key', { ...PSK, key: randomBytes(32) }], ['an unknown identity', { ...PSK, identity: 'peer-b' }]] as const) {
          await t.rejects(NbdClient.connect(parseNbdUri(`nbds://127.0.0.1:${front.port}/vol`), { tls: { psk } }), {
            name: 'NbdTlsError', code: 'ERR_NBD_TLS', message: /the TLS handshake failed: .*alert/, cause: { code: /^ERR_SSL_/ },
          }, `${what}: refused by a TLS alert`);
        }
        t.equal(front.sessions.length, 1, 'no TLS session came of them');
      });
    }
  });

  t.test("replies out of order reach their requests; at most maxInFlight requests are at the server", async (t) => {
    const dir = await testDir(t);
    const source = await sparseSource(dir);
    const content = await readFile(source);
    const target = new ObservedTarget(await FileTarget.open(source, true));
    t.teardown(() => { target.releaseAll(); return target.close(); });
    const served = await serveAgent(t, dir, { vol: target });
    const client = await connect(t, `nbd+unix:///vol?socket=${served.socket}`, undefined, { maxInFlight: 3 });
    target.hold = true;
    const offsets = [8 * MiB, 8 * MiB + 256 * KiB, 40 * MiB, 41 * MiB, 42 * MiB];
    const reads = offsets.map((offset) => client.read(offset, 256 * KiB));
    await until('three reads at the server', () => target.held.length === 3);
    await sleep(100);
    t.same(target.held.map((read) => read.offset), offsets.slice(0, 3), 'the first three are at the server, the others wait in the client');
    target.held.splice(0).reverse().forEach((read) => read.release()); // the server answers the third first
    await until('the last two at the server', () => target.held.length === 2);
    target.releaseAll();
    const answers = await Promise.all(reads);
    answers.forEach((answer, i) => t.ok(answer.equals(content.subarray(offsets[i]!, offsets[i]! + 256 * KiB)), `read ${i} has its own bytes`));
  });

  t.test('an abort mid-pull rejects at once, closes the socket, and the server sees the connection end', async (t) => {
    const dir = await testDir(t);
    const source = await sparseSource(dir);
    const target = new ObservedTarget(await FileTarget.open(source, true));
    t.teardown(() => { target.releaseAll(); return target.close(); });
    const served = await serveAgent(t, dir, { vol: target });
    const controller = new AbortController();
    const client = await connect(t, `nbd://127.0.0.1:${served.port}/vol`, undefined, { signal: controller.signal });
    t.equal(served.attached.get('vol'), 1);
    target.hold = true;
    const writes: number[] = [];
    const pulling = pullExtents(client, { write: async (_data, offset) => { writes.push(offset); } }, { signal: controller.signal, chunkBytes: 256 * KiB });
    await until('reads held at the server', () => target.held.length >= 1);
    controller.abort();
    const aborted = Date.now();
    await t.rejects(pulling, { name: 'AbortError', code: 'ABORT_ERR' });
    t.ok(Date.now() - aborted < 500, `rejected ${Date.now() - aborted} ms after the abort, with the server still holding the reads`);
    t.same(writes, [], 'nothing was written');
    t.equal(client.destroyed, true, "the client's socket is destroyed");
    await t.rejects(client.read(0, 4096), { name: 'AbortError' }, 'the client takes no more requests');
    target.releaseAll(); // the server finishes what it took, finds the connection gone, and ends it
    await until('the server to see the connection end', () => served.server.connectionCount() === 0);
    t.equal(served.attached.get('vol'), 0, 'the export has no connection attached');
  });

  t.test('an abort mid-pull from qemu-nbd: its only client gone, qemu-nbd exits', async (t) => {
    const dir = await testDir(t);
    const source = await sparseSource(dir);
    const server = await startQemuNbd(t, { file: source, exportName: 'vol', dir, persistent: false });
    const controller = new AbortController();
    const client = await NbdClient.connect(parseNbdUri(`nbd://127.0.0.1:${server.port}/vol`), { signal: controller.signal });
    const writes: number[] = [];
    const sink = {
      write: async (_data: Buffer, offset: number): Promise<void> => {
        writes.push(offset);
        controller.abort(); // after the first chunk
      },
    };
    await t.rejects(pullExtents(client, sink, { signal: controller.signal, chunkBytes: 256 * KiB, queueDepth: 2 }), { name: 'AbortError', code: 'ABORT_ERR' });
    t.equal(writes.length, 1, 'one chunk was written, then the pull stopped');
    t.equal(client.destroyed, true);
    await until('qemu-nbd to exit', () => server.exited());
    t.pass('qemu-nbd saw its client go and exited');
  });
}
