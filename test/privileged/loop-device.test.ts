// Loop devices attached by the addon (LOOP_CONFIGURE), checked with losetup,
// through the device and in the backing file. Every device is detached by
// the end, also on failure. Needs root.
import { mkdir, open, readFile, rm, truncate } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { native } from '../../src/native/binding.js';
import type { AttachedLoop } from '../../src/devices/loop-device.js';
import { attachLoop, detachLoop } from '../../src/devices/loop-device.js';
import { TEST_ROOT } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { run } from '../helpers/run.js';

const MiB = 1024 * 1024;

if (!skipUnlessRoot(t)) {
  const dir = path.join(TEST_ROOT, `loop-device-${process.pid}`);
  await mkdir(dir, { recursive: true });
  const attached: AttachedLoop[] = [];
  t.teardown(async () => {
    for (const loop of attached) await detachLoop(loop.device).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });
  const image = async (name: string, bytes = 64 * MiB): Promise<string> => {
    const file = path.join(dir, name);
    await (await open(file, 'w')).close();
    await truncate(file, bytes);
    return file;
  };
  const attach = async (file: string, options = {}): Promise<AttachedLoop> => {
    const loop = await attachLoop(file, options);
    attached.push(loop);
    return loop;
  };

  await t.test('attach: losetup sees it; bytes written through the device land in the file', async (t) => {
    const file = await image('a.img');
    const loop = await attach(file);
    t.match(loop, { device: `/dev/loop${loop.number}`, major: 7, backingFile: file, readOnly: false, autoclear: false, offset: 0 });
    const listed = await run('losetup', ['--noheadings', '--output', 'NAME,BACK-FILE,RO', '--list', loop.device]);
    t.match(listed.trim(), new RegExp(`^${loop.device}\\s+${file}\\s+0$`), 'losetup --list agrees');
    const handle = await open(loop.device, 'r+');
    try {
      t.equal(await native.blkGetSize64(handle.fd, loop.device), 64 * MiB);
      await handle.write(Buffer.alloc(MiB, 0x5c), 0, MiB, 3 * MiB);
      await handle.sync();
    } finally {
      await handle.close();
    }
    const bytes = await readFile(file);
    t.same(bytes.subarray(3 * MiB, 4 * MiB), Buffer.alloc(MiB, 0x5c), 'in the backing file');
    const { device, ...status } = loop;
    t.same(await native.loopStatus(device), status, 'LOOP_GET_STATUS64 reads back what the attach answered');
    await detachLoop(loop.device);
    await t.rejects(native.loopStatus(loop.device), { code: 'ENXIO', syscall: 'LOOP_GET_STATUS64', path: loop.device }, 'free after detach');
    await detachLoop(loop.device);
    t.pass('detaching a free device is not an error');
  });

  await t.test('read-only and direct-io attach', async (t) => {
    const loop = await attach(await image('ro.img'), { readOnly: true, directIo: true });
    t.match(loop, { readOnly: true });
    t.match((await run('losetup', ['--noheadings', '--output', 'RO,DIO', '--list', loop.device])).trim(), /^1\s+1$/, 'losetup: RO 1, DIO 1');
    const handle = await open(loop.device, 'r+'); // root may open it for writing; the kernel refuses the write
    try {
      await t.rejects(handle.write(Buffer.alloc(4096, 1), 0, 4096, 0), { code: 'EPERM' }, 'not writable');
    } finally {
      await handle.close();
    }
    await detachLoop(loop.device);
  });

  await t.test('eight attaches at once get eight devices', async (t) => {
    const files = await Promise.all(Array.from({ length: 8 }, (_, i) => image(`c${i}.img`, MiB)));
    const loops = await Promise.all(files.map((file) => attach(file)));
    t.equal(new Set(loops.map((l) => l.device)).size, 8, 'all different');
    t.same(loops.map((l) => l.backingFile), files, 'each on its own file');
    for (const loop of loops) await detachLoop(loop.device);
  });

  await t.test('a missing file or a directory is refused, naming it, and binds nothing', async (t) => {
    const before = await run('losetup', ['--noheadings', '--list', '--output', 'NAME']);
    await t.rejects(attachLoop(path.join(dir, 'absent.img')), { code: 'ENOENT', syscall: 'open', path: path.join(dir, 'absent.img') });
    await t.rejects(attachLoop(dir), { code: 'EISDIR', syscall: 'open', path: dir }, 'a directory');
    t.equal(await run('losetup', ['--noheadings', '--list', '--output', 'NAME']), before, 'no device bound');
  });
}
