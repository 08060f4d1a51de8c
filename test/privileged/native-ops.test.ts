// The addon's kernel operations on real filesystems and a loop device: the
// exact results and errno codes the clone engine's policy relies on.
import { randomBytes } from 'node:crypto';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { native } from '../../src/native/binding.js';
import { allocatedBytes } from '../helpers/files.js';
import type { LoopFs } from '../helpers/loop-fs.js';
import { makeLoopDevice, makeLoopFs } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const MiB = 1024 * 1024;
const MAGIC = { xfs: 0x58465342, btrfs: 0x9123683e, ext4: 0xef53 } as const;

if (!skipUnlessRoot(t)) {
  const filesystems: Partial<Record<LoopFs['fsType'], LoopFs>> = {};
  t.before(async () => {
    for (const fsType of ['xfs', 'btrfs', 'ext4'] as const) filesystems[fsType] = await makeLoopFs(fsType, 512 * MiB);
  });
  t.teardown(async () => {
    for (const fs of Object.values(filesystems)) await fs.cleanup();
  });
  const fs = (name: LoopFs['fsType']): LoopFs => filesystems[name]!;

  t.test('statfs reports each filesystem magic', async (t) => {
    for (const name of ['xfs', 'btrfs', 'ext4'] as const) t.equal((await native.statfs(fs(name).mountPoint)).type, MAGIC[name], name);
  });

  t.test('FICLONERANGE shares an aligned range and rejects an unaligned one with EINVAL', async (t) => {
    const src = path.join(fs('xfs').mountPoint, 'range-src');
    const dst = path.join(fs('xfs').mountPoint, 'range-dst');
    const srcBytes = randomBytes(8 * MiB);
    const dstBytes = randomBytes(8 * MiB);
    await writeFile(src, srcBytes);
    await writeFile(dst, dstBytes);
    const s = await open(src, 'r');
    const d = await open(dst, 'r+');
    t.teardown(async () => { await s.close(); await d.close(); });
    await native.ficloneRange(d.fd, s.fd, MiB, 2 * MiB, 4 * MiB, src, dst);
    const after = await readFile(dst);
    t.ok(after.subarray(4 * MiB, 6 * MiB).equals(srcBytes.subarray(MiB, 3 * MiB)), 'range holds the source bytes');
    t.ok(after.subarray(0, 4 * MiB).equals(dstBytes.subarray(0, 4 * MiB)), 'before the range unchanged');
    t.ok(after.subarray(6 * MiB).equals(dstBytes.subarray(6 * MiB)), 'after the range unchanged');
    const shared = (await native.fiemap(d.fd, 4 * MiB, 2 * MiB, 16, true, dst))
      .every((e) => (e.flags & native.fileConstants.FIEMAP_EXTENT_SHARED) !== 0);
    t.ok(shared, 'the range is shared');
    await t.rejects(native.ficloneRange(d.fd, s.fd, 100, 4096, 0, src, dst),
      { code: 'EINVAL', syscall: 'ficlonerange', path: src, dest: dst });
  });

  t.test('reflinkNewFile: a new file sharing every block, exact mode, grown, fsync; a failure leaves no file', async (t) => {
    const dir = fs('xfs').mountPoint;
    const src = path.join(dir, 'rn-src');
    const bytes = randomBytes(3 * MiB);
    await writeFile(src, bytes);
    const dst = path.join(dir, 'rn-dst');
    const umask = process.umask(0o077); // the mode is exact whatever the umask
    t.teardown(() => { process.umask(umask); });
    t.equal(await native.reflinkNewFile(src, dst, 0o644, 0, true), 3 * MiB, 'resolves its size');
    t.ok((await readFile(dst)).equals(bytes), 'it holds the source bytes');
    t.equal((await stat(dst)).mode & 0o7777, 0o644, 'with the exact mode');
    const d = await open(dst, 'r');
    const extents = await native.fiemap(d.fd, 0, 3 * MiB, 64, true, dst);
    await d.close();
    t.ok(extents.length > 0 && extents.every((e) => (e.flags & native.fileConstants.FIEMAP_EXTENT_SHARED) !== 0), 'every extent shared');

    const grown = path.join(dir, 'rn-grown');
    t.equal(await native.reflinkNewFile(src, grown, 0o444, 8 * MiB, false), 8 * MiB, 'grown to growTo');
    const grownBytes = await readFile(grown);
    t.ok(grownBytes.subarray(0, 3 * MiB).equals(bytes) && grownBytes.subarray(3 * MiB).every((b) => b === 0), 'the source, then zeros');
    t.equal((await stat(grown)).mode & 0o7777, 0o444);

    const before = await readFile(dst);
    await t.rejects(native.reflinkNewFile(src, dst, 0o644, 0, true), { code: 'EEXIST', syscall: 'open', path: dst }, 'an existing destination');
    t.ok((await readFile(dst)).equals(before), 'is left as it was');
    const small = path.join(dir, 'rn-small');
    await t.rejects(native.reflinkNewFile(src, small, 0o644, MiB, true), { code: 'EINVAL', syscall: 'ftruncate', path: small }, 'growTo below the source');
    await t.rejects(stat(small), { code: 'ENOENT' }, 'leaves no file');
    const ext4Dst = path.join(fs('ext4').mountPoint, 'rn-across');
    await t.rejects(native.reflinkNewFile(src, ext4Dst, 0o644, 0, true), { code: 'EXDEV', syscall: 'ficlone', path: src, dest: ext4Dst }, 'another filesystem');
    await t.rejects(stat(ext4Dst), { code: 'ENOENT' }, 'leaves no file');
    await t.rejects(native.reflinkNewFile(path.join(dir, 'absent'), path.join(dir, 'rn-x'), 0o644, 0, true), { code: 'ENOENT', syscall: 'open' });
    await t.rejects(stat(path.join(dir, 'rn-x')), { code: 'ENOENT' }, 'an absent source creates nothing');
    await t.rejects(native.reflinkNewFile(src, path.join(dir, 'rn-y'), 0o10000, 0, true), { name: 'TypeError', message: /mode/ }, 'a mode outside 07777');
  });

  // libuv, and so Node, name errno 95 (EOPNOTSUPP) ENOTSUP.
  t.test('FICLONE answers ENOTSUP on ext4 and EXDEV across filesystems', async (t) => {
    const ext4Src = path.join(fs('ext4').mountPoint, 'f');
    await writeFile(ext4Src, 'x'.repeat(4096));
    const a = await open(ext4Src, 'r');
    const b = await open(path.join(fs('ext4').mountPoint, 'g'), 'wx');
    const c = await open(path.join(fs('xfs').mountPoint, 'h'), 'wx');
    t.teardown(async () => { await a.close(); await b.close(); await c.close(); });
    await t.rejects(native.ficlone(b.fd, a.fd), { code: 'ENOTSUP', errno: -95, syscall: 'ficlone', message: 'ENOTSUP: operation not supported, ficlone' });
    await t.rejects(native.ficlone(c.fd, a.fd), { code: 'EXDEV', syscall: 'ficlone' });
    await t.rejects(native.copyFileRange(a.fd, 0, c.fd, 0, 4096), { code: 'EXDEV', syscall: 'copy_file_range' });
  });

  t.test('copy_file_range stops at the source end and reports the bytes copied', async (t) => {
    const src = path.join(fs('ext4').mountPoint, 'short');
    await writeFile(src, Buffer.alloc(10_000, 7));
    const a = await open(src, 'r');
    const b = await open(path.join(fs('ext4').mountPoint, 'short-copy'), 'wx');
    t.teardown(async () => { await a.close(); await b.close(); });
    t.equal(await native.copyFileRange(a.fd, 4_000, b.fd, 0, 1_000_000), 6_000);
  });

  t.test('fallocate punches holes and zeroes ranges, keeping the size', async (t) => {
    const file = path.join(fs('ext4').mountPoint, 'falloc');
    await writeFile(file, randomBytes(8 * MiB));
    const h = await open(file, 'r+');
    t.teardown(() => h.close());
    await native.fdatasync(h.fd, file);
    const { FALLOC_FL_PUNCH_HOLE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE } = native.fileConstants;
    const before = await allocatedBytes(file);
    await native.fallocate(h.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB, 2 * MiB, file);
    t.equal(before - (await allocatedBytes(file)), 2 * MiB, 'two MiB deallocated');
    await native.fallocate(h.fd, FALLOC_FL_ZERO_RANGE, 5 * MiB, MiB, file);
    await native.fsync(h.fd, file);
    const after = await readFile(file);
    t.equal((await stat(file)).size, 8 * MiB, 'size kept');
    t.ok(after.subarray(MiB, 3 * MiB).every((b) => b === 0), 'punched range reads zero');
    t.ok(after.subarray(5 * MiB, 6 * MiB).every((b) => b === 0), 'zeroed range reads zero');
    await t.rejects(native.fallocate(h.fd, FALLOC_FL_PUNCH_HOLE, 0, MiB, file), { code: 'ENOTSUP', syscall: 'fallocate' },
      'PUNCH_HOLE without KEEP_SIZE is refused by the kernel');
  });

  t.test('block ioctls on a loop device: size, sector size, zero-out, discard', async (t) => {
    const device = await makeLoopDevice(32 * MiB);
    t.teardown(() => device.detach());
    await writeFile(device.device, Buffer.alloc(32 * MiB, 0xee));
    const h = await open(device.device, 'r+');
    t.teardown(() => h.close());
    t.equal(await native.blkGetSize64(h.fd, device.device), 32 * MiB);
    t.equal(await native.blkSszGet(h.fd, device.device), 512);
    await native.blkZeroOut(h.fd, MiB, MiB, device.device);
    const buf = Buffer.alloc(3 * MiB);
    await h.read(buf, 0, 3 * MiB, 0);
    t.ok(buf.subarray(0, MiB).every((b) => b === 0xee), 'before untouched');
    t.ok(buf.subarray(MiB, 2 * MiB).every((b) => b === 0), 'zeroed');
    t.ok(buf.subarray(2 * MiB).every((b) => b === 0xee), 'after untouched');
    await native.fsync(h.fd, device.device);
    await native.blkDiscard(h.fd, 8 * MiB, 8 * MiB, device.device);
    await native.fsync(h.fd, device.device);
    // The loop driver turns a discard into FALLOC_FL_PUNCH_HOLE on its backing file.
    const backing = await open(device.image, 'r');
    const { extents } = await native.dataExtents(backing.fd, 0, 32 * MiB, 64, device.image);
    await backing.close();
    t.notOk(extents.some(([offset, length]) => offset < 16 * MiB && offset + length > 8 * MiB),
      `no data left in the discarded range of the backing file: ${JSON.stringify(extents)}`);
    await t.rejects(native.blkZeroOut(h.fd, 100, 512, device.device), { code: 'EINVAL', syscall: 'blkzeroout', path: device.device });
    const regular = await open(path.join(fs('ext4').mountPoint, 'short'), 'r');
    t.teardown(() => regular.close());
    await t.rejects(native.blkGetSize64(regular.fd), { code: 'ENOTTY', syscall: 'blkgetsize64' }, 'a regular file is not a block device');
  });
}
