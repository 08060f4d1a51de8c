// Reverting a volume to one of its snapshots (issue 20, Cinder's
// revert_to_snapshot) against a real volagentd with an XFS pool (reflink) and
// an ext4 pool (copy), on loop filesystems: the bytes after a revert are the
// snapshot's, the grown tail reads zeros, and every refusal leaves the disk
// and the catalog as they were. Needs root.
import { randomBytes } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { fiemapExtents } from '../../src/clone/extents.js';
import { native } from '../../src/native/binding.js';
import { poolEntries, readCatalog, startAgent } from '../helpers/agent.js';
import { sha256 } from '../helpers/files.js';
import { makeLoopFs, TEST_ROOT } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

if (!skipUnlessRoot(t)) {
  const xfs = await makeLoopFs('xfs', GiB);
  t.teardown(() => xfs.cleanup());
  const ext4 = await makeLoopFs('ext4', GiB);
  t.teardown(() => ext4.cleanup());
  const pools = { fast: path.join(xfs.mountPoint, 'pool'), slow: path.join(ext4.mountPoint, 'pool') };
  for (const dir of Object.values(pools)) await mkdir(dir);
  await mkdir(TEST_ROOT, { recursive: true });
  const dir = path.join(xfs.mountPoint, 'agent');
  await mkdir(dir);
  const agent = await startAgent(t, { dir, pools: Object.entries(pools).map(([name, p]) => ({ name, path: p })), lockWaitMs: 150 });
  const objectFile = (pool: keyof typeof pools, name: string): string => path.join(pools[pool], 'objects', `${name}.raw`);

  /** Random data at each offset (1 MiB each), as a guest would write it. */
  async function write(file: string, offsets: number[]): Promise<void> {
    const handle = await open(file, 'r+');
    try {
      for (const offset of offsets) await handle.write(randomBytes(MiB), 0, MiB, offset);
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  /** Whether [offset, offset + length) of `file` reads as zeros. */
  async function zeros(file: string, offset: number, length: number): Promise<boolean> {
    const handle = await open(file, 'r');
    try {
      const buffer = Buffer.alloc(length);
      await handle.read(buffer, 0, length, offset);
      return buffer.every((byte) => byte === 0);
    } finally {
      await handle.close();
    }
  }

  const state = async (): Promise<unknown> => ({ fast: await poolEntries(pools.fast), slow: await poolEntries(pools.slow), catalog: readCatalog(agent.catalogPath) });

  for (const pool of ['fast', 'slow'] as const) {
    await t.test(`${pool} pool: the volume reads as the snapshot after a revert; the grown tail reads zeros; the snapshot stays`, async (t) => {
      const id = `vol-${pool}`;
      t.equal((await agent.request('PUT', `/v1/volumes/${id}`, { tenant: 'acme', pool, sizeBytes: 64 * MiB })).status, 201);
      await write(objectFile(pool, id), [0, 10 * MiB, 40 * MiB]);
      t.equal((await agent.request('PUT', `/v1/volumes/${id}/snapshots/${id}-s1?wait=true`)).status, 201);
      const snapFile = objectFile(pool, `${id}@${id}-s1`);
      const snapHash = await sha256(snapFile);
      // After the snapshot the volume is written over and grown, and its new tail written.
      await write(objectFile(pool, id), [0, 20 * MiB]);
      t.equal((await agent.request('POST', `/v1/volumes/${id}/resize`, { sizeBytes: 96 * MiB })).status, 200);
      await write(objectFile(pool, id), [80 * MiB]);
      t.not(await sha256(objectFile(pool, id), 64 * MiB), snapHash, 'the volume differs from its snapshot');
      const reverted = await agent.request('POST', `/v1/volumes/${id}/revert`, { snapshot: `${id}-s1` });
      t.equal(reverted.status, 200, reverted.text);
      t.match(reverted.body, { id, pool, tenant: 'acme', kind: 'volume', sizeBytes: 96 * MiB, state: 'available', readOnly: false });
      t.equal(await sha256(objectFile(pool, id), 64 * MiB), snapHash, "the first 64 MiB are the snapshot's bytes");
      t.ok(await zeros(objectFile(pool, id), 64 * MiB, 32 * MiB), 'the tail past the snapshot reads zeros');
      t.equal(await sha256(snapFile), snapHash, 'the snapshot is unchanged');
      t.same((await poolEntries(pools[pool])).filter((e) => e.startsWith(id)), [`${id}.raw`, `${id}@${id}-s1.raw`], 'no temporary');
      t.match(readCatalog(agent.catalogPath).volumes.find((v) => v.id === id), { state: 'available', pool, size_bytes: 96 * MiB });
      t.match(readCatalog(agent.catalogPath).snapshots.find((s) => s.id === `${id}-s1`), { volume_id: id, state: 'available' });
      if (pool === 'fast') {
        const handle = await open(objectFile(pool, id), 'r');
        const extents = await fiemapExtents(handle.fd, 96 * MiB).finally(() => handle.close());
        const { FIEMAP_EXTENT_SHARED } = native.fileConstants;
        t.ok(extents.length > 0 && extents.every((e) => (e.flags & FIEMAP_EXTENT_SHARED) !== 0), 'XFS: a reflink, every extent shared with the snapshot');
      } else {
        const handle = await open(objectFile(pool, id), 'r');
        const allocated = (await handle.stat()).blocks * 512;
        await handle.close();
        t.ok(allocated >= 3 * MiB && allocated < 3 * MiB + 2 * MiB, `ext4: a sparse copy, ${allocated} bytes allocated for 3 MiB of data`);
      }
    });
  }

  await t.test('refusals change nothing: exported, another volume\'s snapshot, an absent one, an Image-Volume, a missing field', async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/other', { tenant: 'acme', pool: 'fast', sizeBytes: 4 * MiB })).status, 201);
    t.equal((await agent.request('PUT', '/v1/volumes/other/snapshots/other-s1')).status, 201);
    t.equal((await agent.request('PUT', '/v1/volumes/img-src', { tenant: 'acme', pool: 'fast', sizeBytes: 4 * MiB })).status, 201);
    t.equal((await agent.request('PUT', '/v1/volumes/img-src/snapshots/img-s1')).status, 201);
    t.equal((await agent.request('PUT', '/v1/images/img1', { volume: 'img-src', mode: 'adopt', tenant: 'acme' })).status, 201);
    const exported = await agent.request('POST', '/v1/volumes/other/exports', { protocol: 'nbd', readOnly: true });
    t.equal(exported.status, 201);
    const volumeHash = await sha256(objectFile('fast', 'vol-fast'));
    for (const [title, url, body, status, code] of [
      ['another volume\'s snapshot', '/v1/volumes/vol-fast/revert', { snapshot: 'other-s1' }, 404, 'SNAPSHOT_NOT_FOUND'],
      ['an absent snapshot', '/v1/volumes/vol-fast/revert', { snapshot: 'nope' }, 404, 'SNAPSHOT_NOT_FOUND'],
      ['an absent volume', '/v1/volumes/absent/revert', { snapshot: 'other-s1' }, 404, 'VOLUME_NOT_FOUND'],
      ['an exported volume', '/v1/volumes/other/revert', { snapshot: 'other-s1' }, 409, 'VOLUME_BUSY'],
      ['an Image-Volume', '/v1/volumes/img-src/revert', { snapshot: 'img-s1' }, 409, 'VOLUME_IS_IMAGE'],
      ['another tenant\'s volume (scoped)', '/v1/volumes/vol-fast/revert?tenant=other', { snapshot: 'vol-fast-s1' }, 404, 'VOLUME_NOT_FOUND'],
      ['no snapshot named', '/v1/volumes/vol-fast/revert', {}, 400, 'BAD_REQUEST'],
    ] as const) {
      const before = await state();
      const reply = await agent.request('POST', url, body);
      t.equal(reply.status, status, `${title}: ${reply.text}`);
      t.equal(reply.body.error.code, code, title);
      t.same(await state(), before, `${title}: nothing changed`);
    }
    t.equal(await sha256(objectFile('fast', 'vol-fast')), volumeHash, 'the volume\'s bytes are as they were');
    t.equal((await agent.request('DELETE', `/v1/exports/${exported.body.id}`)).status, 204);
    t.equal((await agent.request('POST', '/v1/volumes/other/revert', { snapshot: 'other-s1' })).status, 200, 'unexported, it reverts');
  });
}
