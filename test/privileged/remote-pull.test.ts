// Volumes pulled across hosts (issue 21): two hosts as network namespaces
// joined by a veth pair (test/helpers/netns.ts), one volagentd in each with
// its pool on its own loop filesystem and a shared TLS pre-shared key. Host
// A exports a 4 GiB volume holding 512 MiB of data read-only over nbds://;
// host B pulls it (PUT /v1/volumes/{id} with source.remote). Checked on the
// disk, in B's catalog and on the wire (the veth counters): the bytes are
// equal, B's copy is sparse, and what crossed is the data, not the volume.
// Bad sources change nothing on B; kills of either agent in the middle leave
// nothing half-made on B, and A's export goes with the control plane's DELETE.
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';

import BetterSqlite3 from 'better-sqlite3';
import t from 'tap';
import type { Test } from 'tap';

import type { AgentProcess, AgentSpec } from '../helpers/agent.js';
import { startAgent } from '../helpers/agent.js';
import { allocatedBytes } from '../helpers/files.js';
import type { LoopFs } from '../helpers/loop-fs.js';
import { makeLoopFs } from '../helpers/loop-fs.js';
import type { Host } from '../helpers/netns.js';
import { makeHosts } from '../helpers/netns.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { outcome } from '../helpers/run.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const VOLUME_BYTES = 4 * GiB;
/** Eight runs of 64 MiB spread over the volume: 512 MiB of data. */
const DATA_RUNS: Array<[number, number]> = Array.from({ length: 8 }, (_, i) => [i * (VOLUME_BYTES / 8) + 3 * MiB, 64 * MiB]);
const DATA_BYTES = DATA_RUNS.reduce((sum, [, length]) => sum + length, 0);
const NBD_PORT = 10809;

interface Side {
  host: Host;
  fs: LoopFs;
  dir: string;
  poolPath: string;
  spec: AgentSpec;
  agent: AgentProcess;
}

async function side(t: Test, host: Host, keys: string, env: NodeJS.ProcessEnv = {}): Promise<Side> {
  const fs = await makeLoopFs('xfs', 2 * GiB);
  t.teardown(() => fs.cleanup());
  const poolPath = path.join(fs.mountPoint, 'pool');
  const dir = path.join(fs.mountPoint, 'agent');
  await mkdir(poolPath);
  await mkdir(dir);
  const spec: AgentSpec = {
    dir, pools: [{ name: 'pool', path: poolPath }], nbdListen: [`tcp:${host.address}:${NBD_PORT}`], nbdTls: { pskFile: keys }, spawn: host.spawn, env,
  };
  return { host, fs, dir, poolPath, spec, agent: await startAgent(t, spec) };
}

/** Writes the data runs (random bytes, never an all-zero block) into an existing volume file. */
async function fillRuns(file: string): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    for (const [offset, length] of DATA_RUNS) {
      for (let at = 0; at < length; at += 4 * MiB) {
        const bytes = randomBytes(4 * MiB);
        bytes[0] = 0xff;
        await handle.write(bytes, 0, bytes.length, offset + at);
      }
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function operationEnd(agent: AgentProcess, id: string): Promise<{ state: string; error?: { code: string; message: string }; doneBytes: number; totalBytes: number }> {
  for (;;) {
    const reply = await agent.request('GET', `/v1/operations/${id}`);
    const op = reply.body as { state: string; error?: { code: string; message: string }; doneBytes: number; totalBytes: number };
    if (op.state !== 'running') return op;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function waitForFile(file: string): Promise<void> {
  while (!existsSync(file)) await new Promise((resolve) => setTimeout(resolve, 50));
}

/** Object and temporary files in a pool directory. */
async function poolFiles(poolPath: string): Promise<string[]> {
  return (await readdir(path.join(poolPath, 'objects'))).sort();
}

function catalogRow(catalogPath: string, id: string): Record<string, unknown> | undefined {
  const db = new BetterSqlite3(catalogPath, { readonly: true });
  try {
    return db.prepare('SELECT * FROM volumes WHERE id = ?').get(id) as Record<string, unknown> | undefined;
  } finally {
    db.close();
  }
}

if (!skipUnlessRoot(t)) {
  // One parent test: the hosts, filesystems and agents live exactly as long as it (tap runs its teardowns at its end).
  await t.test('a volume pulled across two hosts', async (t) => {
    const [a, b] = (await makeHosts(t)) as [Host, Host];
    const keyDir = path.join(process.env.VOLAGENT_TEST_ROOT ?? '/tmp/volagent-test', `remote-pull-${process.pid}`);
    await mkdir(keyDir, { recursive: true });
    t.teardown(() => rm(keyDir, { recursive: true, force: true }));
    const keys = path.join(keyDir, 'fleet.psk');
    await writeFile(keys, `fleet:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const source = await side(t, a, keys);
    const sink = await side(t, b, keys);

    t.equal((await source.agent.request('PUT', '/v1/volumes/src', { tenant: 't1', sizeBytes: VOLUME_BYTES })).status, 201);
    await fillRuns(path.join(source.poolPath, 'objects', 'src.raw'));
    const exported = await source.agent.request('POST', '/v1/volumes/src/exports', { protocol: 'nbd', readOnly: true });
    t.equal(exported.status, 201);
    const exportId = (exported.body as { id: string }).id;
    const uri = (exported.body as { uris: string[] }).uris[1]!;
    t.equal(uri, `nbds://${a.address}:${NBD_PORT}/${exportId}`, 'A\'s export on its address, over TLS');
    const remote = { uri, sizeBytes: VOLUME_BYTES, volume: 'src' };

    await t.test('host B pulls the volume over TLS: the same bytes, sparse, the source and method recorded; only the data crossed', async (t) => {
      const before = await a.counters(b);
      const started = await sink.agent.request('PUT', '/v1/volumes/copy', { tenant: 't2', source: { remote } });
      t.equal(started.status, 202, 'a pull is an operation');
      const operation = (started.body as { operation: { id: string } }).operation.id;
      const op = await operationEnd(sink.agent, operation);
      t.match(op, { state: 'succeeded', totalBytes: VOLUME_BYTES }, JSON.stringify(op));
      const view = (await sink.agent.request('GET', '/v1/volumes/copy')).body;
      t.match(view, { id: 'copy', tenant: 't2', state: 'available', sizeBytes: VOLUME_BYTES, cloneMethod: 'nbd_pull', source: { remote } });
      const row = catalogRow(sink.agent.catalogPath, 'copy')!;
      t.same(JSON.parse(row.source_remote as string), remote, 'B\'s catalog records the peer\'s export');
      t.equal(row.source_kind, null);

      const copy = path.join(sink.poolPath, 'objects', 'copy.raw');
      const cmp = await outcome('cmp', [path.join(source.poolPath, 'objects', 'src.raw'), copy]);
      t.equal(cmp.code, 0, `the same bytes ${cmp.stdout}${cmp.stderr}`);
      const allocated = await allocatedBytes(copy);
      t.ok(allocated >= DATA_BYTES && allocated <= DATA_BYTES + 16 * MiB, `B's copy is sparse: ${allocated / MiB} MiB allocated for ${DATA_BYTES / MiB} MiB of data`);
      const after = await a.counters(b);
      const crossed = after.txBytes - before.txBytes;
      t.ok(crossed >= DATA_BYTES && crossed < DATA_BYTES * 1.05 + 4 * MiB, `${(crossed / MiB).toFixed(1)} MiB crossed the veth for ${DATA_BYTES / MiB} MiB of data in a ${VOLUME_BYTES / GiB} GiB volume`);
      t.equal((await sink.agent.request('DELETE', '/v1/volumes/copy')).status, 204);
    });

    await t.test('bad sources are refused and change nothing on B', async (t) => {
      const files = await poolFiles(sink.poolPath);
      const refusals: Array<[string, unknown, number, string]> = [
        ['another size', { ...remote, sizeBytes: VOLUME_BYTES + MiB }, 409, 'REMOTE_MISMATCH'],
        ['another volume', { ...remote, volume: 'other' }, 409, 'REMOTE_MISMATCH'],
        ['an export that does not exist', { ...remote, uri: `nbds://${a.address}:${NBD_PORT}/exp-00000000000000000000000000000000` }, 409, 'REMOTE_MISMATCH'],
        ['a port nothing listens on', { ...remote, uri: `nbds://${a.address}:${NBD_PORT + 1}/${exportId}` }, 502, 'REMOTE_FAILED'],
        ['plain nbd:// over TCP', { ...remote, uri: uri.replace('nbds://', 'nbd://') }, 400, 'BAD_REQUEST'],
        ['credentials in the URI', { ...remote, uri: `${uri.replace('nbds://', 'nbds://fleet@')}` }, 400, 'BAD_REQUEST'],
        ['not an NBD URI', { ...remote, uri: 'http://example.invalid/x' }, 400, 'BAD_REQUEST'],
        ['an unknown field', { ...remote, tls: 'off' }, 400, 'UNKNOWN_FIELD'],
      ];
      for (const [what, body, status, code] of refusals) {
        const reply = await sink.agent.request('PUT', '/v1/volumes/bad?wait=true', { tenant: 't2', source: { remote: body } });
        t.equal(reply.status, status, `${what}: ${status}`);
        t.equal((reply.body as { error: { code: string } }).error.code, code, `${what}: ${code}: ${JSON.stringify(reply.body)}`);
        t.equal((await sink.agent.request('GET', '/v1/volumes/bad')).status, 404, `${what}: no volume`);
        t.equal(catalogRow(sink.agent.catalogPath, 'bad'), undefined, `${what}: no catalog row`);
        t.same(await poolFiles(sink.poolPath), files, `${what}: no file in B's pool`);
      }

      // An agent holding another key is refused in the TLS handshake: nothing is read.
      const otherKeys = path.join(keyDir, 'other.psk');
      await writeFile(otherKeys, `fleet:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
      const strangerDir = path.join(sink.fs.mountPoint, 'stranger');
      const strangerPool = path.join(sink.fs.mountPoint, 'stranger-pool');
      await mkdir(strangerDir);
      await mkdir(strangerPool);
      const stranger = await startAgent(t, { dir: strangerDir, pools: [{ name: 'pool', path: strangerPool }], nbdTls: { pskFile: otherKeys }, spawn: b.spawn });
      const before = await a.counters(b);
      const refused = await stranger.request('PUT', '/v1/volumes/bad?wait=true', { tenant: 't2', source: { remote } });
      t.equal(refused.status, 502);
      t.match(refused.body, { error: { code: 'REMOTE_FAILED' } }, JSON.stringify(refused.body));
      t.same(await readdir(path.join(strangerPool, 'objects')), [], 'nothing in its pool');
      const crossed = (await a.counters(b)).txBytes - before.txBytes;
      t.ok(crossed < 64 * 1024, `no data crossed: ${crossed} bytes (the handshake)`);
      await stranger.stop();
    });

    await t.test('B killed in the middle of a pull: after its restart nothing of it is left; A\'s export goes with the control plane\'s DELETE', async (t) => {
      const held = path.join(keyDir, 'held-b');
      await sink.agent.stop();
      sink.agent = await startAgent(t, { ...sink.spec, env: { VOLAGENT_FAILPOINTS: `pull.copying=hold:${held}` } });
      const started = await sink.agent.request('PUT', '/v1/volumes/halfway', { tenant: 't2', source: { remote } });
      t.equal(started.status, 202);
      const operation = (started.body as { operation: { id: string } }).operation.id;
      await waitForFile(held);
      const temporaries = (await poolFiles(sink.poolPath)).filter((name) => name.startsWith('.tmp-halfway-'));
      t.equal(temporaries.length, 1, 'mid-pull: a temporary, no object');
      await sink.agent.kill();
      await rm(held, { force: true });
      sink.agent = await startAgent(t, sink.spec);
      t.equal((await sink.agent.request('GET', '/v1/volumes/halfway')).status, 404, 'the volume is not there');
      t.equal(catalogRow(sink.agent.catalogPath, 'halfway'), undefined, 'no catalog row');
      t.same((await poolFiles(sink.poolPath)).filter((name) => name.includes('halfway')), [], 'no object, no temporary');
      t.match((await sink.agent.request('GET', `/v1/operations/${operation}`)).body, { state: 'failed' }, 'its operation failed');
      t.equal((await source.agent.request('GET', `/v1/exports/${exportId}`)).status, 200, 'A still serves the export until the control plane removes it');
    });

    for (const point of ['pull.connected', 'pull.copied', 'pull.populated']) {
      await t.test(`B killed at ${point}: after its restart nothing of the pull is visible, and a repeat of it succeeds`, async (t) => {
        await sink.agent.stop();
        sink.agent = await startAgent(t, { ...sink.spec, env: { VOLAGENT_FAILPOINTS: `${point}=kill` } });
        const id = `killed-${point.replace('.', '-')}`;
        const started = await sink.agent.request('PUT', `/v1/volumes/${id}`, { tenant: 't2', source: { remote } });
        t.equal(started.status, 202);
        t.equal((await sink.agent.exited).signal, 'SIGKILL', `the agent died at ${point}`);
        sink.agent = await startAgent(t, sink.spec);
        t.equal((await sink.agent.request('GET', `/v1/volumes/${id}`)).status, 404, 'the volume is not there');
        t.equal(catalogRow(sink.agent.catalogPath, id), undefined, 'no catalog row');
        t.same((await poolFiles(sink.poolPath)).filter((name) => name.includes(id)), [], 'no object, no temporary');
        t.match((await sink.agent.request('GET', '/v1/check')).body, { clean: true }, 'check finds nothing to repair');
        const again = await sink.agent.request('PUT', `/v1/volumes/${id}?wait=true`, { tenant: 't2', source: { remote } });
        t.equal(again.status, 201, `the same request again: ${JSON.stringify(again.body)}`);
        t.equal((await sink.agent.request('DELETE', `/v1/volumes/${id}`)).status, 204);
      });
    }

    await t.test('A killed in the middle of a pull: B\'s pull fails with REMOTE_FAILED and keeps nothing', async (t) => {
      const held = path.join(keyDir, 'held-a');
      await sink.agent.stop();
      sink.agent = await startAgent(t, { ...sink.spec, env: { VOLAGENT_FAILPOINTS: `pull.copying=hold:${held}` } });
      const started = await sink.agent.request('PUT', '/v1/volumes/orphan', { tenant: 't2', source: { remote } });
      t.equal(started.status, 202);
      const operation = (started.body as { operation: { id: string } }).operation.id;
      await waitForFile(held);
      await source.agent.kill();
      await rm(held, { force: true });
      const op = await operationEnd(sink.agent, operation);
      t.match(op, { state: 'failed', error: { code: 'REMOTE_FAILED' } }, JSON.stringify(op));
      t.equal((await sink.agent.request('GET', '/v1/volumes/orphan')).status, 404);
      t.equal(catalogRow(sink.agent.catalogPath, 'orphan'), undefined);
      t.same((await poolFiles(sink.poolPath)).filter((name) => name.includes('orphan')), [], 'no object, no temporary on B');
      source.agent = await startAgent(t, source.spec);
      t.equal((await source.agent.request('GET', `/v1/exports/${exportId}`)).status, 200, 'A\'s export is made again at its restart');
      t.equal((await source.agent.request('DELETE', `/v1/exports/${exportId}`)).status, 204, 'the control plane removes it');
      t.same((await source.agent.request('GET', '/v1/exports')).body, [], 'A serves no export');
      const gone = await b.run('nbdinfo', [`${uri.replace('nbds://', 'nbds://fleet@')}?tls-psk-file=${keys}`]);
      t.not(gone.code, 0, 'the export is gone from the wire');
      t.ok((await stat(path.join(source.poolPath, 'objects', 'src.raw'))).size === VOLUME_BYTES, 'A\'s volume is intact');
    });
  });
}
