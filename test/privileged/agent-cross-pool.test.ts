// Clones across pools of one host (issue 20): a real volagentd with two file
// pools on one XFS filesystem (reflink between them), an ext4 pool on another
// loop filesystem (a sparse copy) and a tiny ext4 pool (out of space). Every
// outcome is checked on disk (bytes, allocation, temporaries) and in the
// catalog, not only by its status. Needs root.
import { randomBytes } from 'node:crypto';
import { mkdir, open, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { fiemapExtents } from '../../src/clone/extents.js';
import { native } from '../../src/native/binding.js';
import type { AgentProcess } from '../helpers/agent.js';
import { poolEntries, readCatalog, restartHoldingNextCopy, startAgent, streamOn, untilCopyHeld, waitOperation } from '../helpers/agent.js';
import { sha256 } from '../helpers/files.js';
import { makeLoopFs, TEST_ROOT } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** The file's test: an agent started in a subtest with it outlives that subtest. */
const root = t;

if (!skipUnlessRoot(t)) {
  const xfs = await makeLoopFs('xfs', 2 * GiB);
  t.teardown(() => xfs.cleanup());
  const ext4 = await makeLoopFs('ext4', 2 * GiB);
  t.teardown(() => ext4.cleanup());
  const tiny = await makeLoopFs('ext4', 96 * MiB);
  t.teardown(() => tiny.cleanup());
  const pools = { x1: path.join(xfs.mountPoint, 'x1'), x2: path.join(xfs.mountPoint, 'x2'), e1: path.join(ext4.mountPoint, 'e1'), tiny: path.join(tiny.mountPoint, 'tiny') };
  for (const dir of Object.values(pools)) await mkdir(dir);
  await mkdir(TEST_ROOT, { recursive: true });
  const dir = path.join(xfs.mountPoint, 'agent');
  await mkdir(dir);
  const spec = { dir, pools: Object.entries(pools).map(([name, p]) => ({ name, path: p })), lockWaitMs: 150 };
  let agent: AgentProcess = await startAgent(t, spec);
  const objectFile = (pool: keyof typeof pools, name: string): string => path.join(pools[pool], 'objects', `${name}.raw`);

  /** `runs` runs of random data, `runBytes` each, the first at offset 0, spread over the volume. */
  async function fill(pool: keyof typeof pools, id: string, sizeBytes: number, runs: number, runBytes = MiB): Promise<void> {
    const handle = await open(objectFile(pool, id), 'r+');
    try {
      const stride = Math.floor(sizeBytes / runs);
      for (let i = 0; i < runs; i++) await handle.write(randomBytes(runBytes), 0, runBytes, i * stride);
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  /** Every pool's directory and the catalog's volumes, to prove nothing was left. */
  async function state(): Promise<unknown> {
    const entries = Object.fromEntries(await Promise.all(Object.keys(pools).map(async (name) => [name, await poolEntries(pools[name as keyof typeof pools])])));
    return { ...entries, volumes: readCatalog(agent.catalogPath).volumes };
  }

  // No assertion at the top level: tap would end the root test there.
  const made = await agent.request('PUT', '/v1/volumes/src', { tenant: 'acme', pool: 'x1', sizeBytes: 256 * MiB });
  if (made.status !== 201) throw new Error(`PUT src: ${made.status} ${made.text}`);
  await fill('x1', 'src', 256 * MiB, 8);
  const srcHash = await sha256(objectFile('x1', 'src'));

  await t.test('two file pools on one XFS filesystem: a reflink into the other pool, 201, extents shared', async (t) => {
    const clone = await agent.request('PUT', '/v1/volumes/in-x2', { tenant: 'acme', pool: 'x2', source: { volume: 'src' } });
    t.equal(clone.status, 201, clone.text);
    t.match(clone.body, { id: 'in-x2', pool: 'x2', tenant: 'acme', state: 'available', cloneMethod: 'reflink', source: { volume: 'src' }, sizeBytes: 256 * MiB });
    t.notOk('operation' in clone.body, 'no operation');
    t.equal(await sha256(objectFile('x2', 'in-x2')), srcHash);
    const handle = await open(objectFile('x2', 'in-x2'), 'r');
    const extents = await fiemapExtents(handle.fd, 256 * MiB).finally(() => handle.close());
    const { FIEMAP_EXTENT_SHARED } = native.fileConstants;
    t.ok(extents.length > 0 && extents.every((e) => (e.flags & FIEMAP_EXTENT_SHARED) !== 0), 'every extent shared with the source');
    t.same((await poolEntries(pools.x2)), ['in-x2.raw'], 'no temporary');
    t.match(readCatalog(agent.catalogPath).volumes.find((v) => v.id === 'in-x2'), { pool: 'x2', state: 'available', size_bytes: 256 * MiB });
    const again = await agent.request('PUT', '/v1/volumes/in-x2', { tenant: 'acme', pool: 'x2', source: { volume: 'src' } });
    t.equal(again.status, 200, 'the same request again');
    t.same(again.body, clone.body);
    const before = await state();
    const otherPool = await agent.request('PUT', '/v1/volumes/in-x2', { tenant: 'acme', source: { volume: 'src' } });
    t.equal(otherPool.status, 409, 'the same id and source in the source pool is another definition');
    t.equal(otherPool.body.error.code, 'VOLUME_EXISTS');
    t.same(await state(), before, 'nothing changed');
  });

  await t.test('XFS to ext4: a sparse copy as an operation with progress; bytes equal, allocation about the data', async (t) => {
    const restarted = await restartHoldingNextCopy(root, agent, spec, 'cross');
    agent = restarted.agent;
    const started = await agent.request('PUT', '/v1/volumes/in-e1', { tenant: 'acme', pool: 'e1', source: { volume: 'src' } });
    t.equal(started.status, 202, started.text);
    t.match(started.body, { operation: { kind: 'clone', target: 'in-e1', state: 'running', totalBytes: 256 * MiB }, volume: { id: 'in-e1', pool: 'e1', state: 'creating', cloneMethod: null } });
    const opId = started.body.operation.id;
    await untilCopyHeld(restarted.held);
    const during = (await agent.request('GET', `/v1/operations/${opId}`)).body;
    t.match(during, { state: 'running', doneBytes: MiB, totalBytes: 256 * MiB }, 'progress: the first data extent (1 MiB at offset 0) is copied');
    t.equal((await agent.request('GET', '/v1/volumes/in-e1')).body.state, 'creating');
    const repeat = await agent.request('PUT', '/v1/volumes/in-e1', { tenant: 'acme', pool: 'e1', source: { volume: 'src' } });
    t.equal(repeat.status, 202, 'a repeat while it runs');
    t.equal(repeat.body.operation.id, opId);
    await rm(restarted.held);
    t.match(await waitOperation(agent, opId), { state: 'succeeded', doneBytes: 256 * MiB, totalBytes: 256 * MiB });
    const volume = (await agent.request('GET', '/v1/volumes/in-e1')).body;
    // Across two filesystems copy_file_range is EXDEV (Linux 5.19 and later), so the engine reads and writes.
    t.match(volume, { pool: 'e1', state: 'available', cloneMethod: 'read_write', source: { volume: 'src' }, sizeBytes: 256 * MiB });
    t.equal(await sha256(objectFile('e1', 'in-e1')), srcHash, 'bytes equal');
    const allocated = (await stat(objectFile('e1', 'in-e1'))).blocks * 512;
    t.ok(allocated >= 8 * MiB && allocated < 8 * MiB + 4 * MiB, `sparse: ${allocated} bytes allocated for 8 MiB of data in 256 MiB`);
    t.equal(volume.allocatedBytes, allocated);
    t.same((await poolEntries(pools.e1)).filter((e) => e.includes('in-e1')), ['in-e1.raw'], 'no temporary');
    t.equal(await sha256(objectFile('x1', 'src')), srcHash, 'the source is unchanged');
  });

  await t.test('cancel of a copy into another pool leaves nothing in either pool', async (t) => {
    const restarted = await restartHoldingNextCopy(root, agent, spec, 'cancel');
    agent = restarted.agent;
    const before = await state();
    const started = await agent.request('PUT', '/v1/volumes/cancelled', { tenant: 'acme', pool: 'e1', source: { volume: 'src' } });
    t.equal(started.status, 202);
    await untilCopyHeld(restarted.held);
    const cancelled = await agent.request('DELETE', `/v1/operations/${started.body.operation.id}`);
    t.match(cancelled.body, { state: 'cancelled', error: { code: 'OPERATION_CANCELLED' } });
    await rm(restarted.held, { force: true });
    t.equal((await agent.request('GET', '/v1/volumes/cancelled')).status, 404);
    t.same(await state(), before, 'no file, no temporary, no row in any pool');
    t.equal(await sha256(objectFile('x1', 'src')), srcHash);
  });

  await t.test('out of space in the target pool: 507, nothing left in either pool, the source intact', async (t) => {
    await agent.request('PUT', '/v1/volumes/big', { tenant: 'acme', pool: 'x1', sizeBytes: 160 * MiB }).then((r) => t.equal(r.status, 201));
    await fill('x1', 'big', 160 * MiB, 40, 3 * MiB);
    const bigHash = await sha256(objectFile('x1', 'big'));
    const before = await state();
    const reply = await agent.request('PUT', '/v1/volumes/overflow?wait=true', { tenant: 'acme', pool: 'tiny', source: { volume: 'big' } });
    t.equal(reply.status, 507, reply.text);
    t.equal(reply.body.error.code, 'INSUFFICIENT_SPACE');
    t.same(await state(), before, 'no file, no temporary, no row');
    t.equal(await sha256(objectFile('x1', 'big')), bigHash, 'the source is intact');
    t.match((await agent.request('GET', '/v1/operations')).body.find((o: any) => o.target === 'overflow'), { state: 'failed', error: { code: 'INSUFFICIENT_SPACE' } });
    t.equal((await agent.request('GET', '/v1/check')).body.clean, true);
  });

  await t.test('a snapshot and an image as sources in another pool; a larger size grows the clone', async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/src/snapshots/src-s1')).status, 201);
    const snapHash = await sha256(objectFile('x1', 'src@src-s1'));
    const fromSnap = await agent.request('PUT', '/v1/volumes/snap-e1?wait=true', { tenant: 'acme', pool: 'e1', source: { snapshot: 'src-s1' }, sizeBytes: 320 * MiB });
    t.equal(fromSnap.status, 201, fromSnap.text);
    t.match(fromSnap.body, { pool: 'e1', source: { snapshot: 'src-s1' }, cloneMethod: 'read_write', sizeBytes: 320 * MiB, readOnly: false });
    t.equal((await stat(objectFile('e1', 'snap-e1'))).size, 320 * MiB);
    t.equal(await sha256(objectFile('e1', 'snap-e1'), 256 * MiB), snapHash, 'the first 256 MiB are the snapshot');

    // An image whose Image-Volume lives in the ext4 pool, cloned into an XFS pool: the main use (Cinder's clone_image).
    const data = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(13 * MiB)]);
    const upload = await streamOn(agent.socket, 'PUT', '/v1/images/img1/data?tenant=acme&pool=e1', data);
    t.equal(upload.status, 201, upload.text);
    const fromImage = await agent.request('PUT', '/v1/volumes/img-x1?wait=true', { tenant: 'acme', pool: 'x1', source: { image: 'img1' } });
    t.equal(fromImage.status, 201, fromImage.text);
    t.match(fromImage.body, { pool: 'x1', source: { image: 'img1' }, cloneMethod: 'read_write', sizeBytes: 16 * MiB, kind: 'volume', readOnly: false });
    t.equal(await sha256(objectFile('x1', 'img-x1')), await sha256(objectFile('e1', upload.body.volumeId)));
    t.ok((await stat(objectFile('x1', 'img-x1'))).blocks * 512 <= 4 * MiB, 'the zero tail is not written');
  });
}
