// Guest-only tap file, run by test/vm/lvm-cross-pool.test.ts with one virtio
// disk (vda, 256 MiB): a volume group `vgx` with a thin pool `tp` serves an
// `lvm` pool (with an image-volume cache of two entries) beside a `file`
// pool on the guest's /tmp. Covered: revert of an lvm volume to its
// snapshot, also with the agent killed between its LVM steps; clones from
// the lvm pool into the file pool and back (through a temporary LV renamed
// when complete); the image-volume cache's eviction removing LVs.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, stat } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess, PoolSpec } from '../../helpers/agent.js';
import { readCatalog, startAgent, streamOn } from '../../helpers/agent.js';
import { readAt, writeAt } from '../../helpers/files.js';
import { agentLvName, agentLvs as lvsOfPool, lvmRun } from '../../helpers/lvm.js';
import { inVmGuest } from '../../helpers/vm.js';

const MiB = 1024 * 1024;
const POOL = 'lvm0';
const VG = 'vgx';

const lvOf = (name: string): string => agentLvName(POOL, name);
const agentLvs = (): string[] => lvsOfPool(VG, POOL);

function nodeOf(name: string): string {
  return `/dev/${VG}/${lvOf(name)}`;
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
  lvmRun('lvcreate', ['-q', '--type', 'thin-pool', '-L', '192m', '-Zy', '-n', 'tp', VG]);

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
}
