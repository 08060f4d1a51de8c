// The clone engine on real filesystems: the method chosen on each, exact
// content, shared extents after a reflink, sparseness, fallbacks, abort and
// out-of-space. Needs root (loop devices, mkfs, mount).
import { existsSync } from 'node:fs';
import { open, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';

import { cloneFile } from '../../src/clone/clone-file.js';
import { dataExtents, fiemapExtents } from '../../src/clone/extents.js';
import { native } from '../../src/native/binding.js';
import { allocatedBytes, makeSparseFile, sha256, spreadLayout } from '../helpers/files.js';
import type { LoopFs } from '../helpers/loop-fs.js';
import { makeLoopDevice, makeLoopFs } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

async function listDataExtents(file: string): Promise<Array<[number, number]>> {
  const handle = await open(file, 'r');
  try {
    const out: Array<[number, number]> = [];
    for await (const extent of dataExtents(handle.fd, (await handle.stat()).size, file)) out.push(extent);
    return out;
  } finally {
    await handle.close();
  }
}

async function fiemapOf(file: string) {
  const handle = await open(file, 'r');
  try {
    return await fiemapExtents(handle.fd, (await handle.stat()).size, file);
  } finally {
    await handle.close();
  }
}

async function mounted(t: Test, fsType: LoopFs['fsType'], size: number): Promise<LoopFs> {
  const fs = await makeLoopFs(fsType, size);
  t.teardown(() => fs.cleanup());
  return fs;
}

if (!skipUnlessRoot(t)) {
  for (const fsType of ['xfs', 'btrfs'] as const) {
    t.test(`${fsType}: FICLONE shares every extent and copies nothing`, async (t) => {
      const fs = await mounted(t, fsType, GiB);
      const src = path.join(fs.mountPoint, 'image');
      await makeSparseFile(src, spreadLayout(256 * MiB, 16, MiB));
      const dst = path.join(fs.mountPoint, 'clone');
      const result = await cloneFile(src, dst);
      t.same(result, { method: 'reflink', bytesCopied: 0, bytesTotal: 256 * MiB });
      t.equal(await sha256(dst), await sha256(src), 'same content');
      const { FIEMAP_EXTENT_SHARED } = native.fileConstants;
      const srcMap = await fiemapOf(src);
      const dstMap = await fiemapOf(dst);
      t.ok(dstMap.length >= 16, `${dstMap.length} extents mapped`);
      t.ok(dstMap.every((e) => (e.flags & FIEMAP_EXTENT_SHARED) !== 0), 'every destination extent is shared');
      t.ok(srcMap.every((e) => (e.flags & FIEMAP_EXTENT_SHARED) !== 0), 'every source extent is shared');
      t.same(dstMap.map((e) => [e.logical, e.physical, e.length]), srcMap.map((e) => [e.logical, e.physical, e.length]),
        'the same physical blocks');
    });
  }

  t.test('ext4: copy_file_range moves only the data of a 4 GiB file holding 64 MiB', async (t) => {
    const fs = await mounted(t, 'ext4', GiB);
    const src = path.join(fs.mountPoint, 'image');
    const layout = spreadLayout(4 * GiB, 64, MiB);
    await makeSparseFile(src, layout);
    const dst = path.join(fs.mountPoint, 'clone');
    const result = await cloneFile(src, dst);
    t.same(result, { method: 'copy_file_range', bytesCopied: 64 * MiB, bytesTotal: 4 * GiB });
    t.equal((await stat(dst)).size, 4 * GiB, 'destination has the source size');
    t.same(await listDataExtents(dst), layout.data, 'data extents identical: holes stayed holes');
    const [srcAllocated, dstAllocated] = [await allocatedBytes(src), await allocatedBytes(dst)];
    t.ok(dstAllocated >= 64 * MiB && dstAllocated <= srcAllocated, `allocated ${dstAllocated} vs source ${srcAllocated}`);
    t.equal(await sha256(dst), await sha256(src), 'same content, all 4 GiB');
  });

  t.test('XFS -> ext4: FICLONE and copy_file_range give EXDEV, read/write copies data only', async (t) => {
    const xfs = await mounted(t, 'xfs', GiB);
    const ext4 = await mounted(t, 'ext4', GiB);
    const src = path.join(xfs.mountPoint, 'image');
    const layout = spreadLayout(128 * MiB, 8, MiB);
    await makeSparseFile(src, layout);
    const dst = path.join(ext4.mountPoint, 'clone');
    const result = await cloneFile(src, dst);
    t.same(result, { method: 'read_write', bytesCopied: 8 * MiB, bytesTotal: 128 * MiB });
    t.same(await listDataExtents(dst), layout.data, 'sparse on the destination');
    t.equal(await sha256(dst), await sha256(src));
  });

  t.test('cancellation mid-copy stops within one step and leaves nothing behind', async (t) => {
    const fs = await mounted(t, 'ext4', GiB);
    const src = path.join(fs.mountPoint, 'image');
    await makeSparseFile(src, { sizeBytes: 512 * MiB, data: [[0, 512 * MiB]] });
    const before = await sha256(src);
    const controller = new AbortController();
    const doneAt: number[] = [];
    const dst = path.join(fs.mountPoint, 'clone');
    await t.rejects(cloneFile(src, dst, {
      stepBytes: 8 * MiB,
      signal: controller.signal,
      onProgress: (p) => {
        doneAt.push(p.doneBytes);
        if (doneAt.length === 4) controller.abort(new Error('operator cancelled'));
      },
    }), { name: 'AbortError', code: 'ABORT_ERR', cause: { message: 'operator cancelled' } });
    t.same(doneAt, [8 * MiB, 16 * MiB, 24 * MiB, 32 * MiB], 'no step after the abort');
    t.notOk(existsSync(dst), 'partial destination removed');
    t.equal(await sha256(src), before, 'source intact');
  });

  t.test('ENOSPC on a small ext4 is Node-shaped, removes the destination, keeps the source', async (t) => {
    const fs = await mounted(t, 'ext4', 32 * MiB);
    const src = path.join(fs.mountPoint, 'image');
    await makeSparseFile(src, { sizeBytes: 64 * MiB, data: [[0, 20 * MiB]] });
    const before = await sha256(src);
    const dst = path.join(fs.mountPoint, 'clone');
    await t.rejects(cloneFile(src, dst), {
      code: 'ENOSPC', errno: -28, syscall: 'copy_file_range', path: src, dest: dst,
      message: `ENOSPC: no space left on device, copy_file_range '${src}' -> '${dst}'`,
    });
    t.notOk(existsSync(dst), 'partial destination removed');
    t.equal(await sha256(src), before, 'source intact');
  });

  t.test('a block device as source: data copied, zero blocks left as holes', async (t) => {
    const ext4 = await mounted(t, 'ext4', GiB);
    const device = await makeLoopDevice(64 * MiB);
    t.teardown(() => device.detach());
    const fd = await open(device.device, 'r+');
    const payload = Buffer.alloc(MiB, 0xab);
    for (const offset of [0, 20 * MiB, 63 * MiB]) await fd.write(payload, 0, MiB, offset);
    await fd.close();
    const dst = path.join(ext4.mountPoint, 'from-device');
    const result = await cloneFile(device.device, dst);
    t.same(result, { method: 'read_write', bytesCopied: 3 * MiB, bytesTotal: 64 * MiB });
    t.same(await listDataExtents(dst), [[0, MiB], [20 * MiB, MiB], [63 * MiB, MiB]], 'only the written MiBs are data');
    t.equal(await sha256(dst), await sha256(device.device), 'same content');
  });

  t.test('a block device as destination: data written, holes zeroed with BLKZEROOUT', async (t) => {
    const xfs = await mounted(t, 'xfs', GiB);
    const device = await makeLoopDevice(64 * MiB);
    t.teardown(() => device.detach());
    await writeFile(device.device, Buffer.alloc(64 * MiB, 0x5a)); // stale data that must not survive
    const src = path.join(xfs.mountPoint, 'image');
    await makeSparseFile(src, { sizeBytes: 48 * MiB + 1536, data: [[4 * MiB, MiB], [40 * MiB, 2 * MiB]] });
    const result = await cloneFile(src, device.device);
    t.same(result, { method: 'read_write', bytesCopied: 3 * MiB, bytesTotal: 48 * MiB + 1536 });
    t.equal(await sha256(device.device, 48 * MiB + 1536), await sha256(src), 'device holds the source, holes read as zero');
    const tail = Buffer.alloc(16);
    const handle = await open(device.device, 'r');
    await handle.read(tail, 0, 16, 60 * MiB);
    await handle.close();
    t.same([...tail], Array(16).fill(0x5a), 'bytes past the source are not touched');

    const big = path.join(xfs.mountPoint, 'too-big');
    await makeSparseFile(big, { sizeBytes: 65 * MiB, data: [[0, MiB]] });
    const deviceBefore = await sha256(device.device);
    await t.rejects(cloneFile(big, device.device), { code: 'ENOSPC', path: big, dest: device.device });
    t.equal(await sha256(device.device), deviceBefore, 'a device too small is refused before any write');
  });
}
