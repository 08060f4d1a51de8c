// Guest-only tap file: a real volagentd with a `thin` pool (vda data 64 MiB,
// vdb metadata 8 MiB) and a `file` pool in the guest's /tmp, run by
// test/vm/thin-cross-pool.test.ts. Clones from the file pool into the thin
// pool and back (bytes equal, only the data provisioned or allocated), and a
// revert of a thin volume to its snapshot, also when the agent is killed
// right after the revert's ledger commit.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, stat } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess, ThinPoolSpec } from '../../helpers/agent.js';
import { startAgent } from '../../helpers/agent.js';
import { readAt, writeAt } from '../../helpers/files.js';
import { activeThinIds, poolThinIds, readThinRows, removeAgentDevices } from '../../helpers/thin-state.js';
import { inVmGuest } from '../../helpers/vm.js';

const MiB = 1024 * 1024;
const POOL = 'thin0';
const DEVICE_DIR = '/dev/volagent-test';

const nodeOf = (name: string): string => path.join(DEVICE_DIR, POOL, name);

const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/thin-cross-pool.test.ts');
} else {
  const top = t;
  t.setTimeout(400_000);
  const dir = await mkdtemp('/tmp/thin-cross-');
  const filePool = path.join(dir, 'files');
  await mkdir(filePool);
  const fileOf = (name: string): string => path.join(filePool, 'objects', `${name}.raw`);
  const catalogPath = path.join(dir, 'catalog.db');
  const thin: ThinPoolSpec = { name: POOL, backend: 'thin', dataDevice: '/dev/vda', metadataDevice: '/dev/vdb', deviceDir: DEVICE_DIR, blockSize: '64KiB', minFree: '5%' };
  const spec = (env?: NodeJS.ProcessEnv) => ({ dir, pools: [thin, { name: 'files', path: filePool }], startTimeoutMs: 120_000, ...(env ? { env } : {}) });
  t.teardown(async () => {
    await removeAgentDevices(POOL).catch(() => undefined);
  });
  let agent: AgentProcess = await startAgent(top, spec());

  await t.test('file to thin: bytes equal, only the data provisioned', async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/f1', { tenant: 'acme', pool: 'files', sizeBytes: 16 * MiB })).status, 201);
    await writeAt(fileOf('f1'), randomBytes(2 * MiB), 0);
    await writeAt(fileOf('f1'), randomBytes(MiB), 8 * MiB);
    const clone = await agent.request('PUT', '/v1/volumes/t1?wait=true', { tenant: 'acme', pool: POOL, source: { volume: 'f1' } });
    t.equal(clone.status, 201, clone.text);
    // copy_file_range does not write into a block device (EINVAL): the engine reads and writes.
    t.match(clone.body, { pool: POOL, cloneMethod: 'read_write', source: { volume: 'f1' }, sizeBytes: 16 * MiB, state: 'available' });
    t.equal(sha(await readAt(nodeOf('t1'), 16 * MiB)), sha(await readAt(fileOf('f1'), 16 * MiB)), 'bytes equal');
    t.equal((await agent.request('GET', '/v1/volumes/t1')).body.allocatedBytes, 3 * MiB, 'the thin device provisions the 3 MiB of data, not 16 MiB');
  });

  await t.test('thin to file: bytes equal, the file allocates the data only', async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/t2', { tenant: 'acme', pool: POOL, sizeBytes: 16 * MiB })).status, 201);
    await writeAt(nodeOf('t2'), randomBytes(MiB), 4 * MiB);
    const clone = await agent.request('PUT', '/v1/volumes/f2?wait=true', { tenant: 'acme', pool: 'files', source: { volume: 't2' } });
    t.equal(clone.status, 201, clone.text);
    t.match(clone.body, { pool: 'files', cloneMethod: 'read_write', source: { volume: 't2' }, sizeBytes: 16 * MiB });
    t.equal(sha(await readAt(fileOf('f2'), 16 * MiB)), sha(await readAt(nodeOf('t2'), 16 * MiB)), 'bytes equal');
    t.equal((await stat(fileOf('f2'))).blocks * 512, MiB, 'the unprovisioned 15 MiB are holes');
  });

  await t.test('revert a thin volume: the snapshot\'s bytes, the grown tail zeros, the old thin id deleted', async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/t3', { tenant: 'acme', pool: POOL, sizeBytes: 16 * MiB })).status, 201);
    const first = randomBytes(MiB);
    await writeAt(nodeOf('t3'), first, 0);
    t.equal((await agent.request('PUT', '/v1/volumes/t3/snapshots/t3-s1')).status, 201);
    await writeAt(nodeOf('t3'), randomBytes(MiB), 0);
    t.equal((await agent.request('POST', '/v1/volumes/t3/resize', { sizeBytes: 32 * MiB })).status, 200);
    await writeAt(nodeOf('t3'), randomBytes(MiB), 20 * MiB);
    const oldId = readThinRows(catalogPath, POOL).devices.find((d) => d.name === 't3')!.thin_id;
    const reverted = await agent.request('POST', '/v1/volumes/t3/revert', { snapshot: 't3-s1' });
    t.equal(reverted.status, 200, reverted.text);
    t.match(reverted.body, { id: 't3', pool: POOL, sizeBytes: 32 * MiB, state: 'available' });
    t.same(await readAt(nodeOf('t3'), MiB), first, "the snapshot's bytes");
    t.ok((await readAt(nodeOf('t3'), 16 * MiB, 16 * MiB)).every((b) => b === 0), 'the tail past the snapshot reads zeros');
    t.same(await readAt(nodeOf('t3@t3-s1'), MiB), first, 'the snapshot is unchanged');
    const rows = readThinRows(catalogPath, POOL);
    const newId = rows.devices.find((d) => d.name === 't3')!.thin_id;
    t.not(newId, oldId, 'a new thin id');
    t.match(rows.devices.find((d) => d.name === 't3'), { size_bytes: 32 * MiB });
    t.notOk(rows.devices.some((d) => d.thin_id === oldId), 'the old thin id is not recorded');
    t.notOk((await activeThinIds(POOL)).includes(oldId), 'nor active');
    t.notOk((await poolThinIds(POOL, '/dev/vdb')).includes(oldId), 'nor in the pool');
    t.same(await poolThinIds(POOL, '/dev/vdb'), rows.devices.map((d) => d.thin_id).sort((a, b) => a - b), 'the pool and the catalog hold the same thin ids');
  });

  await t.test('kill -9 right after a revert\'s ledger commit: after restart the volume is the snapshot and the old thin id is deleted', async (t) => {
    t.equal(await agent.stop(), 0);
    agent = await startAgent(top, spec({ VOLAGENT_FAILPOINTS: 'thin.revert-committed=kill' }));
    t.equal((await agent.request('PUT', '/v1/volumes/t4', { tenant: 'acme', pool: POOL, sizeBytes: 8 * MiB })).status, 201);
    const first = randomBytes(MiB);
    await writeAt(nodeOf('t4'), first, 0);
    t.equal((await agent.request('PUT', '/v1/volumes/t4/snapshots/t4-s1')).status, 201);
    await writeAt(nodeOf('t4'), randomBytes(MiB), 0);
    const oldId = readThinRows(catalogPath, POOL).devices.find((d) => d.name === 't4')!.thin_id;
    await t.rejects(agent.request('POST', '/v1/volumes/t4/revert', { snapshot: 't4-s1' }), 'the agent died');
    t.match(await agent.exited, { signal: 'SIGKILL' });
    t.ok(readThinRows(catalogPath, POOL).devices.some((d) => d.name === `~retired-${oldId}`), 'the commit kept the old thin id as retired');
    agent = await startAgent(top, spec());
    t.same(await readAt(nodeOf('t4'), MiB), first, "after the restart the volume holds the snapshot's bytes");
    const rows = readThinRows(catalogPath, POOL);
    t.notOk(rows.devices.some((d) => d.thin_id === oldId), 'the retired thin id was deleted at open');
    t.notOk((await activeThinIds(POOL)).includes(oldId));
    t.same(await poolThinIds(POOL, '/dev/vdb'), rows.devices.map((d) => d.thin_id).sort((a, b) => a - b), 'the pool and the catalog hold the same thin ids');
    t.equal((await agent.request('GET', '/v1/check')).body.clean, true, 'check is clean');
    t.equal(await agent.stop(), 0);
  });
}
