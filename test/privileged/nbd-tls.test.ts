// NBD over TCP with TLS (exports/nbd/tls.ts), against real clients: libnbd's
// nbdinfo and nbdcopy, and qemu-img with qemu's tls-creds objects. The
// server runs in this process on 127.0.0.1 (TLS-PSK and X.509 with client
// certificates); a raw client checks what real clients never try (options
// before STARTTLS). Keys and certificates are made by the test (openssl).
// Every refused client is refused before any export is attached: no data.
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';

import type { ExportHandle } from '../../src/exports/nbd/connection.js';
import { FileTarget } from '../../src/exports/nbd/file-target.js';
import { Option, Reply } from '../../src/exports/nbd/protocol.js';
import { NbdServer } from '../../src/exports/nbd/server.js';
import type { ExportTarget } from '../../src/exports/nbd/target.js';
import { NbdTls } from '../../src/exports/nbd/tls.js';
import { outcomeOf, spawnAgent, startAgent, writeAgentConfig } from '../helpers/agent.js';
import { makeSparseFile, sha256 } from '../helpers/files.js';
import { goData, RawNbdClient } from '../helpers/nbd-client.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { outcome, run } from '../helpers/run.js';
import { tempDir } from '../helpers/temp-dir.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

interface Served {
  port: number;
  unixSocket: string;
  /** Connections that reached an export (GO or EXPORT_NAME succeeded). */
  attached: () => number;
}

/** One export `v` on 127.0.0.1 (TLS) and on a unix socket (plain); closed at teardown. */
async function serve(t: Test, dir: string, target: ExportTarget, tls: NbdTls): Promise<Served> {
  let attached = 0;
  const lookup = (name: string): ExportHandle | undefined => (name === 'v' ? {
    name, target, description: 'volume v', attach: () => { attached += 1; return () => undefined; },
  } : undefined);
  const server = new NbdServer({ lookup, allowList: true, exportNames: () => ['v'] });
  const unixSocket = path.join(dir, 'nbd.sock');
  const bound = await server.listen([{ kind: 'tcp', host: '127.0.0.1', port: 0 }, { kind: 'unix', path: unixSocket }], { tls });
  t.teardown(() => server.close());
  return { port: bound[0]!.port!, unixSocket, attached: () => attached };
}

/** A 64 MiB sparse file with data at 8 MiB (1 MiB) and 40 MiB (3 MiB). */
async function sparseVolume(dir: string): Promise<string> {
  const file = path.join(dir, 'v.raw');
  await makeSparseFile(file, { sizeBytes: SIZE, data: [[8 * MiB, MiB], [40 * MiB, 3 * MiB]] });
  return file;
}

async function pskFile(file: string, identity: string): Promise<string> {
  await writeFile(file, `${identity}:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  return file;
}

/** A CA, and a certificate it signs for `name` (SAN IP 127.0.0.1), in `dir` under qemu/libnbd's file names. */
async function certificates(dir: string, caName: string): Promise<{ ca: string; caKey: string; issue(role: 'server' | 'client', out: string): Promise<{ cert: string; key: string }> }> {
  await mkdir(dir, { recursive: true });
  const ca = path.join(dir, 'ca-cert.pem');
  const caKey = path.join(dir, 'ca-key.pem');
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', caKey, '-out', ca, '-days', '2', '-subj', `/CN=${caName}`]);
  return {
    ca, caKey,
    async issue(role, out) {
      await mkdir(out, { recursive: true });
      const key = path.join(out, `${role}-key.pem`);
      const cert = path.join(out, `${role}-cert.pem`);
      const csr = path.join(out, `${role}.csr`);
      const ext = path.join(out, `${role}.ext`);
      await writeFile(ext, `subjectAltName = IP:127.0.0.1\nextendedKeyUsage = ${role === 'server' ? 'serverAuth' : 'clientAuth'}\n`);
      await run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${role}.${caName}`]);
      await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext]);
      await chmod(key, 0o600);
      return { cert, key };
    },
  };
}

/** A sparse volume served read-only with TLS-PSK (identity `alice`): the server and the key file. */
async function pskServed(t: Test): Promise<{ dir: string; file: string; keys: string; served: Served }> {
  const dir = await tempDir(t, 'volagent-nbd-tls-');
  const file = await sparseVolume(dir);
  const keys = await pskFile(path.join(dir, 'keys.psk'), 'alice');
  const target = await FileTarget.open(file, true);
  t.teardown(() => target.close());
  return { dir, file, keys, served: await serve(t, dir, target, await NbdTls.load({ kind: 'psk', pskFile: keys })) };
}

function pskUri(served: Served, identity: string, keys: string): string {
  return `nbds://${identity}@127.0.0.1:${served.port}/v?tls-psk-file=${keys}`;
}

if (!skipUnlessRoot(t)) {
  t.test('TLS-PSK: nbdinfo, nbdcopy and qemu-img with the key read the export; its map is the data; without the key nothing', async (t) => {
    const { dir, file, keys, served } = await pskServed(t);

    const info = await outcome('nbdinfo', ['--json', pskUri(served, 'alice', keys)]);
    t.equal(info.code, 0, info.stderr);
    const parsed = JSON.parse(info.stdout) as { protocol: string; TLS: boolean; exports: Array<{ 'export-size': number; is_read_only: boolean }> };
    t.match(parsed, { TLS: true, exports: [{ 'export-size': SIZE, is_read_only: true }] }, 'nbdinfo: TLS on, the export\'s size');
    const map = await outcome('nbdinfo', ['--map', '--json', pskUri(served, 'alice', keys)]);
    t.equal(map.code, 0, map.stderr);
    t.same((JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>).filter((e) => e.type === 0).map((e) => [e.offset, e.length]),
      [[8 * MiB, MiB], [40 * MiB, 3 * MiB]], 'base:allocation over TLS: the data extents');

    const copy = path.join(dir, 'copy.raw');
    const nbdcopy = await outcome('nbdcopy', [pskUri(served, 'alice', keys), copy]);
    t.equal(nbdcopy.code, 0, nbdcopy.stderr);
    t.equal(await sha256(copy), await sha256(file), 'nbdcopy over TLS: the same bytes');

    // qemu reads `<dir>/keys.psk` for its tls-creds-psk object.
    const qemuDir = path.join(dir, 'qemu');
    await mkdir(qemuDir);
    await writeFile(path.join(qemuDir, 'keys.psk'), await readFile(keys), { mode: 0o600 });
    const converted = path.join(dir, 'qemu.raw');
    const qemu = await outcome('qemu-img', ['convert', '-O', 'raw', '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${qemuDir},username=alice`,
      '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${served.port},export=v,tls-creds=tls0`, converted]);
    t.equal(qemu.code, 0, qemu.stderr);
    t.equal(await sha256(converted), await sha256(file), 'qemu-img convert over TLS: the same bytes');
    // nbdinfo connects once per run; nbdcopy opens up to four connections (multi-conn); qemu-img one.
    const reached = served.attached();
    t.ok(reached >= 4, `the clients with the key reached the export (${reached} connections)`);

    const wrongKey = await pskFile(path.join(dir, 'wrong.psk'), 'alice');
    const stranger = await pskFile(path.join(dir, 'stranger.psk'), 'mallory');
    for (const [what, uri] of [
      ['the right identity with another key', pskUri(served, 'alice', wrongKey)],
      ['an identity the server does not know', pskUri(served, 'mallory', stranger)],
    ] as const) {
      const refused = await outcome('nbdinfo', [uri]);
      t.not(refused.code, 0, `${what}: refused`);
      t.match(refused.stderr, /gnutls_handshake/, `${what}: in the TLS handshake`);
    }
    const plain = await outcome('nbdinfo', [`nbd://127.0.0.1:${served.port}/v`]);
    t.not(plain.code, 0, 'a client without TLS is refused');
    t.match(plain.stdout + plain.stderr, /without TLS/, 'libnbd says it got in without TLS, and the server refused the export');
    const qemuPlain = await outcome('qemu-img', ['info', `nbd://127.0.0.1:${served.port}/v`]);
    t.not(qemuPlain.code, 0, 'qemu-img without TLS is refused');
    t.match(qemuPlain.stderr, /TLS/, `qemu says the server requires TLS: ${qemuPlain.stderr.trim()}`);
    t.equal(served.attached(), reached, 'no refused client reached the export');
  });

  t.test('before STARTTLS every option is refused with TLS_REQD, EXPORT_NAME ends the connection; a unix socket does not offer TLS', async (t) => {
    const { served } = await pskServed(t);

    const client = await RawNbdClient.connect({ host: '127.0.0.1', port: served.port });
    t.teardown(() => client.destroy());
    await client.greet();
    for (const [name, option, data] of [
      ['LIST', Option.LIST, Buffer.alloc(0)], ['INFO', Option.INFO, goData('v')], ['GO', Option.GO, goData('v')],
      ['STRUCTURED_REPLY', Option.STRUCTURED_REPLY, Buffer.alloc(0)],
    ] as const) {
      client.sendOption(option, data);
      const replies = await client.optionReplies();
      t.same(replies.map((r) => [r.option, r.type]), [[option, Reply.ERR_TLS_REQD]], `${name} before STARTTLS: ERR_TLS_REQD, nothing else`);
    }
    client.sendOption(Option.STARTTLS, Buffer.from('x'));
    t.same((await client.optionReplies()).map((r) => r.type), [Reply.ERR_INVALID], 'STARTTLS with data: ERR_INVALID');
    client.sendOption(Option.EXPORT_NAME, Buffer.from('v'));
    await t.rejects(client.optionReply(), { name: 'ConnectionClosedError' }, 'EXPORT_NAME before STARTTLS: the server closes (it has no error reply)');

    const unix = await RawNbdClient.connect(served.unixSocket);
    t.teardown(() => unix.destroy());
    await unix.greet();
    unix.sendOption(Option.STARTTLS);
    t.same((await unix.optionReplies()).map((r) => r.type), [Reply.ERR_POLICY], 'STARTTLS on the unix socket: ERR_POLICY');
    unix.sendOption(Option.ABORT);
    const nbdinfo = await outcome('nbdinfo', ['--json', `nbd+unix:///v?socket=${served.unixSocket}`]);
    t.equal(nbdinfo.code, 0, nbdinfo.stderr);
    t.match(JSON.parse(nbdinfo.stdout), { TLS: false, exports: [{ 'export-size': SIZE }] }, 'the unix socket serves in plain text, as before');
    t.equal(served.attached(), 1, 'only the unix client reached the export');
  });

  t.test('X.509: a client certificate the CA signed gets in; none, or one from another CA, is refused', async (t) => {
    const dir = await tempDir(t, 'volagent-nbd-tls-');
    const file = await sparseVolume(dir);
    const pki = await certificates(path.join(dir, 'pki'), 'volagent-test-ca');
    const server = await pki.issue('server', path.join(dir, 'server'));
    // libnbd reads ca-cert.pem, client-cert.pem and client-key.pem from one directory.
    const good = path.join(dir, 'good-client');
    await pki.issue('client', good);
    await writeFile(path.join(good, 'ca-cert.pem'), await readFile(pki.ca));
    const foreign = await certificates(path.join(dir, 'foreign-pki'), 'another-ca');
    const bad = path.join(dir, 'bad-client');
    await foreign.issue('client', bad);
    await writeFile(path.join(bad, 'ca-cert.pem'), await readFile(pki.ca)); // it trusts the server; the server does not trust it
    const anonymous = path.join(dir, 'anonymous-client');
    await mkdir(anonymous);
    await writeFile(path.join(anonymous, 'ca-cert.pem'), await readFile(pki.ca));

    const target = await FileTarget.open(file, true);
    t.teardown(() => target.close());
    const served = await serve(t, dir, target, await NbdTls.load({ kind: 'x509', certFile: server.cert, keyFile: server.key, caFile: pki.ca }));
    const uri = (certs: string): string => `nbds://127.0.0.1:${served.port}/v?tls-certificates=${certs}`;

    const copy = path.join(dir, 'copy.raw');
    const nbdcopy = await outcome('nbdcopy', [uri(good), copy]);
    t.equal(nbdcopy.code, 0, nbdcopy.stderr);
    t.equal(await sha256(copy), await sha256(file), 'nbdcopy with a certificate of the CA: the same bytes');
    const reached = served.attached();
    t.ok(reached >= 1, `nbdcopy reached the export (${reached} connections)`);
    for (const [what, certs] of [['a certificate from another CA', bad], ['no certificate', anonymous]] as const) {
      const refused = await outcome('nbdinfo', [uri(certs)]);
      t.not(refused.code, 0, `${what}: refused`);
      t.match(refused.stderr, /gnutls|TLS/, `${what}: in the TLS handshake: ${refused.stderr.trim()}`);
    }
    t.equal(served.attached(), reached, 'no refused client reached the export');
  });

  t.test('credentials are checked when loaded: a PSK file others can read, short keys, missing files', async (t) => {
    const dir = await tempDir(t, 'volagent-nbd-tls-');
    const open = path.join(dir, 'open.psk');
    await writeFile(open, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o644 });
    await chmod(open, 0o644);
    await t.rejects(NbdTls.load({ kind: 'psk', pskFile: open }), { message: `${open}: readable or writable by others (mode 644); make it 0600 or 0640` });
    const short = path.join(dir, 'short.psk');
    await writeFile(short, `alice:${randomBytes(8).toString('hex')}\n`, { mode: 0o600 });
    await t.rejects(NbdTls.load({ kind: 'psk', pskFile: short }), { message: `${short}:1: the key of "alice" is 8 bytes; at least 16 are required` });
    const missing = path.join(dir, 'missing.psk');
    await t.rejects(NbdTls.load({ kind: 'psk', pskFile: missing }), { message: new RegExp(`^${missing}: ENOENT`) });
    const two = path.join(dir, 'two.psk');
    await writeFile(two, `alice:${randomBytes(16).toString('hex')}\n\nbob:${randomBytes(32).toString('hex')}\n`, { mode: 0o640 });
    t.same((await NbdTls.load({ kind: 'psk', pskFile: two })).identities(), ['alice', 'bob'], 'every identity of the file');
  });

  t.test('volagentd: [nbd] tls makes its TCP export URIs nbds://, which nbdcopy reads with the key; TCP without tls, or a PSK file others can read, does not start', async (t) => {
    const dir = await tempDir(t, 'volagent-nbd-tls-');
    const poolPath = path.join(dir, 'pool');
    await mkdir(poolPath);
    const keys = await pskFile(path.join(dir, 'keys.psk'), 'peer-a');
    const agent = await startAgent(t, { dir, pools: [{ name: 'p', path: poolPath }], nbdListen: ['tcp:127.0.0.1:0'], nbdTls: { pskFile: keys } });
    t.equal((await agent.request('PUT', '/v1/volumes/v1', { tenant: 't1', sizeBytes: 16 * MiB })).status, 201);
    const data = randomBytes(MiB);
    const handle = await open(path.join(poolPath, 'objects', 'v1.raw'), 'r+');
    await handle.write(data, 0, data.length, 4 * MiB);
    await handle.close();
    const exported = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'nbd', readOnly: true });
    t.equal(exported.status, 201);
    const uris = (exported.body as { uris: string[] }).uris;
    t.match(uris[0], /^nbd\+unix:\/\/\/exp-/, 'the unix socket stays plain');
    t.match(uris[1], /^nbds:\/\/127\.0\.0\.1:\d+\/exp-[0-9a-f]+$/, 'the TCP URI says TLS');
    const copy = path.join(dir, 'copy.raw');
    const withKey = uris[1]!.replace('nbds://', 'nbds://peer-a@') + `?tls-psk-file=${keys}`;
    const nbdcopy = await outcome('nbdcopy', [withKey, copy]);
    t.equal(nbdcopy.code, 0, nbdcopy.stderr);
    const copied = await readFile(copy);
    t.equal(copied.length, 16 * MiB);
    t.ok(copied.subarray(4 * MiB, 5 * MiB).equals(data) && copied.subarray(0, 4 * MiB).every((b) => b === 0), 'the volume\'s bytes over TLS');
    const plain = await outcome('nbdinfo', [uris[1]!.replace('nbds://', 'nbd://')]);
    t.not(plain.code, 0, 'the same export without TLS: refused');

    const plainDir = await tempDir(t, 'volagent-nbd-tls-');
    await mkdir(path.join(plainDir, 'pool'));
    const plainConfig = await writeAgentConfig({ dir: plainDir, pools: [{ name: 'p', path: path.join(plainDir, 'pool') }], nbdListen: ['tcp:127.0.0.1:0'] });
    const refused = await outcomeOf(spawnAgent(['--config', plainConfig]));
    t.equal(refused.code, 2, 'TCP without [nbd] tls: a config error');
    t.match(refused.stderr, `${plainConfig}: nbd.listen[1]: a TCP address needs [nbd] tls`);
    const openKeys = await pskFile(path.join(plainDir, 'open.psk'), 'peer-a');
    await chmod(openKeys, 0o644);
    const openConfig = await writeAgentConfig({ dir: plainDir, pools: [{ name: 'p', path: path.join(plainDir, 'pool') }], nbdListen: ['tcp:127.0.0.1:0'], nbdTls: { pskFile: openKeys } });
    const unsafe = await outcomeOf(spawnAgent(['--config', openConfig]));
    t.equal(unsafe.code, 1, 'a PSK file others can read: start-up fails');
    t.match(unsafe.stderr, `nbd tls: ${openKeys}: readable or writable by others (mode 644)`);
    await t.rejects(stat(path.join(plainDir, 'control.sock')), { code: 'ENOENT' }, 'no control socket was made');
  });
}
