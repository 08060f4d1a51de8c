// The file pool on real filesystems: an XFS pool (-m reflink=1, clones share
// blocks) and an ext4 pool (clones copy data extents). Probed capabilities,
// sparseness, content, growth, every refusal leaving nothing on disk,
// cancellation, a race to one name, capacity, open()'s checks. Needs root.
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';

import { fiemapExtents } from '../../src/clone/extents.js';
import { native } from '../../src/native/binding.js';
import { FilePool } from '../../src/pools/file-pool.js';
import { allocatedBytes, makeSparseFile, sha256, spreadLayout } from '../helpers/files.js';
import type { FsType } from '../helpers/loop-fs.js';
import { makeLoopFs } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const MiB = 1024 * 1024;
const BAD_NAMES = ['../x', 'a/b', '', '.hidden', 'x'.repeat(129)];

const EXPECTED: Record<'xfs' | 'ext4', { reflink: boolean; method: string }> = {
  xfs: { reflink: true, method: 'reflink' },
  ext4: { reflink: false, method: 'copy_file_range' },
};

async function poolOn(t: Test, fsType: FsType): Promise<{ pool: FilePool; objects: string; root: string }> {
  const fs = await makeLoopFs(fsType, 512 * MiB);
  const root = path.join(fs.mountPoint, 'pool');
  const pool = new FilePool({ name: `${fsType}-pool`, path: root });
  t.teardown(async () => {
    await pool.close(); // its directory handle would keep the filesystem busy
    await fs.cleanup();
  });
  await mkdir(root);
  await pool.open();
  return { pool, objects: path.join(root, 'objects'), root };
}

/** Zero bytes of file in [from, to): read back and compared, small ranges only. */
async function isZeroRange(file: string, from: number, to: number): Promise<boolean> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(to - from);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, from);
    return bytesRead === buffer.length && buffer.every((b) => b === 0);
  } finally {
    await handle.close();
  }
}

if (!skipUnlessRoot(t)) {
  for (const fsType of ['xfs', 'ext4'] as const) {
    const expected = EXPECTED[fsType];

    t.test(`${fsType} pool`, async (t) => {
      const { pool, objects, root } = await poolOn(t, fsType);
      const entries = async (): Promise<string[]> => (await readdir(objects)).sort();

      t.test(`capabilities probed: reflink ${expected.reflink}; no probe left behind`, async (t) => {
        t.same(pool.capabilities(), { reflink: expected.reflink, constantTimeClone: expected.reflink, sizeAlignmentBytes: 1 });
        t.same(await readdir(root), ['objects']);
        t.same(await entries(), []);
      });

      t.test('create makes a sparse file of the exact size', async (t) => {
        await pool.create('empty', 256 * MiB);
        const file = pool.objectPath('empty');
        t.equal((await stat(file)).size, 256 * MiB);
        t.ok((await allocatedBytes(file)) <= 64 * 1024, `allocated ${await allocatedBytes(file)}`);
        t.same(await pool.stat('empty'), { sizeBytes: 256 * MiB, allocatedBytes: await allocatedBytes(file), readOnly: false });
        await pool.remove('empty');
        t.same(await entries(), []);
      });

      t.test(`clone keeps content and uses ${expected.method}; larger sizeBytes grows with zeros`, async (t) => {
        const layout = spreadLayout(64 * MiB, 8, MiB);
        await makeSparseFile(pool.objectPath('image'), layout);
        const digest = await sha256(pool.objectPath('image'));
        const plain = await pool.clone('image', 'copy');
        t.same(plain, { method: expected.method, bytesCopied: expected.reflink ? 0 : 8 * MiB });
        t.equal(await sha256(pool.objectPath('copy')), digest, 'same bytes');
        if (expected.reflink) {
          const handle = await open(pool.objectPath('copy'), 'r');
          const map = await fiemapExtents(handle.fd, 64 * MiB).finally(() => handle.close());
          t.ok(map.length >= 8 && map.every((e) => (e.flags & native.fileConstants.FIEMAP_EXTENT_SHARED) !== 0),
            'every extent shared with the source');
        }
        const grown = await pool.clone('image', 'grown', { sizeBytes: 96 * MiB, readOnly: true });
        t.equal(grown.method, expected.method);
        t.same(await pool.stat('grown'), {
          sizeBytes: 96 * MiB, allocatedBytes: await allocatedBytes(pool.objectPath('grown')), readOnly: true,
        });
        t.equal(await sha256(pool.objectPath('grown'), 64 * MiB), digest, 'source range equal');
        t.ok(await isZeroRange(pool.objectPath('grown'), 64 * MiB - 4096, 64 * MiB + 4 * MiB), 'zeros after');
        t.equal(await sha256(pool.objectPath('image')), digest, 'source intact');
        t.same(await entries(), ['copy.raw', 'grown.raw', 'image.raw'], 'no temporaries');
        t.same(await pool.list(), ['copy', 'grown', 'image']);
      });

      t.test('refused clones leave nothing: smaller EINVAL, absent source ENOENT, existing target EEXIST', async (t) => {
        await t.rejects(pool.clone('image', 'small', { sizeBytes: 64 * MiB - 1 }), { code: 'EINVAL', errno: -22 });
        await t.rejects(pool.clone('absent', 'other'), { code: 'ENOENT', path: pool.objectPath('absent') });
        const before = await sha256(pool.objectPath('copy'));
        await pool.create('blank', MiB);
        await t.rejects(pool.clone('image', 'blank'), { code: 'EEXIST', path: pool.objectPath('blank') });
        t.equal((await stat(pool.objectPath('blank'))).size, MiB, 'existing object untouched');
        t.equal(await sha256(pool.objectPath('copy')), before);
        t.same(await entries(), ['blank.raw', 'copy.raw', 'grown.raw', 'image.raw']);
        t.same(await pool.listTemporaries(), []);
      });

      t.test('resize grows, refuses to shrink; read-only round trip; remove idempotent', async (t) => {
        await pool.resize('blank', 8 * MiB);
        t.equal((await stat(pool.objectPath('blank'))).size, 8 * MiB);
        await t.rejects(pool.resize('blank', 4 * MiB), { code: 'EINVAL' });
        t.equal((await stat(pool.objectPath('blank'))).size, 8 * MiB);
        await pool.setReadOnly('blank', true);
        t.equal((await stat(pool.objectPath('blank'))).mode & 0o777, 0o444);
        t.equal((await pool.stat('blank'))?.readOnly, true);
        await pool.setReadOnly('blank', false);
        t.equal((await pool.stat('blank'))?.readOnly, false);
        await pool.remove('blank');
        await pool.remove('blank');
        t.equal(await pool.stat('blank'), undefined);
        t.notOk(existsSync(pool.objectPath('blank')));
      });

      t.test('list excludes temporaries, which are listed and removed apart', async (t) => {
        const leftover = '.tmp-lost-00112233aabb.raw';
        await writeFile(path.join(objects, leftover), 'partial');
        t.same(await pool.list(), ['copy', 'grown', 'image']);
        t.same(await pool.listTemporaries(), [leftover]);
        await pool.removeTemporary(leftover);
        t.same(await pool.listTemporaries(), []);
      });

      t.test('two concurrent clones to one target: one wins, one EEXIST, no temporaries', async (t) => {
        const results = await Promise.allSettled([pool.clone('image', 'race'), pool.clone('image', 'race')]);
        const won = results.filter((r) => r.status === 'fulfilled');
        const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
        t.equal(won.length, 1, 'exactly one wins');
        t.equal(lost.length, 1);
        t.equal((lost[0]?.reason as NodeJS.ErrnoException).code, 'EEXIST');
        t.equal(await sha256(pool.objectPath('race')), await sha256(pool.objectPath('image')));
        t.same(await pool.listTemporaries(), []);
        await pool.remove('race');
      });

      t.test('capacity is sane', async (t) => {
        const c = await pool.capacity();
        t.ok(c.totalBytes > 256 * MiB && c.totalBytes <= 512 * MiB, `total ${c.totalBytes}`);
        t.ok(c.freeBytes > 0 && c.freeBytes <= c.totalBytes, `free ${c.freeBytes}`);
        t.ok(c.usedBytes > 0, `used ${c.usedBytes}`);
        // free is what an unprivileged writer gets (f_bavail): used + free falls short of total
        // by exactly the blocks reserved for root (ext4: 5% by default, ~7% on a small filesystem).
        const s = await native.statfs(objects);
        const gap = c.totalBytes - c.usedBytes - c.freeBytes;
        t.equal(gap, (s.bfree - s.bavail) * s.frsize, 'the gap is the root reserve');
        t.ok(gap >= 0 && gap <= (fsType === 'xfs' ? 0.01 : 0.1) * c.totalBytes, `gap ${gap} of ${c.totalBytes}`);
      });

      t.test('bad names are EINVAL and create nothing', async (t) => {
        const before = await entries();
        for (const name of BAD_NAMES) {
          await t.rejects(pool.create(name, MiB), { code: 'EINVAL' }, `create ${JSON.stringify(name)}`);
          await t.rejects(pool.clone('image', name), { code: 'EINVAL' }, `clone to ${JSON.stringify(name)}`);
        }
        t.same(await entries(), before);
        t.same(await readdir(root), ['objects']);
      });

      if (fsType === 'ext4') {
        t.test('an aborted clone leaves no temporary and no object', async (t) => {
          await makeSparseFile(pool.objectPath('big'), { sizeBytes: 128 * MiB, data: [[0, 96 * MiB]] });
          const controller = new AbortController();
          let calls = 0;
          await t.rejects(pool.clone('big', 'cancelled', {
            signal: controller.signal,
            onProgress: () => {
              calls += 1;
              controller.abort(new Error('operator cancelled'));
            },
          }), { name: 'AbortError', code: 'ABORT_ERR', cause: { message: 'operator cancelled' } });
          t.equal(calls, 1, 'no step after the abort');
          t.equal(await pool.stat('cancelled'), undefined);
          t.same(await pool.listTemporaries(), []);
          t.same(await entries(), ['big.raw', 'copy.raw', 'grown.raw', 'image.raw']);
        });
      }
    });
  }

  t.test('open fails fast: missing path ENOENT, a file ENOTDIR, both naming the path', async (t) => {
    const fs = await makeLoopFs('ext4', 64 * MiB);
    t.teardown(() => fs.cleanup());
    const missing = path.join(fs.mountPoint, 'missing');
    await t.rejects(new FilePool({ name: 'p', path: missing }).open(),
      { code: 'ENOENT', path: missing, message: `ENOENT: no such file or directory, open '${missing}'` });
    t.notOk(existsSync(missing));
    const file = path.join(fs.mountPoint, 'file');
    await writeFile(file, '');
    await t.rejects(new FilePool({ name: 'p', path: file }).open(),
      { code: 'ENOTDIR', path: file, message: `ENOTDIR: not a directory, open '${file}'` });
  });
}
