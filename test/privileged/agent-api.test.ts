// The control API against a real volagentd on a real unix socket, with an
// XFS pool (reflink, constant-time clones) and an ext4 pool (copy fallback,
// clones run as operations), both on loop devices. Every refusal is checked
// on disk (the pool's objects directory) and in the catalog, not only by its
// status. Needs root.
import { mkdir, open, rm, stat, unlink, writeFile } from 'node:fs/promises';
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

const root = t;

if (!skipUnlessRoot(t)) {
  const xfs = await makeLoopFs('xfs', 2 * GiB);
  t.teardown(() => xfs.cleanup());
  const ext4 = await makeLoopFs('ext4', 3 * GiB);
  t.teardown(() => ext4.cleanup());
  const tiny = await makeLoopFs('ext4', 96 * MiB);
  t.teardown(() => tiny.cleanup());
  const tinyPool = path.join(tiny.mountPoint, 'pool');
  await mkdir(tinyPool);
  const xfsPool = path.join(xfs.mountPoint, 'pool');
  const ext4Pool = path.join(ext4.mountPoint, 'pool');
  await mkdir(xfsPool);
  await mkdir(ext4Pool);
  await mkdir(TEST_ROOT, { recursive: true });
  const dir = path.join(xfs.mountPoint, 'agent');
  await mkdir(dir);
  const spec = { dir, pools: [{ name: 'fast', path: xfsPool }, { name: 'slow', path: ext4Pool }, { name: 'tiny', path: tinyPool }], lockWaitMs: 150 };
  let agent: AgentProcess = await startAgent(t, spec);
  /** Restarts the agent with its next copy held in the middle: resolves the file whose removal lets it go on. */
  const holdNextCopy = async (label: string): Promise<string> => {
    const restarted = await restartHoldingNextCopy(t, agent, spec, label);
    agent = restarted.agent;
    return restarted.held;
  };
  const objectFile = (poolPath: string, name: string): string => path.join(poolPath, 'objects', `${name}.raw`);

  /** Writes `runs` runs of random data (1 MiB each, spread) into a volume's file, as a guest would. */
  async function fill(poolPath: string, id: string, sizeBytes: number, runs: number, runBytes = MiB): Promise<void> {
    const handle = await open(objectFile(poolPath, id), 'r+');
    try {
      const stride = Math.floor(sizeBytes / runs);
      const { randomBytes } = await import('node:crypto');
      for (let i = 0; i < runs; i++) await handle.write(randomBytes(runBytes), 0, runBytes, i * stride);
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  /** Disk and catalog, to prove a refused request changed nothing. */
  async function state(): Promise<unknown> {
    return { fast: await poolEntries(xfsPool), slow: await poolEntries(ext4Pool), tiny: await poolEntries(tinyPool), catalog: readCatalog(agent.catalogPath) };
  }

  await t.test('version and pools with probed capabilities and capacity', async (t) => {
    const version = await agent.request('GET', '/v1/version');
    t.equal(version.status, 200);
    t.match(version.body, { version: /^\d+\.\d+\.\d+/, api: 1 });
    const pools = await agent.request('GET', '/v1/pools');
    t.equal(pools.status, 200);
    t.same(pools.body.map((p: any) => [p.name, p.backend, p.capabilities]), [
      ['fast', 'file', { reflink: true, constantTimeClone: true, sizeAlignmentBytes: 1 }],
      ['slow', 'file', { reflink: false, constantTimeClone: false, sizeAlignmentBytes: 1 }],
      ['tiny', 'file', { reflink: false, constantTimeClone: false, sizeAlignmentBytes: 1 }],
    ]);
    for (const p of pools.body) {
      t.ok(p.capacity.totalBytes > 64 * MiB && p.capacity.freeBytes > 0 && p.capacity.usedBytes >= 0, `${p.name} capacity ${JSON.stringify(p.capacity)}`);
    }
  });

  await t.test('create: sparse, sized, recorded; the same PUT again is 200 with the same body; a different one is 409', async (t) => {
    const put = await agent.request('PUT', '/v1/volumes/vol-a', { tenant: 'acme', sizeBytes: 64 * MiB });
    t.equal(put.status, 201);
    t.match(put.body, { id: 'vol-a', pool: 'fast', tenant: 'acme', kind: 'volume', sizeBytes: 64 * MiB, state: 'available', cloneMethod: 'create', readOnly: false });
    const file = await stat(objectFile(xfsPool, 'vol-a'));
    t.equal(file.size, 64 * MiB);
    t.equal(file.blocks, 0, 'sparse: nothing allocated');
    const again = await agent.request('PUT', '/v1/volumes/vol-a', { tenant: 'acme', sizeBytes: 64 * MiB, pool: 'fast' });
    t.equal(again.status, 200);
    t.same(again.body, put.body, 'the same answer');
    const before = await state();
    const conflict = await agent.request('PUT', '/v1/volumes/vol-a', { tenant: 'acme', sizeBytes: 128 * MiB });
    t.equal(conflict.status, 409);
    t.equal(conflict.body.error.code, 'VOLUME_EXISTS');
    t.same(await state(), before, 'nothing changed');
    t.equal((await stat(objectFile(xfsPool, 'vol-a'))).size, 64 * MiB);
    const got = await agent.request('GET', '/v1/volumes/vol-a');
    t.same(got.body, put.body);
  });

  await t.test('ten identical PUTs at once make one volume and one answer', async (t) => {
    const replies = await Promise.all(Array.from({ length: 10 }, () => agent.request('PUT', '/v1/volumes/vol-c10', { tenant: 'acme', sizeBytes: 8 * MiB })));
    t.same(replies.map((r) => r.status).sort(), [200, 200, 200, 200, 200, 200, 200, 200, 200, 201]);
    for (const reply of replies) t.same(reply.body, replies[0]!.body);
    t.same(readCatalog(agent.catalogPath).volumes.filter((v) => v.id === 'vol-c10').length, 1);
    t.same((await poolEntries(xfsPool)).filter((e) => e.includes('vol-c10')), ['vol-c10.raw']);

    await agent.request('PUT', '/v1/volumes/src-c10', { tenant: 'acme', pool: 'slow', sizeBytes: 16 * MiB }).then((r) => t.equal(r.status, 201));
    await fill(ext4Pool, 'src-c10', 16 * MiB, 4);
    const clones = await Promise.all(Array.from({ length: 10 }, () => agent.request('PUT', '/v1/volumes/copy-c10?wait=true', { tenant: 'acme', source: { volume: 'src-c10' } })));
    t.same(clones.map((r) => r.status).sort(), [200, 200, 200, 200, 200, 200, 200, 200, 200, 201], 'copy clones too');
    for (const reply of clones) t.same(reply.body, clones[0]!.body);
    t.equal(await sha256(objectFile(ext4Pool, 'copy-c10')), await sha256(objectFile(ext4Pool, 'src-c10')));
    t.same((await poolEntries(ext4Pool)).filter((e) => e.includes('copy-c10')), ['copy-c10.raw'], 'one file, no temporaries');
  });

  await t.test('XFS clone: reflink, constant time, shared extents, same bytes; a larger sizeBytes grows it', async (t) => {
    await agent.request('PUT', '/v1/volumes/base', { tenant: 'acme', sizeBytes: 256 * MiB });
    await fill(xfsPool, 'base', 256 * MiB, 8);
    const clone = await agent.request('PUT', '/v1/volumes/base-clone', { tenant: 'acme', source: { volume: 'base' } });
    t.equal(clone.status, 201);
    t.match(clone.body, { id: 'base-clone', pool: 'fast', state: 'available', cloneMethod: 'reflink', source: { volume: 'base' }, sizeBytes: 256 * MiB });
    t.equal(await sha256(objectFile(xfsPool, 'base-clone')), await sha256(objectFile(xfsPool, 'base')));
    const handle = await open(objectFile(xfsPool, 'base-clone'), 'r');
    const extents = await fiemapExtents(handle.fd, 256 * MiB).finally(() => handle.close());
    const { FIEMAP_EXTENT_SHARED } = native.fileConstants;
    t.ok(extents.length > 0 && extents.every((e) => (e.flags & FIEMAP_EXTENT_SHARED) !== 0), 'every extent shared with the source');
    const grown = await agent.request('PUT', '/v1/volumes/base-grown', { tenant: 'acme', source: { volume: 'base' }, sizeBytes: 512 * MiB });
    t.equal(grown.status, 201);
    t.equal(grown.body.sizeBytes, 512 * MiB);
    t.equal((await stat(objectFile(xfsPool, 'base-grown'))).size, 512 * MiB);
    t.equal(await sha256(objectFile(xfsPool, 'base-grown'), 256 * MiB), await sha256(objectFile(xfsPool, 'base')), 'the first 256 MiB are the source');
    const list = await agent.request('GET', '/v1/volumes?pool=fast&tenant=acme&kind=volume');
    t.equal(list.status, 200);
    t.same(list.body.map((v: any) => v.id).sort(), ['base', 'base-clone', 'base-grown', 'vol-a', 'vol-c10']);
  });

  await t.test('ext4 clone: an operation with progress; the volume is never available before its data', async (t) => {
    await agent.request('PUT', '/v1/volumes/big', { tenant: 'acme', pool: 'slow', sizeBytes: 2 * GiB });
    await fill(ext4Pool, 'big', 2 * GiB, 96, 4 * MiB);
    const held = await holdNextCopy('clone');
    const started = await agent.request('PUT', '/v1/volumes/big-copy', { tenant: 'acme', source: { volume: 'big' } });
    t.equal(started.status, 202);
    t.match(started.body, { operation: { kind: 'clone', target: 'big-copy', state: 'running', totalBytes: 2 * GiB }, volume: { id: 'big-copy', state: 'creating', cloneMethod: null } });
    const opId = started.body.operation.id;
    await untilCopyHeld(held);
    const during = await agent.request('GET', '/v1/volumes/big-copy');
    t.equal(during.body.state, 'creating', 'in the middle of the copy: creating, never available before its data');
    const repeat = await agent.request('PUT', '/v1/volumes/big-copy', { tenant: 'acme', source: { volume: 'big' } });
    t.equal(repeat.status, 202, 'a repeat while it runs');
    t.equal(repeat.body.operation.id, opId, 'names the same operation');
    const progress = (await agent.request('GET', `/v1/operations/${opId}`)).body;
    t.match(progress, { state: 'running', totalBytes: 2 * GiB }, 'the operation runs');
    await rm(held);
    const done = await waitOperation(agent, opId);
    t.match(done, { id: opId, state: 'succeeded', doneBytes: 2 * GiB, totalBytes: 2 * GiB });
    const volume = await agent.request('GET', '/v1/volumes/big-copy');
    t.match(volume.body, { state: 'available', cloneMethod: 'copy_file_range', sizeBytes: 2 * GiB });
    t.ok(volume.body.allocatedBytes >= 96 * 4 * MiB && volume.body.allocatedBytes < 96 * 4 * MiB + 64 * MiB, `sparse copy: ${volume.body.allocatedBytes} bytes allocated`);
    t.equal(await sha256(objectFile(ext4Pool, 'big-copy')), await sha256(objectFile(ext4Pool, 'big')));
    const ops = await agent.request('GET', '/v1/operations');
    t.ok(ops.body.some((o: any) => o.id === opId && o.state === 'succeeded'));
  });

  await t.test('cancel: DELETE of the operation stops it; no volume, no row, no temporary', async (t) => {
    const held = await holdNextCopy('cancel');
    const before = await state();
    const started = await agent.request('PUT', '/v1/volumes/cancelled', { tenant: 'acme', source: { volume: 'big' } });
    t.equal(started.status, 202);
    await untilCopyHeld(held);
    const cancelled = await agent.request('DELETE', `/v1/operations/${started.body.operation.id}`);
    t.equal(cancelled.status, 200);
    t.match(cancelled.body, { state: 'cancelled', error: { code: 'OPERATION_CANCELLED' } });
    await rm(held, { force: true });
    t.equal((await agent.request('GET', '/v1/volumes/cancelled')).status, 404);
    const after = (await state()) as any;
    t.same({ ...after, catalog: { ...after.catalog, operations: undefined } }, { ...(before as any), catalog: { ...(before as any).catalog, operations: undefined } }, 'disk and volumes as before');
    t.equal((await agent.request('DELETE', `/v1/operations/${started.body.operation.id}`)).body.state, 'cancelled', 'cancelling again answers the same');
  });

  await t.test('delete while a clone reads the volume: 409 VOLUME_BUSY naming the operation; never a torn clone', async (t) => {
    const sourceHash = await sha256(objectFile(ext4Pool, 'big'));
    const started = await agent.request('PUT', '/v1/volumes/reader', { tenant: 'acme', source: { volume: 'big' } });
    t.equal(started.status, 202);
    const busy = await agent.request('DELETE', '/v1/volumes/big');
    t.equal(busy.status, 409);
    t.equal(busy.body.error.code, 'VOLUME_BUSY');
    t.same(busy.body.error.details.operations, [started.body.operation.id]);
    t.match(readCatalog(agent.catalogPath).volumes.find((v) => v.id === 'big'), { state: 'available' });
    const deleteTarget = await agent.request('DELETE', '/v1/volumes/reader');
    t.equal(deleteTarget.status, 409, 'the volume being made cannot be deleted either');
    await waitOperation(agent, started.body.operation.id);
    t.equal(await sha256(objectFile(ext4Pool, 'reader')), sourceHash);
    t.equal((await agent.request('DELETE', '/v1/volumes/reader')).status, 204);
  });

  await t.test('resize grows only; a read-only refusal and a shrink change nothing', async (t) => {
    const grown = await agent.request('POST', '/v1/volumes/vol-a/resize', { sizeBytes: 96 * MiB });
    t.equal(grown.status, 200);
    t.equal(grown.body.sizeBytes, 96 * MiB);
    t.equal((await stat(objectFile(xfsPool, 'vol-a'))).size, 96 * MiB);
    const same = await agent.request('POST', '/v1/volumes/vol-a/resize', { sizeBytes: 96 * MiB });
    t.equal(same.status, 200);
    const before = await state();
    const shrink = await agent.request('POST', '/v1/volumes/vol-a/resize', { sizeBytes: 32 * MiB });
    t.equal(shrink.status, 400);
    t.equal(shrink.body.error.code, 'SHRINK_NOT_SUPPORTED');
    t.same(await state(), before);
    t.equal((await stat(objectFile(xfsPool, 'vol-a'))).size, 96 * MiB);
    t.equal((await agent.request('POST', '/v1/volumes/absent/resize', { sizeBytes: 512 })).body.error.code, 'VOLUME_NOT_FOUND');
  });

  await t.test('snapshots: read-only reflink copies, clone sources, unique ids, block a volume delete', async (t) => {
    const snap = await agent.request('PUT', '/v1/volumes/base/snapshots/base-s1');
    t.equal(snap.status, 201);
    t.match(snap.body, { id: 'base-s1', volume: 'base', pool: 'fast', tenant: 'acme', state: 'available', cloneMethod: 'reflink', readOnly: true, sizeBytes: 256 * MiB });
    const snapFile = objectFile(xfsPool, 'base@base-s1');
    t.equal((await stat(snapFile)).mode & 0o777, 0o444);
    t.equal(await sha256(snapFile), await sha256(objectFile(xfsPool, 'base')));
    t.equal((await agent.request('PUT', '/v1/volumes/base/snapshots/base-s1', {})).status, 200, 'again: 200');
    const elsewhere = await agent.request('PUT', '/v1/volumes/vol-a/snapshots/base-s1');
    t.equal(elsewhere.status, 409);
    t.equal(elsewhere.body.error.code, 'SNAPSHOT_EXISTS');
    // The volume changes after the snapshot; a clone of the snapshot has the old bytes.
    const snapHash = await sha256(snapFile);
    await fill(xfsPool, 'base', 256 * MiB, 3);
    const fromSnap = await agent.request('PUT', '/v1/volumes/from-snap', { tenant: 'acme', source: { snapshot: 'base-s1' } });
    t.equal(fromSnap.status, 201);
    t.match(fromSnap.body, { source: { snapshot: 'base-s1' }, cloneMethod: 'reflink', readOnly: false });
    t.equal(await sha256(objectFile(xfsPool, 'from-snap')), snapHash);
    const list = await agent.request('GET', '/v1/volumes/base/snapshots');
    t.same(list.body.map((s: any) => s.id), ['base-s1']);
    const busy = await agent.request('DELETE', '/v1/volumes/base');
    t.equal(busy.status, 409);
    t.equal(busy.body.error.code, 'VOLUME_HAS_SNAPSHOTS');
    t.equal((await agent.request('DELETE', '/v1/volumes/base/snapshots/base-s1')).status, 204);
    t.equal((await agent.request('DELETE', '/v1/volumes/base/snapshots/base-s1')).status, 204, 'absent: 204');
    t.notOk((await poolEntries(xfsPool)).includes('base@base-s1.raw'));
    t.equal((await agent.request('GET', '/v1/volumes/base/snapshots/base-s1')).status, 404);
    const ext4Snap = await agent.request('PUT', '/v1/volumes/src-c10/snapshots/slow-s1?wait=true');
    t.equal(ext4Snap.status, 201);
    t.match(ext4Snap.body, { cloneMethod: 'copy_file_range', readOnly: true });
  });

  await t.test('out of space: 507 for a copy clone and an upload, the partial result removed, the source intact, no row', async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/filler', { tenant: 'acme', pool: 'tiny', sizeBytes: 128 * MiB })).status, 201);
    await fill(tinyPool, 'filler', 128 * MiB, 48);
    const sourceHash = await sha256(objectFile(tinyPool, 'filler'));
    const before = await state();
    const reply = await agent.request('PUT', '/v1/volumes/overflow?wait=true', { tenant: 'acme', source: { volume: 'filler' } });
    t.equal(reply.status, 507);
    t.equal(reply.body.error.code, 'INSUFFICIENT_SPACE');
    t.match(reply.body.error.message, /ENOSPC/);
    t.same(await state(), { ...(before as object), catalog: { ...(before as any).catalog, operations: readCatalog(agent.catalogPath).operations } }, 'no file, no temporary, no row');
    t.equal(await sha256(objectFile(tinyPool, 'filler')), sourceHash, 'the source is intact');
    const failed = (await agent.request('GET', '/v1/operations')).body.find((o: any) => o.target === 'overflow');
    t.match(failed, { state: 'failed', error: { code: 'INSUFFICIENT_SPACE' } });

    // An upload larger than the free space: 507 once the pool is full, the partial Image-Volume removed.
    const { randomBytes } = await import('node:crypto');
    const data = randomBytes(64 * MiB);
    const upload = await streamOn(agent.socket, 'PUT', '/v1/images/overflow-image/data?tenant=acme&pool=tiny', data, { headers: { 'content-length': data.length } });
    t.equal(upload.status, 507, `the upload is refused: ${upload.text}`);
    t.equal(upload.body.error.code, 'INSUFFICIENT_SPACE');
    t.same(await state(), { ...(before as object), catalog: { ...(before as any).catalog, operations: readCatalog(agent.catalogPath).operations } }, 'no image, no Image-Volume, no temporary');
    t.equal((await agent.request('GET', '/v1/images/overflow-image')).status, 404);
    t.equal(await sha256(objectFile(tinyPool, 'filler')), sourceHash, 'the other volume is intact');
    t.equal((await agent.request('GET', '/v1/check')).body.clean, true, 'check is clean');
    // The space is back: a small volume and upload now fit.
    const small = await streamOn(agent.socket, 'PUT', '/v1/images/small-image/data?tenant=acme&pool=tiny', data.subarray(0, 4 * MiB));
    t.equal(small.status, 201, 'the agent keeps serving: a small upload fits');
    t.equal((await agent.request('DELETE', '/v1/images/small-image')).status, 204);
    t.equal((await agent.request('DELETE', '/v1/volumes/filler')).status, 204);
  });

  await t.test('delete: 204, the file and the row gone; absent is 204 too', async (t) => {
    t.equal((await agent.request('DELETE', '/v1/volumes/base-grown')).status, 204);
    t.notOk((await poolEntries(xfsPool)).includes('base-grown.raw'));
    t.notOk(readCatalog(agent.catalogPath).volumes.some((v) => v.id === 'base-grown'));
    t.equal((await agent.request('DELETE', '/v1/volumes/base-grown')).status, 204);
    t.equal((await agent.request('GET', '/v1/volumes/base-grown')).status, 404);
  });

  await t.test('bad input: each gets its 4xx code and changes nothing on disk or in the catalog', async (t) => {
    const cases: Array<[string, string, string, unknown, number, string, { raw?: string }?]> = [
      ['id with ..', 'PUT', '/v1/volumes/a..b', { tenant: 'acme', sizeBytes: 512 }, 400, 'INVALID_ID'],
      ['id starting with -', 'PUT', '/v1/volumes/-x', { tenant: 'acme', sizeBytes: 512 }, 400, 'INVALID_ID'],
      ['id of 129 characters', 'PUT', `/v1/volumes/${'x'.repeat(129)}`, { tenant: 'acme', sizeBytes: 512 }, 400, 'INVALID_ID'],
      ['id with a NUL', 'PUT', '/v1/volumes/a%00b', { tenant: 'acme', sizeBytes: 512 }, 400, 'INVALID_ID'],
      ['id with an encoded slash', 'PUT', '/v1/volumes/..%2Fetc', { tenant: 'acme', sizeBytes: 512 }, 400, 'INVALID_ID'],
      ['tenant invalid', 'PUT', '/v1/volumes/ok1', { tenant: '../x', sizeBytes: 512 }, 400, 'INVALID_ID'],
      ['tenant missing', 'PUT', '/v1/volumes/ok1', { sizeBytes: 512 }, 400, 'BAD_REQUEST'],
      ['negative size', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', sizeBytes: -512 }, 400, 'INVALID_SIZE'],
      ['fractional size', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', sizeBytes: 1024.5 }, 400, 'INVALID_SIZE'],
      ['size as a string', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', sizeBytes: '1024' }, 400, 'INVALID_SIZE'],
      ['size not a multiple of 512', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', sizeBytes: 1000 }, 400, 'INVALID_SIZE'],
      ['zero size', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', sizeBytes: 0 }, 400, 'INVALID_SIZE'],
      ['no size, no source', 'PUT', '/v1/volumes/ok1', { tenant: 'acme' }, 400, 'INVALID_SIZE'],
      ['unknown pool', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', sizeBytes: 512, pool: 'nope' }, 404, 'POOL_NOT_FOUND'],
      ['unknown field', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', sizeBytes: 512, colour: 'red' }, 400, 'UNKNOWN_FIELD'],
      ['malformed JSON', 'PUT', '/v1/volumes/ok1', undefined, 400, 'BAD_REQUEST', { raw: '{"tenant": "acme",' }],
      ['a JSON array', 'PUT', '/v1/volumes/ok1', [1, 2], 400, 'BAD_REQUEST'],
      ['no body', 'PUT', '/v1/volumes/ok1', undefined, 400, 'BAD_REQUEST'],
      ['clone from an absent volume', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', source: { volume: 'ghost' } }, 404, 'VOLUME_NOT_FOUND'],
      ['clone from an absent snapshot', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', source: { snapshot: 'ghost' } }, 404, 'SNAPSHOT_NOT_FOUND'],
      ['clone from an absent image', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', source: { image: 'ghost' } }, 404, 'IMAGE_NOT_FOUND'],
      ['source with two kinds', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', source: { volume: 'vol-a', snapshot: 'x' } }, 400, 'BAD_REQUEST'],
      ['source with an unknown kind', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', source: { disk: 'vol-a' } }, 400, 'UNKNOWN_FIELD'],
      ['clone smaller than its source', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', source: { volume: 'vol-a' }, sizeBytes: 512 }, 400, 'SHRINK_NOT_SUPPORTED'],
      // Adoption (docs/api.md "Adopting what the agent did not make") is the lvm backend's (test/vm/guest/lvm-agent.ts).
      ['adopt into a file pool', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', source: { unmanaged: 'some-lv' } }, 422, 'UNSUPPORTED_FOR_POOL'],
      ['adopt a name starting with -', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', source: { unmanaged: '-x' } }, 400, 'BAD_REQUEST'],
      ['adopt a name with a slash', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', source: { unmanaged: 'vg/lv' } }, 400, 'BAD_REQUEST'],
      ['adopt a number', 'PUT', '/v1/volumes/ok1', { tenant: 'acme', source: { unmanaged: 7 } }, 400, 'BAD_REQUEST'],
      ['unmanaged objects of a file pool', 'GET', '/v1/pools/fast/unmanaged', undefined, 422, 'UNSUPPORTED_FOR_POOL'],
      ['unmanaged objects of an absent pool', 'GET', '/v1/pools/nope/unmanaged/x', undefined, 404, 'POOL_NOT_FOUND'],
      // An admin uses any tenant's source and names the owner; who else may do what is access.test.ts's.
      ['an admin names no owner', 'PUT', '/v1/volumes/ok1', { source: { volume: 'vol-a' } }, 400, 'BAD_REQUEST'],
      ['wait=maybe', 'PUT', '/v1/volumes/ok1?wait=maybe', { tenant: 'acme', sizeBytes: 512 }, 400, 'BAD_REQUEST'],
      ['unknown query parameter', 'PUT', '/v1/volumes/ok1?force=1', { tenant: 'acme', sizeBytes: 512 }, 400, 'BAD_REQUEST'],
      ['snapshot with a body field', 'PUT', '/v1/volumes/vol-a/snapshots/s9', { name: 'x' }, 400, 'UNKNOWN_FIELD'],
      ['snapshot of an absent volume', 'PUT', '/v1/volumes/ghost/snapshots/s9', undefined, 404, 'VOLUME_NOT_FOUND'],
      ['resize with no size', 'POST', '/v1/volumes/vol-a/resize', {}, 400, 'INVALID_SIZE'],
      ['absent operation', 'GET', '/v1/operations/op-ghost', undefined, 404, 'OPERATION_NOT_FOUND'],
      ['unknown route', 'GET', '/v1/nothing', undefined, 404, 'ROUTE_NOT_FOUND'],
      ['wrong method', 'PATCH', '/v1/volumes/vol-a', { tenant: 'acme' }, 405, 'METHOD_NOT_ALLOWED'],
    ];
    const before = await state();
    for (const [name, method, url, body, status, code, options] of cases) {
      const reply = await agent.request(method, url, body, options);
      t.equal(reply.status, status, `${name}: status`);
      t.equal(reply.body?.error?.code, code, `${name}: ${reply.text.trim()}`);
      t.type(reply.body?.error?.message, 'string');
    }
    t.same(await state(), before, 'no file and no row was made or changed');
  });

  await t.test('bodies over 1 MiB get 413 from the headers, before the body is sent', async (t) => {
    const { request } = await import('node:http');
    const before = await state();
    const reply = await new Promise<{ status: number; body: any; sentBytes: number }>((resolve, reject) => {
      const req = request({ socketPath: agent.socket, method: 'PUT', path: '/v1/volumes/huge', headers: { 'content-type': 'application/json', 'content-length': 2 * MiB } }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => { text += d.toString(); });
        res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text), sentBytes: req.socket?.bytesWritten ?? -1 }));
      });
      req.on('error', reject);
      req.flushHeaders(); // headers only: the agent must answer without the body
    });
    t.equal(reply.status, 413);
    t.equal(reply.body.error.code, 'PAYLOAD_TOO_LARGE');
    t.ok(reply.sentBytes < 4096, `only the headers were sent (${reply.sentBytes} bytes)`);
    const chunked = await new Promise<{ status: number; body: any }>((resolve, reject) => {
      const req = request({ socketPath: agent.socket, method: 'PUT', path: '/v1/volumes/huge', headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' } }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => { text += d.toString(); });
        res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text) }));
      });
      req.on('error', reject); // the agent reads what is still sent after its answer (a lingering close): no EPIPE, no reset
      const chunk = Buffer.alloc(256 * 1024, 0x20);
      for (let i = 0; i < 6; i++) req.write(chunk);
      req.end();
    });
    t.equal(chunked.status, 413);
    t.equal(chunked.body.error.code, 'PAYLOAD_TOO_LARGE');
    t.same(await state(), before);
  });

  await t.test('check reports orphans, temporaries, missing objects; repair settles them', async (t) => {
    t.same((await agent.request('GET', '/v1/check')).body, { clean: true, repaired: false, differences: [] }, 'clean to begin with');
    await writeFile(objectFile(xfsPool, 'stray'), 'x');
    await writeFile(path.join(xfsPool, 'objects', '.tmp-lost-0123456789ab.raw'), 'x');
    await agent.request('PUT', '/v1/volumes/doomed', { tenant: 'acme', sizeBytes: MiB });
    await unlink(objectFile(xfsPool, 'doomed'));
    const report = await agent.request('GET', '/v1/check');
    t.equal(report.body.clean, false);
    t.same(report.body.differences.map((d: any) => [d.kind, d.object, d.action]).sort(), [
      ['missing', 'doomed', undefined], ['orphan', 'stray', undefined], ['temporary', '.tmp-lost-0123456789ab.raw', undefined],
    ]);
    t.ok((await poolEntries(xfsPool)).includes('stray.raw'), 'check changes nothing');
    const repaired = await agent.request('POST', '/v1/check/repair');
    t.match(repaired.body, { clean: true, repaired: true });
    t.same(repaired.body.differences.map((d: any) => [d.kind, d.action]).sort(), [['missing', 'marked-error'], ['orphan', 'removed'], ['temporary', 'removed']]);
    t.notOk((await poolEntries(xfsPool)).some((e) => e === 'stray.raw' || e.startsWith('.tmp-')));
    t.match((await agent.request('GET', '/v1/volumes/doomed')).body, { state: 'error', error: 'backend object missing' });
    t.equal((await agent.request('DELETE', '/v1/volumes/doomed')).status, 204, 'a volume in error can be deleted');
    t.same((await agent.request('GET', '/v1/check')).body.differences, []);
  });

  await t.test('SIGTERM drains and exits 0; a restart keeps every volume', async (t) => {
    const before = (await agent.request('GET', '/v1/volumes')).body;
    t.ok(before.length >= 8);
    t.equal(await agent.stop(), 0);
    t.ok(agent.logs.some((l) => l.includes('"volagentd stopped"')));
    agent = await startAgent(root, spec); // outlives this subtest
    t.same((await agent.request('GET', '/v1/volumes')).body, before);
    t.same((await agent.request('GET', '/v1/check')).body.differences, []);
  });

  await t.test('kill -9 during a long copy, then restart: nothing creating, no temporary, check clean', async (t) => {
    const started = await agent.request('PUT', '/v1/volumes/crashed', { tenant: 'acme', source: { volume: 'big' } });
    t.equal(started.status, 202);
    const deadline = Date.now() + 10_000;
    while (!(await poolEntries(ext4Pool)).some((e) => e.startsWith('.tmp-crashed-')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    t.ok((await poolEntries(ext4Pool)).some((e) => e.startsWith('.tmp-crashed-')), 'the copy was under way');
    await agent.kill();
    t.match(readCatalog(agent.catalogPath).volumes.find((v) => v.id === 'crashed'), { state: 'creating' }, 'the intent was on disk');
    agent = await startAgent(root, spec); // outlives this subtest
    t.ok(agent.logs.some((l) => l.includes('"removed a stale control socket"')), 'the stale socket was removed');
    const catalog = readCatalog(agent.catalogPath);
    t.notOk(catalog.volumes.some((v) => v.state === 'creating'), 'no row left creating');
    t.notOk(catalog.volumes.some((v) => v.id === 'crashed'));
    t.match(catalog.operations.find((o) => o.id === started.body.operation.id), { state: 'failed' });
    t.notOk((await poolEntries(ext4Pool)).some((e) => e.startsWith('.tmp-') || e === 'crashed.raw'), 'no temporary, no half volume');
    t.equal((await agent.request('GET', '/v1/volumes/crashed')).status, 404);
    t.same((await agent.request('GET', '/v1/check')).body, { clean: true, repaired: false, differences: [] });
    const op = await agent.request('GET', `/v1/operations/${started.body.operation.id}`);
    t.match(op.body, { state: 'failed', error: { code: 'INTERNAL', message: /interrupted/ } });
  });

  await t.test('SIGTERM during a long copy cancels it, cleans up and exits 0', async (t) => {
    const started = await agent.request('PUT', '/v1/volumes/interrupted', { tenant: 'acme', source: { volume: 'big' } });
    t.equal(started.status, 202);
    t.equal(await agent.stop(), 0);
    t.notOk((await poolEntries(ext4Pool)).some((e) => e.startsWith('.tmp-') || e === 'interrupted.raw'));
    t.notOk(readCatalog(agent.catalogPath).volumes.some((v) => v.id === 'interrupted'));
    t.match(readCatalog(agent.catalogPath).operations.find((o) => o.id === started.body.operation.id), { state: 'cancelled' });
  });
}
