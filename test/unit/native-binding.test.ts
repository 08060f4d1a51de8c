import { existsSync, readFileSync } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';

import { native } from '../../src/native/binding.js';
import { isSystemError, systemError } from '../../src/native/system-error.js';
import { tempDir } from '../helpers/temp-dir.js';

t.test('a failed kernel call rejects with a Node-shaped error carrying the caller stack', async (t) => {
  const failure = await native.fsync(987654, '/some/label').catch((e: unknown) => e);
  t.ok(isSystemError(failure, 'EBADF'), 'code EBADF');
  const e = failure as Error & Record<string, unknown>;
  t.equal(e.errno, -9);
  t.equal(e.syscall, 'fsync');
  t.equal(e.path, '/some/label');
  t.equal(e.message, "EBADF: bad file descriptor, fsync '/some/label'");
  t.match(e.stack, /native-binding\.test\.[jt]s:\d+/, 'stack points at the JavaScript caller');
});

t.test('statfs of an absent path is ENOENT with the path', async (t) => {
  await t.rejects(native.statfs('/nonexistent/volagent'), {
    code: 'ENOENT', errno: -2, syscall: 'statfs', path: '/nonexistent/volagent',
    message: "ENOENT: no such file or directory, statfs '/nonexistent/volagent'",
  });
});

t.test('bad arguments reject with a TypeError before reaching the kernel', async (t) => {
  await t.rejects(native.fsync(-1), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
  await t.rejects(native.copyFileRange(0, 1.5, 1, 0, 10), { name: 'TypeError', message: /"srcOffset" argument is out of range/ });
  await t.rejects(native.statfs('a\0b'), { name: 'TypeError', message: /must not contain NUL/ });
  await t.rejects(native.fallocate(0, 0, 0, 0), { name: 'TypeError', message: /"length" argument is out of range/ });
  await t.rejects(native.dataExtents(0, 0, 10, 0), { name: 'TypeError', message: /"maxExtents"/ });
});

t.test('two-file errors name both paths', async (t) => {
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'a'), 'data');
  const a = await open(path.join(dir, 'a'), 'r');
  t.teardown(() => a.close());
  // The destination is open read-only: the kernel refuses with EBADF.
  await t.rejects(native.copyFileRange(a.fd, 0, a.fd, 100, 4, 'a', 'b'), {
    code: 'EBADF', syscall: 'copy_file_range', path: 'a', dest: 'b',
    message: "EBADF: bad file descriptor, copy_file_range 'a' -> 'b'",
  });
});

t.test('statfs reports the filesystem type and sizes', async (t) => {
  const s = await native.statfs(tmpdir());
  t.ok(s.type > 0);
  t.ok(s.bsize >= 512);
  t.ok(s.blocks >= s.bfree && s.bfree >= s.bavail);
});

t.test('TypeScript-made system errors have the same shape', async (t) => {
  const e = systemError('EISDIR', 'open', '/x');
  t.equal(e.message, "EISDIR: illegal operation on a directory, open '/x'");
  t.equal(e.errno, -21);
  t.ok(isSystemError(e, 'EISDIR'));
  t.notOk(isSystemError(new Error('EISDIR: text alone is not enough')));
});

t.test('renameNoReplace renames, and is EEXIST without touching either file when the target exists', async (t) => {
  const dir = await tempDir(t);
  const [a, b, c] = ['a', 'b', 'c'].map((n) => path.join(dir, n)) as [string, string, string];
  await writeFile(a, 'first');
  await writeFile(b, 'second');
  await native.renameNoReplace(a, c);
  t.equal(await readFile(c, 'utf8'), 'first');
  t.notOk(existsSync(a), 'the old name is gone');
  await t.rejects(native.renameNoReplace(b, c), { code: 'EEXIST', syscall: 'rename', path: b, dest: c });
  t.equal(await readFile(b, 'utf8'), 'second', 'the source keeps its name and data');
  t.equal(await readFile(c, 'utf8'), 'first', 'the target is not replaced');
  await t.rejects(native.renameNoReplace(a, path.join(dir, 'd')), { code: 'ENOENT', path: a });
});

t.test('writeData writes at the offset and skips all-zero blocks; a bad fd is EBADF with the path', async (t) => {
  const dir = await tempDir(t, 'volagent-write-data-');
  const file = path.join(dir, 'f');
  const handle = await open(file, 'w+');
  try {
    const data = Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(8192, 0), Buffer.alloc(100, 2)]);
    t.equal(await native.writeData(handle.fd, data, 4096, 4096, true, file), 4096 + 100, 'the zero blocks were not written');
    t.equal(await native.writeData(handle.fd, Buffer.alloc(4096, 0), 0, 0, false, file), 4096, 'size 0 writes everything');
    await handle.truncate(4096 + data.length);
    t.same(await readFile(file), Buffer.concat([Buffer.alloc(4096, 0), data]), 'reads back as written, holes as zeroes');
  } finally {
    await handle.close();
  }
  await t.rejects(native.writeData(9999, Buffer.alloc(1), 0, 0, false, file), { code: 'EBADF', syscall: 'write', path: file });
  await t.rejects(native.writeData(1, 'text' as unknown as Buffer, 0, 0, false), { name: 'TypeError', message: /"data" argument must be a Buffer/ });
});

t.test('preadAligned reads through O_DIRECT into aligned memory; short only at the end; bounded length', async (t) => {
  const dir = await tempDir(t, 'volagent-pread-aligned-');
  const file = path.join(dir, 'f');
  const data = Buffer.concat([Buffer.alloc(4096, 7), Buffer.alloc(4096, 9)]);
  await writeFile(file, data);
  const { constants } = await import('node:fs');
  const handle = await open(file, constants.O_RDONLY | constants.O_DIRECT).catch(() => open(file, 'r'));
  try {
    t.same(await native.preadAligned(handle.fd, 4096, 4096, file), Buffer.alloc(4096, 9), 'the second block');
    t.same(await native.preadAligned(handle.fd, 0, 8192, file), data);
    t.equal((await native.preadAligned(handle.fd, 8192, 4096, file)).length, 0, 'at the end: no bytes');
    await t.rejects(native.preadAligned(handle.fd, 0, 2 * 1024 * 1024), { name: 'TypeError', message: /"length" argument is out of range/ });
  } finally {
    await handle.close();
  }
  await t.rejects(native.preadAligned(9999, 0, 4096, file), { code: 'EBADF', syscall: 'pread', path: file });
});

t.test('alignedBuffer: writable memory of the asked length, usable for O_DIRECT reads; bounded length', async (t) => {
  const buffer = native.alignedBuffer(8192);
  t.equal(buffer.length, 8192);
  t.equal(buffer.byteOffset, 0);
  buffer.fill(0xab);
  t.equal(buffer[8191], 0xab);
  const dir = await tempDir(t, 'volagent-aligned-');
  const file = path.join(dir, 'f');
  await writeFile(file, Buffer.alloc(8192, 5));
  const { constants } = await import('node:fs');
  const direct = await open(file, constants.O_RDONLY | constants.O_DIRECT).catch(() => undefined);
  if (direct) {
    try {
      // O_DIRECT refuses (EINVAL) a buffer that is not aligned; this one is.
      const { bytesRead } = await direct.read(buffer, 0, 8192, 0);
      t.equal(bytesRead, 8192);
      t.same(buffer, Buffer.alloc(8192, 5));
      const misaligned = native.alignedBuffer(8192 + 4096).subarray(1, 4097);
      await t.rejects(direct.read(misaligned, 0, 4096, 0), { code: 'EINVAL' }, 'the same read into memory off by one byte is refused');
    } finally {
      await direct.close();
    }
  } else {
    t.comment(`${dir}: the filesystem refuses O_DIRECT; alignment checked by length only`);
  }
  t.throws(() => native.alignedBuffer(0), { name: 'TypeError' });
  t.throws(() => native.alignedBuffer(128 * 1024 * 1024), { name: 'TypeError', message: /"length" argument is out of range/ });
});

t.test('device-mapper calls check their arguments before any ioctl', async (t) => {
  await t.rejects(native.dmInfo(''), { name: 'TypeError', message: /"name" argument must be 1 to 127 bytes/ });
  await t.rejects(native.dmCreate('x'.repeat(128)), { name: 'TypeError' });
  await t.rejects(native.dmCreate('ok', 'u'.repeat(129)), { name: 'TypeError', message: /"uuid"/ });
  await t.rejects(native.dmLoad('ok', 'not an array' as unknown as []), { name: 'TypeError', message: /"targets" argument must be an array/ });
  await t.rejects(native.dmLoad('ok', [{ start: 0, length: 8, type: '', params: '' }]), { name: 'TypeError' });
  await t.rejects(native.dmLoad('ok', [{ start: 0, length: 8 } as never]), { name: 'TypeError', message: /\{start, length, type, params\}/ });
  await t.rejects(native.dmMessage('ok', -1, 'x'), { name: 'TypeError', message: /"sector"/ });
  await t.rejects(native.mknodBlock('/nonexistent-dir/x', 1, 1, 0o600), { code: 'ENOENT', syscall: 'mknod', path: '/nonexistent-dir/x' });
  await t.rejects(native.loopConfigure('/dev/loop0', 7 as unknown as string, 0, 0), { name: 'TypeError', message: /"file" argument must be a string/ });
  await t.rejects(native.loopConfigure('/dev/loop0', '/x', -1, 0), { name: 'TypeError', message: /"flags" argument is out of range/ });
  t.same(Object.keys(native.loopFlags).sort(), ['AUTOCLEAR', 'DIRECT_IO', 'READ_ONLY']);
});

t.test('a device-mapper call that fails names the command and the device (or the control node)', async (t) => {
  const kernelHasDm = /^\s*\d+ device-mapper$/m.test(readFileSync('/proc/misc', 'utf8'));
  if (kernelHasDm && existsSync('/dev/mapper/control')) {
    await t.rejects(native.dmInfo('volagent-absent-device'), { code: 'ENXIO', syscall: 'DM_DEV_STATUS', path: 'volagent-absent-device' });
  } else if (existsSync('/dev/mapper/control')) {
    // A node made by lvm2's or udev's set-up, on a kernel without device-mapper (this host's).
    await t.rejects(native.dmInfo('volagent-absent-device'), { code: 'ENODEV', syscall: 'DM_DEV_STATUS', path: '/dev/mapper/control' });
  } else {
    await t.rejects(native.dmInfo('volagent-absent-device'), { code: 'ENOENT', syscall: 'DM_DEV_STATUS', path: '/dev/mapper/control' });
  }
});
