// The file pool on the temp filesystem: names, the commit protocol (no
// replace, no temporaries), sizes, read-only, list and temporaries, open()'s
// fail-fast checks. Real filesystems and clone methods: test/privileged.
import { existsSync } from 'node:fs';
import { readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';

import { FilePool } from '../../src/pools/file-pool.js';
import type { FilePoolConfig } from '../../src/pools/index.js';
import { createPool } from '../../src/pools/index.js';
import { documentedCloneMethod } from '../helpers/clone-method.js';
import { tempDir } from '../helpers/temp-dir.js';

const MiB = 1024 * 1024;
const BAD_NAMES = ['../x', 'a/b', '', '.hidden', 'x'.repeat(129), 'a..b', '-x', 'a b'];

async function openPool(t: Test): Promise<{ pool: FilePool; dir: string; objects: string }> {
  const dir = await tempDir(t, 'volagent-file-pool-');
  const pool = new FilePool({ name: 'unit', path: dir });
  t.teardown(() => pool.close());
  await pool.open();
  return { pool, dir, objects: path.join(dir, 'objects') };
}

t.test('open makes objects/, probes once and leaves no probe behind', async (t) => {
  const { pool, dir, objects } = await openPool(t);
  t.same(await readdir(dir), ['objects']);
  t.same(await readdir(objects), []);
  const caps = pool.capabilities();
  t.equal(caps.reflink, caps.constantTimeClone);
  t.equal(pool.backend, 'file');
  t.equal(pool.name, 'unit');
});

t.test('capabilities before open is a programming error', async (t) => {
  const pool = new FilePool({ name: 'p', path: '/nonexistent' });
  t.throws(() => pool.capabilities(), /before open/);
});

t.test('open on a missing path is ENOENT naming it; on a file ENOTDIR', async (t) => {
  const dir = await tempDir(t);
  const missing = path.join(dir, 'missing');
  await t.rejects(new FilePool({ name: 'p', path: missing }).open(), { code: 'ENOENT', path: missing, message: new RegExp(missing) });
  t.notOk(existsSync(missing), 'nothing created');
  const file = path.join(dir, 'file');
  await writeFile(file, 'x');
  await t.rejects(new FilePool({ name: 'p', path: file }).open(), { code: 'ENOTDIR', path: file });
});

t.test('create: sparse file of the exact size, 0644, listed; EEXIST keeps the original', async (t) => {
  const { pool, objects } = await openPool(t);
  await pool.create('vol-1', 64 * MiB);
  const file = path.join(objects, 'vol-1.raw');
  t.equal(pool.objectPath('vol-1'), file);
  const s = await stat(file);
  t.equal(s.size, 64 * MiB);
  t.equal(s.mode & 0o777, 0o644);
  t.equal(s.nlink, 1, 'the temporary name is gone');
  t.same(await pool.stat('vol-1'), { sizeBytes: 64 * MiB, allocatedBytes: 0, readOnly: false });
  await t.rejects(pool.create('vol-1', MiB), { code: 'EEXIST', path: file });
  t.equal((await stat(file)).size, 64 * MiB, 'existing untouched');
  t.same(await readdir(objects), ['vol-1.raw'], 'no temporary left');
  t.same(await pool.list(), ['vol-1']);
});

t.test('bad names and sizes are EINVAL and create nothing', async (t) => {
  const { pool, objects } = await openPool(t);
  await pool.create('ok', MiB);
  for (const name of BAD_NAMES) {
    await t.rejects(pool.create(name, MiB), { code: 'EINVAL', errno: -22 }, `create ${JSON.stringify(name)}`);
    await t.rejects(pool.clone('ok', name), { code: 'EINVAL' }, `clone to ${JSON.stringify(name)}`);
    await t.rejects(pool.clone(name, 'fresh'), { code: 'EINVAL' }, `clone from ${JSON.stringify(name)}`);
    await t.rejects(pool.resize(name, MiB), { code: 'EINVAL' });
    await t.rejects(pool.remove(name), { code: 'EINVAL' });
    await t.rejects(pool.stat(name), { code: 'EINVAL' });
    t.throws(() => pool.objectPath(name), { code: 'EINVAL' });
  }
  for (const size of [-1, 1.5, Number.NaN, 2 ** 60]) {
    await t.rejects(pool.create('sized', size), { code: 'EINVAL' }, `size ${size}`);
  }
  t.same(await readdir(objects), ['ok.raw']);
});

t.test('a name whose file would exceed NAME_MAX is ENAMETOOLONG', async (t) => {
  const { pool, objects } = await openPool(t);
  const name = `${'a'.repeat(128)}@${'b'.repeat(128)}`;
  await t.rejects(pool.create(name, MiB), { code: 'ENAMETOOLONG' });
  await pool.create(`${'a'.repeat(128)}@${'b'.repeat(122)}`, MiB); // 251 + ".raw" = 255
  t.equal((await readdir(objects)).length, 1);
});

t.test('resize grows, equal is a no-op, smaller is EINVAL, read-only is EPERM, absent ENOENT', async (t) => {
  const { pool } = await openPool(t);
  await pool.create('v', 4 * MiB);
  await pool.resize('v', 8 * MiB);
  t.equal((await pool.stat('v'))?.sizeBytes, 8 * MiB);
  await pool.resize('v', 8 * MiB);
  await t.rejects(pool.resize('v', 4 * MiB), { code: 'EINVAL' });
  t.equal((await pool.stat('v'))?.sizeBytes, 8 * MiB);
  await pool.setReadOnly('v', true);
  await t.rejects(pool.resize('v', 16 * MiB), { code: 'EPERM' });
  await t.rejects(pool.resize('absent', MiB), { code: 'ENOENT' });
});

t.test('read-only round trip is the file mode', async (t) => {
  const { pool } = await openPool(t);
  await pool.create('v', MiB);
  await pool.setReadOnly('v', true);
  t.equal((await stat(pool.objectPath('v'))).mode & 0o777, 0o444);
  t.equal((await pool.stat('v'))?.readOnly, true);
  await pool.setReadOnly('v', false);
  t.equal((await stat(pool.objectPath('v'))).mode & 0o777, 0o644);
  t.equal((await pool.stat('v'))?.readOnly, false);
  await t.rejects(pool.setReadOnly('absent', true), { code: 'ENOENT' });
});

t.test('remove is idempotent; stat of an absent object is undefined', async (t) => {
  const { pool, objects } = await openPool(t);
  await pool.create('v', MiB);
  await pool.remove('v');
  await pool.remove('v');
  t.equal(await pool.stat('v'), undefined);
  t.same(await readdir(objects), []);
});

t.test('list shows complete objects only; temporaries are listed and removed apart', async (t) => {
  const { pool, objects } = await openPool(t);
  await pool.create('b', MiB);
  await pool.create('a@snap-1', MiB);
  const leftover = '.tmp-c-0123456789ab.raw';
  await writeFile(path.join(objects, leftover), '');
  await writeFile(path.join(objects, 'notes.txt'), '');
  t.same(await pool.list(), ['a@snap-1', 'b']);
  t.same(await pool.listTemporaries(), [leftover]);
  await t.rejects(pool.removeTemporary('b.raw'), { code: 'EINVAL' }, 'an object is not a temporary');
  await t.rejects(pool.removeTemporary('../x'), { code: 'EINVAL' });
  await pool.removeTemporary(leftover);
  await pool.removeTemporary(leftover);
  t.same(await pool.listTemporaries(), []);
  t.same(await pool.list(), ['a@snap-1', 'b']);
});

t.test('clone: content kept, grows, read-only; source absent ENOENT; smaller EINVAL; nothing left on failure', async (t) => {
  const { pool, objects } = await openPool(t);
  await pool.create('src', MiB);
  const data = Buffer.alloc(4096, 7);
  await writeFile(pool.objectPath('src'), data, { flag: 'r+' });
  const outcome = await pool.clone('src', 'dst', { sizeBytes: 2 * MiB, readOnly: true });
  t.equal(outcome.method, await documentedCloneMethod(objects), 'the method documented for the filesystem of the pool');
  t.same(await pool.stat('dst'), { sizeBytes: 2 * MiB, allocatedBytes: (await stat(pool.objectPath('dst'))).blocks * 512, readOnly: true });
  await t.rejects(pool.clone('absent', 'x'), { code: 'ENOENT', path: pool.objectPath('absent') });
  await t.rejects(pool.clone('src', 'small', { sizeBytes: MiB - 1 }), { code: 'EINVAL' });
  await t.rejects(pool.clone('src', 'dst'), { code: 'EEXIST', path: pool.objectPath('dst') });
  const aborted = new AbortController();
  aborted.abort();
  await t.rejects(pool.clone('src', 'never', { signal: aborted.signal }), { code: 'ABORT_ERR' });
  t.same((await readdir(objects)).sort(), ['dst.raw', 'src.raw']);
});

t.test('where RENAME_NOREPLACE is missing, publishing by link + unlink keeps the same guarantees', async (t) => {
  const { pool, objects } = await openPool(t);
  // The temp filesystem supports the flag; the fallback is forced to exercise it.
  (pool as unknown as { renameNoReplace: boolean }).renameNoReplace = false;
  await pool.create('src', MiB);
  await pool.clone('src', 'dst', { readOnly: true });
  t.same(await pool.stat('dst'), { sizeBytes: MiB, allocatedBytes: (await stat(pool.objectPath('dst'))).blocks * 512, readOnly: true });
  await t.rejects(pool.clone('src', 'dst'), { code: 'EEXIST', path: pool.objectPath('dst') });
  await t.rejects(pool.create('dst', MiB), { code: 'EEXIST', path: pool.objectPath('dst') });
  t.same((await readdir(objects)).sort(), ['dst.raw', 'src.raw'], 'no temporaries, one name per object');
  t.equal((await stat(pool.objectPath('dst'))).nlink, 1);
});

t.test('createPool makes a file pool', async (t) => {
  const dir = await tempDir(t);
  const config: FilePoolConfig = { name: 'default', backend: 'file', path: dir };
  const pool = createPool(config);
  t.ok(pool instanceof FilePool);
  t.teardown(() => pool.close());
  await pool.open();
  t.same(await pool.list(), []);
});
