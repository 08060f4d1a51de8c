// Guest-only tap file, run by test/vm/lvm-cross-pool.test.ts with one virtio
// disk (vda, 256 MiB): a volume group `vgx` with a thin pool `tp` serves an
// `lvm` pool (with an image-volume cache of two entries) beside a `file`
// pool on the guest's /tmp. Covered: revert of an lvm volume to its
// snapshot, also with the agent killed between its LVM steps; clones from
// the lvm pool into the file pool and back (through a temporary LV renamed
// when complete); the image-volume cache's eviction removing LVs; pulls over
// nbds (TLS-PSK on 127.0.0.1) out of and into the lvm pool from a second
// volagentd with a file pool, and pulls into it broken by a kill of either
// agent: nothing of them is left in the VG, the thin pool or the catalog.
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess, PoolSpec } from '../../helpers/agent.js';
import { readCatalog, startAgent, streamOn, waitOperation } from '../../helpers/agent.js';
import { readAt, writeAt } from '../../helpers/files.js';
import { agentLvName, agentLvs as lvsOfPool, lvmRun } from '../../helpers/lvm.js';
import { exportOverTls, PULL_BLOCK, PULL_DATA_BYTES, PULL_RUNS, PULL_SIZE, PULL_ZERO_RUN, untilPullHeld, writeRuns } from '../../helpers/pull-fixtures.js';
import { inVmGuest } from '../../helpers/vm.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const POOL = 'lvm0';
const VG = 'vgx';
/** The thin pool's chunk (`lvcreate -c 64k`): the pull runs' alignment. */
const CHUNK = PULL_BLOCK;

const lvOf = (name: string): string => agentLvName(POOL, name);
const agentLvs = (): string[] => lvsOfPool(VG, POOL);

function nodeOf(name: string): string {
  return `/dev/${VG}/${lvOf(name)}`;
}

/** Data chunks in use in the thin pool, from `dmsetup status` of its -tpool device (used/total). */
function usedChunks(): number {
  const outcome = spawnSync('dmsetup', ['status', `${VG}-tp-tpool`], { encoding: 'utf8' });
  if (outcome.status !== 0) throw new Error(`dmsetup status ${VG}-tp-tpool: ${outcome.stderr}`);
  const words = outcome.stdout.trim().split(/\s+/);
  if (words[2] !== 'thin-pool') throw new Error(`${VG}-tp-tpool is a ${words[2]} target`);
  return Number(words[5]!.split('/')[0]);
}

async function sha(file: string): Promise<string> {
  return createHash('sha256').update(await readAt(file, PULL_SIZE)).digest('hex');
}

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/lvm-cross-pool.test.ts');
} else {
  const top = t;
  t.setTimeout(900_000);
  const dir = await mkdtemp('/tmp/lvm-cross-');
  const filesPath = path.join(dir, 'files');
  await mkdir(filesPath);
  const fileOf = (name: string): string => path.join(filesPath, 'objects', `${name}.raw`);
  const pools: PoolSpec[] = [
    { name: POOL, backend: 'lvm', vg: VG, thinPool: 'tp', minFree: '0%', imageCache: { maxCount: 2 } },
    { name: 'files', path: filesPath },
  ];
  const spec = (env?: NodeJS.ProcessEnv) => ({ dir, pools, startTimeoutMs: 120_000, ...(env ? { env } : {}) });
  t.teardown(() => {
    spawnSync('vgchange', ['-an', VG], { encoding: 'utf8' });
  });
  lvmRun('pvcreate', ['-q', '/dev/vda']);
  lvmRun('vgcreate', ['-q', VG, '/dev/vda']);
  lvmRun('lvcreate', ['-q', '--type', 'thin-pool', '-L', '192m', '-c', '64k', '-Zy', '-n', 'tp', VG]);

  // Pulls over nbds (the last subtests): this agent (TCP port 10831) and a peer with a file
  // pool (10832), one pre-shared key. The peer starts now: tap ends the file when no subtest is
  // pending, so nothing slow may run between two subtests.
  const keys = path.join(dir, 'fleet.psk');
  await writeFile(keys, `fleet:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const held = path.join(dir, 'held');
  const pullSpec = (env: NodeJS.ProcessEnv) => ({ ...spec(env), nbdListen: ['tcp:127.0.0.1:10831'], nbdTls: { pskFile: keys } });
  const peerDir = path.join(dir, 'peer');
  const peerFiles = path.join(peerDir, 'files');
  await mkdir(peerFiles, { recursive: true });
  const peerFileOf = (name: string): string => path.join(peerFiles, 'objects', `${name}.raw`);
  const peer: AgentProcess = await startAgent(top, { dir: peerDir, pools: [{ name: 'files', path: peerFiles }], nbdListen: ['tcp:127.0.0.1:10832'], nbdTls: { pskFile: keys }, startTimeoutMs: 120_000 });

  let agent: AgentProcess = await startAgent(top, spec());

  await t.test("revert an lvm volume: the snapshot's bytes, the grown tail zeros, no vr./vo. LV left", async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/r1', { tenant: 'acme', pool: POOL, sizeBytes: 16 * MiB })).status, 201);
    const first = randomBytes(MiB);
    await writeAt(nodeOf('r1'), first, 0);
    t.equal((await agent.request('PUT', '/v1/volumes/r1/snapshots/r1-s1')).status, 201);
    await writeAt(nodeOf('r1'), randomBytes(MiB), 0);
    t.equal((await agent.request('POST', '/v1/volumes/r1/resize', { sizeBytes: 32 * MiB })).status, 200);
    await writeAt(nodeOf('r1'), randomBytes(MiB), 20 * MiB);
    const reverted = await agent.request('POST', '/v1/volumes/r1/revert', { snapshot: 'r1-s1' });
    t.equal(reverted.status, 200, reverted.text);
    t.match(reverted.body, { id: 'r1', pool: POOL, sizeBytes: 32 * MiB, state: 'available' });
    t.same(await readAt(nodeOf('r1'), MiB), first, "the snapshot's bytes");
    t.ok((await readAt(nodeOf('r1'), 16 * MiB, 16 * MiB)).every((b) => b === 0), 'the tail past the snapshot reads zeros');
    t.same(await readAt(nodeOf('r1@r1-s1'), MiB), first, 'the snapshot is unchanged');
    t.same(agentLvs(), [lvOf('r1'), lvOf('r1@r1-s1')].sort(), 'the volume and its snapshot, nothing else');
  });

  for (const [failpoint, outcome] of [['lvm.revert-made', 'old'], ['lvm.revert-renamed-old', 'new']] as const) {
    await t.test(`kill -9 at ${failpoint}: after restart the volume holds its ${outcome} content, no vr./vo. LV left, check clean`, async (t) => {
      t.equal(await agent.stop(), 0);
      agent = await startAgent(top, spec({ VOLAGENT_FAILPOINTS: `${failpoint}=kill` }));
      const id = `k${failpoint.replace(/\W/g, '')}`;
      t.equal((await agent.request('PUT', `/v1/volumes/${id}`, { tenant: 'acme', pool: POOL, sizeBytes: 8 * MiB })).status, 201);
      const first = randomBytes(MiB);
      await writeAt(nodeOf(id), first, 0);
      t.equal((await agent.request('PUT', `/v1/volumes/${id}/snapshots/${id}-s`)).status, 201);
      const second = randomBytes(MiB);
      await writeAt(nodeOf(id), second, 0);
      await t.rejects(agent.request('POST', `/v1/volumes/${id}/revert`, { snapshot: `${id}-s` }), 'the agent died');
      t.match(await agent.exited, { signal: 'SIGKILL' });
      const left = agentLvs();
      t.ok(left.some((lv) => lv.startsWith('vr.') || lv.startsWith('vo.')), `the revert's LVs are left (${left.join(' ')})`);
      agent = await startAgent(top, spec());
      t.same(await readAt(nodeOf(id), MiB), outcome === 'new' ? first : second, `the volume holds its ${outcome} content`);
      t.same(await readAt(nodeOf(`${id}@${id}-s`), MiB), first, 'the snapshot is unchanged');
      t.notOk(agentLvs().some((lv) => lv.startsWith('vr.') || lv.startsWith('vo.')), 'start-up settled the revert: no vr./vo. LV');
      t.match((await agent.request('GET', '/v1/check')).body, { clean: true, differences: [] }, 'check is clean');
    });
  }

  await t.test('clones across pools: lvm into file and file into lvm, bytes equal, no temporary left', async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/l1', { tenant: 'acme', pool: POOL, sizeBytes: 16 * MiB })).status, 201);
    const data = randomBytes(MiB);
    await writeAt(nodeOf('l1'), data, 4 * MiB);
    const toFile = await agent.request('PUT', '/v1/volumes/f1?wait=true', { tenant: 'acme', pool: 'files', source: { volume: 'l1' } });
    t.equal(toFile.status, 201, toFile.text);
    t.match(toFile.body, { id: 'f1', pool: 'files', state: 'available', source: { volume: 'l1' }, sizeBytes: 16 * MiB });
    t.same(await readAt(fileOf('f1'), 16 * MiB), await readAt(nodeOf('l1'), 16 * MiB), 'the file holds the LV\'s bytes');
    t.equal((await stat(fileOf('f1'))).blocks * 512, MiB, 'the zeros read from the LV were not written: the file allocates the MiB of data only');
    await writeAt(fileOf('f1'), randomBytes(MiB), 8 * MiB);
    const toLvm = await agent.request('PUT', '/v1/volumes/l2?wait=true', { tenant: 'acme', pool: POOL, source: { volume: 'f1' } });
    t.equal(toLvm.status, 201, toLvm.text);
    t.match(toLvm.body, { id: 'l2', pool: POOL, state: 'available', source: { volume: 'f1' }, sizeBytes: 16 * MiB });
    t.same(await readAt(nodeOf('l2'), 16 * MiB), await readAt(fileOf('f1'), 16 * MiB), 'the LV holds the file\'s bytes');
    t.notOk(agentLvs().some((lv) => lv.startsWith('vt.')), 'no temporary LV left: it was renamed l2');
    t.match(readCatalog(agent.catalogPath).volumes.find((v) => v.id === 'l2'), { state: 'available', pool: POOL, size_bytes: 16 * MiB });
  });

  await t.test('the image-volume cache of an lvm pool: eviction removes the evicted entry\'s LV', async (t) => {
    const ivOf = async (id: string): Promise<string> => (await agent.request('GET', `/v1/images/${id}`)).body.volumeId;
    const ivs: string[] = [];
    for (const [id, fill] of [['c1', 1], ['c2', 2], ['c3', 3]] as const) {
      const reply = await streamOn(agent.socket, 'PUT', `/v1/images/${id}/data?pool=${POOL}&tenant=acme&cache=true`, Buffer.alloc(4 * MiB, fill), { headers: { 'content-length': 4 * MiB } });
      t.equal(reply.status, 201, reply.text);
      t.match(reply.body, { cached: true, internal: true, pool: POOL });
      ivs.push(await ivOf(id));
    }
    const entries = readCatalog(agent.catalogPath).images.filter((i) => i.cached === 1).map((i) => i.id).sort();
    t.same(entries, ['c2', 'c3'], 'over max_count: c1 was evicted');
    const deadline = Date.now() + 60_000;
    while (agentLvs().includes(lvOf(ivs[0]!)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    t.notOk(agentLvs().includes(lvOf(ivs[0]!)), "c1's Image-Volume LV is removed");
    t.ok(agentLvs().includes(lvOf(ivs[1]!)) && agentLvs().includes(lvOf(ivs[2]!)), "c2's and c3's stay");
    const use = await agent.request('PUT', '/v1/volumes/u3', { tenant: 'acme', pool: POOL, source: { image: 'c3' } });
    t.equal(use.status, 201, use.text);
    t.match(use.body, { cloneMethod: 'thin_snapshot' });
    t.ok((await readAt(nodeOf('u3'), 4 * MiB)).equals(Buffer.alloc(4 * MiB, 3)), 'a volume from a cached image reads it');
    t.match((await agent.request('GET', '/v1/check')).body, { clean: true });
    t.equal(await agent.stop(), 0);
  });

  /** What a failed pull into the lvm pool must leave as it was: the pool's LVs, the catalog's rows, the chunks in use. */
  const lvmState = (): { lvs: string[]; rows: string[]; usedChunks: number } => ({
    lvs: agentLvs(), rows: readCatalog(agent.catalogPath).volumes.map((v) => v.id).sort(), usedChunks: usedChunks(),
  });

  await t.test('an lvm volume pulled into a file pool over TLS: bytes equal, the file holds the data only', async (t) => {
    // The agent holds its second pull (the first broken one); its restart after the kill holds its next.
    agent = await startAgent(top, pullSpec({ VOLAGENT_FAILPOINTS: `pull.copying@2=hold:${held}` }));
    t.equal((await agent.request('PUT', '/v1/volumes/p1', { tenant: 'acme', pool: POOL, sizeBytes: PULL_SIZE })).status, 201);
    await writeRuns(nodeOf('p1'), PULL_RUNS);
    t.equal((await agent.request('GET', '/v1/volumes/p1')).body.allocatedBytes, PULL_DATA_BYTES, 'the source provisions its runs only');
    const exported = await exportOverTls(agent, 'p1', 10831);
    const remote = { uri: exported.uri, sizeBytes: PULL_SIZE, volume: 'p1' };
    const pulled = await peer.request('PUT', '/v1/volumes/q1?wait=true', { tenant: 'acme', source: { remote } });
    t.equal(pulled.status, 201, pulled.text);
    t.match(pulled.body, { id: 'q1', pool: 'files', sizeBytes: PULL_SIZE, state: 'available', cloneMethod: 'nbd_pull', source: { remote } });
    t.equal(await sha(peerFileOf('q1')), await sha(nodeOf('p1')), 'bytes equal');
    t.equal((await stat(peerFileOf('q1'))).blocks * 512, PULL_DATA_BYTES, 'the unprovisioned chunks are holes in the file');
    t.equal((await agent.request('DELETE', `/v1/exports/${exported.id}`)).status, 204);
  });

  const q2 = { uri: '', sizeBytes: PULL_SIZE, volume: 'q2' };

  await t.test('a file volume pulled into the lvm pool: bytes equal, the data chunks provisioned and no other', async (t) => {
    t.equal((await peer.request('PUT', '/v1/volumes/q2', { tenant: 'acme', sizeBytes: PULL_SIZE })).status, 201);
    await writeRuns(peerFileOf('q2'), PULL_RUNS, PULL_ZERO_RUN);
    t.equal((await stat(peerFileOf('q2'))).blocks * 512, PULL_DATA_BYTES + PULL_ZERO_RUN[1], 'the source file allocates its runs and its written zeros');
    q2.uri = (await exportOverTls(peer, 'q2', 10832)).uri;
    const before = lvmState();
    const pulled = await agent.request('PUT', '/v1/volumes/p2?wait=true', { tenant: 'acme', pool: POOL, source: { remote: q2 } });
    t.equal(pulled.status, 201, pulled.text);
    t.match(pulled.body, { id: 'p2', pool: POOL, sizeBytes: PULL_SIZE, state: 'available', cloneMethod: 'nbd_pull', source: { remote: q2 }, allocatedBytes: PULL_DATA_BYTES });
    t.equal(await sha(nodeOf('p2')), await sha(peerFileOf('q2')), 'bytes equal');
    t.same(agentLvs(), [...before.lvs, lvOf('p2')].sort(), 'one LV more, p2\'s: the temporary was renamed');
    t.equal(usedChunks() - before.usedChunks, PULL_DATA_BYTES / CHUNK, 'the thin pool\'s chunks in use grew by the runs\' 48, none for the holes or the zeros');
  });

  await t.test('the destination killed mid-pull: after its restart no LV, no row, the chunks in use as before', async (t) => {
    const before = lvmState();
    const started = await agent.request('PUT', '/v1/volumes/p3', { tenant: 'acme', pool: POOL, source: { remote: q2 } });
    t.equal(started.status, 202, started.text);
    const operation = started.body.operation.id as string;
    await untilPullHeld(held);
    t.ok(agentLvs().some((lv) => lv.startsWith('vt.')), `mid-pull: the temporary LV exists (${agentLvs().join(' ')})`);
    t.match(readCatalog(agent.catalogPath).volumes.find((v) => v.id === 'p3'), { state: 'creating' }, 'mid-pull: its row is creating');
    await agent.kill();
    await rm(held);
    agent = await startAgent(top, pullSpec({ VOLAGENT_FAILPOINTS: `pull.copying=hold:${held}` }));
    t.equal((await agent.request('GET', '/v1/volumes/p3')).status, 404);
    t.same(lvmState(), before, 'the pool\'s LVs, the catalog\'s rows and the chunks in use as before');
    t.match((await agent.request('GET', `/v1/operations/${operation}`)).body, { state: 'failed', error: { code: 'INTERNAL', message: 'interrupted: the agent stopped before the operation ended' } }, 'its operation failed: interrupted');
  });

  await t.test('the source killed mid-pull: REMOTE_FAILED, no LV, no row, the chunks in use as before', async (t) => {
    const before = lvmState();
    const started = await agent.request('PUT', '/v1/volumes/p4', { tenant: 'acme', pool: POOL, source: { remote: q2 } });
    t.equal(started.status, 202, started.text);
    await untilPullHeld(held);
    t.ok(agentLvs().some((lv) => lv.startsWith('vt.')), `mid-pull: the temporary LV exists (${agentLvs().join(' ')})`);
    await peer.kill();
    await rm(held);
    const op = await waitOperation(agent, started.body.operation.id);
    t.match(op, { state: 'failed', error: { code: 'REMOTE_FAILED' } }, JSON.stringify(op));
    t.equal((await agent.request('GET', '/v1/volumes/p4')).status, 404);
    t.same(lvmState(), before, 'the pool\'s LVs, the catalog\'s rows and the chunks in use as before');
    t.match((await agent.request('GET', '/v1/check')).body, { clean: true, differences: [] }, 'check is clean');
    t.equal(await agent.stop(), 0);
  });
}
