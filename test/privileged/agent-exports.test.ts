// Exports through a real volagentd (XFS pool): NBD exports read and written by
// nbdinfo, nbdcopy and qemu-img at the URI the API answers; read-only rules;
// an exported volume is neither deleted nor resized; block exports on loop
// devices; restart (and kill -9) keeps every export with its id and URI;
// bad input changes nothing.
import type { AddressInfo } from 'node:net';
import { createServer } from 'node:net';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess } from '../helpers/agent.js';
import { startAgent, VOLAGENT } from '../helpers/agent.js';
import { sha256 } from '../helpers/files.js';
import { makeLoopFs, TEST_ROOT } from '../helpers/loop-fs.js';
import { RawNbdClient } from '../helpers/nbd-client.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { outcome } from '../helpers/run.js';
import BetterSqlite3 from 'better-sqlite3';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;


function exportRows(catalogPath: string): Array<{ id: string; volume_id: string; protocol: string; state: string; device: string | null }> {
  const db = new BetterSqlite3(catalogPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT id, volume_id, protocol, state, device FROM exports ORDER BY id').all() as never;
  } finally {
    db.close();
  }
}

/** A TCP port nothing listens on now. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

async function loopBacking(device: string): Promise<string | undefined> {
  return (await readFile(`/sys/block/${path.basename(device)}/loop/backing_file`, 'utf8').catch(() => undefined))?.trim();
}

if (!skipUnlessRoot(t)) {
  const xfs = await makeLoopFs('xfs', GiB);
  t.teardown(() => xfs.cleanup());
  const poolPath = path.join(xfs.mountPoint, 'pool');
  await mkdir(poolPath);
  await mkdir(TEST_ROOT, { recursive: true });
  const dir = path.join(xfs.mountPoint, 'agent');
  await mkdir(dir);
  // A fixed TCP port (one the kernel just handed out), so a restart keeps the nbd:// URI too.
  const tcpPort = await freePort();
  const spec = { dir, pools: [{ name: 'fast', path: poolPath }], nbdListen: [`tcp:127.0.0.1:${tcpPort}`], nbdPlaintextTcp: true };
  /** Agents restarted in a subtest serve the ones after it. */
  const top = t;
  // A failed start ends the file before tap's teardowns run: the filesystem is removed here then.
  let agent: AgentProcess = await startAgent(top, spec).catch(async (error: unknown) => {
    await xfs.cleanup();
    throw error;
  });
  const objectFile = (name: string): string => path.join(poolPath, 'objects', `${name}.raw`);
  // A block export's loop device outlives a killed agent: detach whatever a failing run left.
  t.teardown(async () => {
    for (const row of exportRows(agent.catalogPath)) if (row.device?.startsWith('/dev/loop')) await outcome('losetup', ['-d', row.device]);
  });

  let nbdUri = '';
  let nbdId = '';

  await t.test('an NBD export: the URI works with nbdinfo, nbdcopy and qemu-img; it is listed with its connections', async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/v1', { tenant: 't1', sizeBytes: 64 * MiB })).status, 201);
    const handle = await open(objectFile('v1'), 'r+');
    for (let i = 0; i < 4; i++) await handle.write(Buffer.alloc(MiB, 0x41 + i), 0, MiB, i * 16 * MiB);
    await handle.close();
    const reply = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'nbd' });
    t.equal(reply.status, 201, reply.text);
    t.match(reply.body, { id: /^exp-[0-9a-f]{32}$/, volume: 'v1', protocol: 'nbd', readOnly: false, uri: /^nbd\+unix:\/\/\/exp-[0-9a-f]{32}\?socket=.*nbd\.sock$/, connections: 0 });
    nbdUri = reply.body.uri;
    nbdId = reply.body.id;
    const info = JSON.parse((await outcome('nbdinfo', ['--json', nbdUri])).stdout).exports[0];
    t.match(info, { 'export-size': 64 * MiB, is_read_only: false, can_multi_conn: true, contexts: ['base:allocation'] });
    const copied = path.join(dir, 'copied.raw');
    t.equal((await outcome('nbdcopy', [nbdUri, copied])).code, 0);
    t.equal(await sha256(copied), await sha256(objectFile('v1')), 'nbdcopy reads the volume');
    const compare = await outcome('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', nbdUri, objectFile('v1')]);
    t.equal(compare.code, 0, compare.stdout + compare.stderr);
    const io = await outcome('qemu-io', ['-f', 'raw', '-c', `write -f -P 0x77 ${MiB} 65536`, nbdUri]);
    t.equal(io.code, 0, io.stderr);
    const bytes = Buffer.alloc(65536);
    const file = await open(objectFile('v1'), 'r');
    await file.read(bytes, 0, 65536, MiB);
    await file.close();
    t.ok(bytes.equals(Buffer.alloc(65536, 0x77)), 'a write through the export is in the volume');
    const listed = await agent.request('GET', '/v1/exports');
    t.match(listed.body, [{ id: nbdId, volume: 'v1', protocol: 'nbd', uri: nbdUri, connections: 0 }]);
    const tcpUri = (reply.body.uris as string[])[1]!;
    t.equal(tcpUri, `nbd://127.0.0.1:${tcpPort}/${nbdId}`, 'a URI per [nbd].listen address');
    const overTcp = path.join(dir, 'over-tcp.raw');
    t.equal((await outcome('nbdcopy', [tcpUri, overTcp])).code, 0, 'nbdcopy over TCP');
    t.equal(await sha256(overTcp), await sha256(objectFile('v1')));
  });

  await t.test('connections are counted, and unexport ends them', async (t) => {
    const other = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'nbd', readOnly: true });
    const socketPath = /socket=(.*)$/.exec(other.body.uri)![1]!;
    const client = await RawNbdClient.connect(socketPath);
    t.teardown(() => client.destroy());
    t.equal((await client.open(other.body.id)).at(-1)!.type, 1, 'GO answered ACK');
    t.equal((await agent.request('GET', `/v1/exports/${other.body.id}`)).body.connections, 1, 'one connection');
    const closed = new Promise<void>((resolve) => client.socket.once('close', () => resolve()));
    t.equal((await agent.request('DELETE', `/v1/exports/${other.body.id}`)).status, 204);
    await closed;
    t.pass('the connection was closed by the unexport');
    t.equal((await agent.request('GET', `/v1/exports/${other.body.id}`)).status, 404);
  });

  await t.test('an NBD export with directIo reads past the page cache (O_DIRECT) and sees the writes made through it', async (t) => {
    const reply = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'nbd', readOnly: false, directIo: true });
    t.equal(reply.status, 201, reply.text);
    t.match(reply.body, { protocol: 'nbd', directIo: true });
    const uri = reply.body.uri as string;
    const file = objectFile('v1');
    const residentBytes = async (): Promise<number> => Number((await outcome('fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES', file])).stdout.trim());
    t.equal((await outcome('dd', [`if=${file}`, 'iflag=nocache', 'count=0'])).code, 0, 'the volume is dropped from the page cache');
    t.equal(await residentBytes(), 0);
    const copied = path.join(dir, 'direct.raw');
    t.equal((await outcome('nbdcopy', [uri, copied])).code, 0);
    t.equal(await residentBytes(), 0, 'reading the whole export through it cached none of the volume');
    t.equal(await sha256(copied), await sha256(file), 'and read every byte as the file holds it');
    // A buffered write through the export, then aligned (direct) and unaligned (buffered) reads of it.
    const wrote = await outcome('qemu-io', ['-f', 'raw', '-c', `write -P 0x6b ${3 * MiB} 65536`, uri]);
    t.equal(wrote.code, 0, wrote.stderr);
    const aligned = await outcome('qemu-io', ['-f', 'raw', '-c', `read -P 0x6b ${3 * MiB} 65536`, uri]);
    t.equal(aligned.code, 0, aligned.stdout + aligned.stderr);
    t.notMatch(aligned.stdout, /Pattern verification failed/, 'an aligned read sees the write');
    const unaligned = await outcome('qemu-io', ['-f', 'raw', '-c', `read -P 0x6b ${3 * MiB + 512} 1000`, uri]);
    t.notMatch(unaligned.stdout, /Pattern verification failed/, 'so does an unaligned one');
    t.equal((await agent.request('DELETE', `/v1/exports/${reply.body.id}`)).status, 204);
  });

  await t.test('an exported volume is neither deleted nor resized: 409 VOLUME_BUSY, nothing changes', async (t) => {
    const before = await sha256(objectFile('v1'));
    const del = await agent.request('DELETE', '/v1/volumes/v1');
    t.equal(del.status, 409);
    t.match(del.body.error, { code: 'VOLUME_BUSY', details: { volume: 'v1', exports: [nbdId] } });
    const resize = await agent.request('POST', '/v1/volumes/v1/resize', { sizeBytes: 128 * MiB });
    t.equal(resize.status, 409);
    t.match((await agent.request('GET', '/v1/volumes/v1')).body, { state: 'available', sizeBytes: 64 * MiB });
    t.equal(await sha256(objectFile('v1')), before, 'the file is untouched');
  });

  await t.test('read-only rules: a read-only export refuses writes; an Image-Volume is only exported read-only', async (t) => {
    const ro = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'nbd', readOnly: true });
    t.equal(ro.status, 201);
    const before = await sha256(objectFile('v1'));
    const write = await outcome('nbdcopy', [objectFile('v1'), ro.body.uri]);
    t.not(write.code, 0, 'nbdcopy into a read-only export fails');
    t.equal(await sha256(objectFile('v1')), before);
    t.equal((await agent.request('DELETE', `/v1/exports/${ro.body.id}`)).status, 204);
    const image = await agent.request('PUT', '/v1/images/img1', { volume: 'v1', mode: 'clone', tenant: 't1' });
    t.equal(image.status, 201, image.text);
    const rowsBefore = exportRows(agent.catalogPath);
    const rw = await agent.request('POST', `/v1/volumes/${image.body.volumeId}/exports`, { protocol: 'nbd', readOnly: false });
    t.equal(rw.status, 409);
    t.equal(rw.body.error.code, 'VOLUME_READ_ONLY');
    t.same(exportRows(agent.catalogPath), rowsBefore, 'no export row');
    const roImage = await agent.request('POST', `/v1/volumes/${image.body.volumeId}/exports`, { protocol: 'nbd', readOnly: true });
    t.equal(roImage.status, 201);
    const busy = await agent.request('DELETE', '/v1/images/img1');
    t.equal(busy.status, 409, 'an image whose Image-Volume is exported is not deleted');
    t.match(busy.body.error, { code: 'VOLUME_BUSY', details: { image: 'img1', exports: [roImage.body.id] } });
    t.match((await agent.request('GET', '/v1/images/img1')).body, { state: 'available' }, 'the image is unchanged');
    t.equal((await agent.request('DELETE', `/v1/exports/${roImage.body.id}`)).status, 204);
  });

  await t.test('a block export: a loop device with the same bytes, detached on unexport; unexport is idempotent', async (t) => {
    const reply = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'block', readOnly: true });
    t.equal(reply.status, 201, reply.text);
    t.match(reply.body, { protocol: 'block', readOnly: true, uri: /^\/dev\/loop\d+$/ });
    const device = reply.body.uri as string;
    t.equal(await loopBacking(device), objectFile('v1'), 'the loop device is bound to the volume');
    t.equal(await sha256(device), await sha256(objectFile('v1')), 'it reads the same bytes');
    t.equal((await agent.request('DELETE', `/v1/exports/${reply.body.id}`)).status, 204);
    t.equal(await loopBacking(device), undefined, 'detached');
    t.equal((await agent.request('DELETE', `/v1/exports/${reply.body.id}`)).status, 204, 'again: 204');
  });

  await t.test('restart, and kill -9: every export comes back with its id and URI, and works', async (t) => {
    const block = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'block' });
    t.equal(block.status, 201);
    const before = (await agent.request('GET', '/v1/exports')).body;
    t.equal(await agent.stop(), 0);
    agent = await startAgent(top, spec);
    t.same((await agent.request('GET', '/v1/exports')).body, before, 'after SIGTERM: the same exports');
    await agent.kill();
    agent = await startAgent(top, spec);
    t.same((await agent.request('GET', '/v1/exports')).body, before, 'after kill -9: the same exports');
    t.equal(JSON.parse((await outcome('nbdinfo', ['--json', nbdUri])).stdout).exports[0]['export-size'], 64 * MiB, 'the NBD URI works');
    t.equal(await loopBacking(block.body.uri), objectFile('v1'), 'the same loop device, still bound (not a second one)');
    t.equal((await agent.request('DELETE', `/v1/exports/${block.body.id}`)).status, 204);
    t.equal(await loopBacking(block.body.uri), undefined);
  });

  await t.test('direct I/O is recorded: after a reboot (the loop device gone) the export is attached again with it, on the same device', async (t) => {
    const reply = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'block', readOnly: false, directIo: true });
    t.equal(reply.status, 201, reply.text);
    t.match(reply.body, { protocol: 'block', directIo: true, uri: /^\/dev\/loop\d+$/ });
    const device = reply.body.uri as string;
    const dio = async (): Promise<string | undefined> => (await readFile(`/sys/block/${path.basename(device)}/loop/dio`, 'utf8').catch(() => undefined))?.trim();
    t.equal(await dio(), '1', 'the loop device bypasses the page cache');
    t.equal(await agent.stop(), 0);
    // A reboot, as the agent sees it: its loop device is no longer bound.
    t.equal((await outcome('losetup', ['-d', device])).code, 0);
    t.equal(await loopBacking(device), undefined);
    agent = await startAgent(top, spec);
    t.match((await agent.request('GET', `/v1/exports/${reply.body.id}`)).body, { id: reply.body.id, directIo: true, uri: device }, 'the same id and device path');
    t.equal(await loopBacking(device), objectFile('v1'), 'bound to the volume again');
    t.equal(await dio(), '1', 'with direct I/O');
    t.match(exportRows(agent.catalogPath).find((row) => row.id === reply.body.id), { device, state: 'available' });
    t.equal((await agent.request('DELETE', `/v1/exports/${reply.body.id}`)).status, 204);
    t.equal(await loopBacking(device), undefined, 'detached on unexport');
  });

  await t.test('a reboot that hands the recorded loop device to something else: attached on another one, and the catalog says which', async (t) => {
    const reply = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'block', readOnly: true });
    t.equal(reply.status, 201, reply.text);
    const device = reply.body.uri as string;
    t.equal(await agent.stop(), 0);
    t.equal((await outcome('losetup', ['-d', device])).code, 0);
    const squatter = path.join(xfs.mountPoint, 'squatter.raw');
    await writeFile(squatter, Buffer.alloc(MiB));
    const taken = await outcome('losetup', [device, squatter]);
    t.equal(taken.code, 0, taken.stderr);
    try {
      agent = await startAgent(top, spec);
      const view = (await agent.request('GET', `/v1/exports/${reply.body.id}`)).body;
      t.not(view.uri, device, 'another device');
      t.equal(await loopBacking(view.uri), objectFile('v1'), 'bound to the volume');
      t.equal(await loopBacking(device), squatter, 'the other user keeps its device');
      t.equal(exportRows(agent.catalogPath).find((row) => row.id === reply.body.id)?.device, view.uri, 'the catalog records the new device');
      t.equal((await agent.request('DELETE', `/v1/exports/${reply.body.id}`)).status, 204);
      t.equal(await loopBacking(view.uri), undefined);
    } finally {
      await outcome('losetup', ['-d', device]);
    }
  });

  await t.test('check: a loop device on a volume that no export records, and an export whose device was detached behind the agent; repair settles both', async (t) => {
    const stray = await outcome('losetup', ['--find', '--show', '--read-only', objectFile('v1')]);
    t.equal(stray.code, 0, stray.stderr);
    const strayDevice = stray.stdout.trim();
    const block = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'block', readOnly: true });
    t.equal(block.status, 201, block.text);
    const device = block.body.uri as string;
    try {
      t.equal((await outcome('losetup', ['-d', device])).code, 0, 'the export\'s device detached by hand');
      const report = (await agent.request('GET', '/v1/check')).body;
      t.equal(report.clean, false);
      t.match(report.differences, [
        { kind: 'export', volume: 'v1', device: strayDevice, detail: /no export records it/ },
        { kind: 'export', volume: 'v1', export: block.body.id, detail: /available in the catalog but not served/ },
      ]);
      t.equal(report.differences.length, 2, 'nothing else');
      t.equal(await loopBacking(strayDevice), objectFile('v1'), 'check changes nothing');
      const repaired = (await agent.request('POST', '/v1/check/repair')).body;
      t.match(repaired, { clean: true, repaired: true });
      t.same(repaired.differences.map((d: { action: string }) => d.action).sort(), ['detached', 'restored']);
      t.equal(await loopBacking(strayDevice), undefined, 'the stray device is detached');
      t.equal(await loopBacking(device), objectFile('v1'), 'the export is bound again, on its recorded device');
      t.same((await agent.request('GET', '/v1/check')).body, { clean: true, repaired: false, differences: [] }, 'check is clean');
    } finally {
      await outcome('losetup', ['-d', strayDevice]);
    }
    t.equal((await agent.request('DELETE', `/v1/exports/${block.body.id}`)).status, 204);
    t.equal(await loopBacking(device), undefined);
  });

  await t.test('CLI: volagent export, exports, unexport', async (t) => {
    const cli = (...args: string[]): Promise<{ stdout: string; stderr: string; code: number }> => outcome(process.execPath, [VOLAGENT, '--socket', agent.socket, ...args]);
    const made = await cli('export', 'v1', '--read-only', '--json');
    t.equal(made.code, 0, made.stderr);
    const view = JSON.parse(made.stdout);
    t.match(view, { volume: 'v1', protocol: 'nbd', readOnly: true, uri: /^nbd\+unix:/ });
    const listed = await cli('exports');
    t.match(listed.stdout, /^ID +VOLUME +PROTOCOL +RO +CONNECTIONS +URI\n/);
    t.match(listed.stdout, new RegExp(`\n${view.id} +v1 +nbd +yes +0 +nbd\\+unix:`), 'the new export is listed');
    const human = await cli('export', 'v1', '--protocol', 'block');
    t.equal(human.code, 0, human.stderr);
    t.match(human.stdout, /^exported v1 as exp-[0-9a-f]{32}: \/dev\/loop\d+\n$/);
    const blockId = /as (exp-[0-9a-f]{32})/.exec(human.stdout)![1]!;
    t.equal((await cli('unexport', blockId)).stdout, `unexported ${blockId}\n`);
    t.equal((await cli('unexport', view.id)).code, 0);
    t.equal((await cli('unexport', view.id)).code, 0, 'again: done');
    const bad = await cli('export', 'v1', '--protocol', 'iscsi');
    t.equal(bad.code, 2, 'a usage error');
    t.match(bad.stderr, /--protocol must be nbd or block/);
    t.equal((await cli('export', 'nope')).code, 3, 'an absent volume: exit 3');
  });

  await t.test('bad input: a clear 4xx and no export row', async (t) => {
    const rows = exportRows(agent.catalogPath);
    const cases: Array<[string, unknown, number, string]> = [
      ['/v1/volumes/v1/exports', { protocol: 'iscsi' }, 400, 'BAD_REQUEST'],
      ['/v1/volumes/v1/exports', { protocol: 'nbd', readOnly: 'yes' }, 400, 'BAD_REQUEST'],
      ['/v1/volumes/v1/exports', { protocol: 'nbd', colour: 'red' }, 400, 'UNKNOWN_FIELD'],
      ['/v1/volumes/v1/exports', { protocol: 'nbd', directIo: 'on' }, 400, 'BAD_REQUEST'],
      ['/v1/volumes/nope/exports', { protocol: 'nbd' }, 404, 'VOLUME_NOT_FOUND'],
      ['/v1/volumes/..%2Fv1/exports', { protocol: 'nbd' }, 400, 'INVALID_ID'],
    ];
    for (const [url, body, status, code] of cases) {
      const reply = await agent.request('POST', url, body);
      t.equal(reply.status, status, `${url} ${JSON.stringify(body)}`);
      t.equal(reply.body?.error?.code, code);
    }
    t.equal((await agent.request('GET', '/v1/exports/exp-00000000000000000000000000000000')).status, 404);
    t.same(exportRows(agent.catalogPath), rows, 'no row was added');
  });
}
