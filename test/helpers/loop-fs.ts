// Real filesystems on loop devices for privileged tests and benchmarks. Every
// image, device and mount point of a run lives under TEST_ROOT/<run-id>, so a
// sweep (sweepLeftovers) can find and remove what a killed run left behind.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { boundLoopDevices } from '../../src/devices/loop-device.js';
import { run } from './run.js';

export const TEST_ROOT = process.env.VOLAGENT_TEST_ROOT ?? path.join(tmpdir(), 'volagent-test');

export type FsType = 'xfs' | 'btrfs' | 'ext4';

export interface LoopDevice {
  image: string;
  device: string;
  detach(): Promise<void>;
}

export interface LoopFs extends LoopDevice {
  fsType: FsType;
  mountPoint: string;
  /** Unmounts, detaches and deletes; safe to call twice. */
  cleanup(): Promise<void>;
}

const runId = `${process.pid}-${randomBytes(3).toString('hex')}`;
let sequence = 0;

function uniqueName(label: string): string {
  sequence += 1;
  return `${label}-${runId}-${sequence}`;
}

async function attachLoop(image: string): Promise<string> {
  return (await run('losetup', ['--find', '--show', image])).trim();
}

async function detachLoop(device: string, image: string): Promise<void> {
  const backing = await run('losetup', ['--noheadings', '--output', 'BACK-FILE', device]).catch(() => '');
  if (backing.trim() === image) await run('losetup', ['--detach', device]);
}

/** A loop device over a sparse image file of `sizeBytes`. */
export async function makeLoopDevice(sizeBytes: number, label = 'blk'): Promise<LoopDevice> {
  const dir = path.join(TEST_ROOT, uniqueName(label));
  await mkdir(dir, { recursive: true });
  const image = path.join(dir, 'image');
  await run('truncate', ['-s', String(sizeBytes), image]);
  const device = await attachLoop(image);
  let detached = false;
  return {
    image,
    device,
    async detach() {
      if (detached) return;
      detached = true;
      await detachLoop(device, image);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const MKFS: Record<FsType, string[]> = {
  xfs: ['mkfs.xfs', '-q', '-f', '-m', 'reflink=1'],
  btrfs: ['mkfs.btrfs', '-q', '-f'],
  ext4: ['mkfs.ext4', '-q', '-F', '-E', 'nodiscard,lazy_itable_init=1,lazy_journal_init=1'],
};

/** Detaches every loop device whose backing file lies under `dir`. */
export async function detachLoopsUnder(dir: string): Promise<string[]> {
  const detached: string[] = [];
  for (const { device, backingFile } of await boundLoopDevices()) {
    if (!backingFile.startsWith(`${dir}/`)) continue;
    await run('losetup', ['--detach', device]).catch(() => undefined);
    detached.push(device);
  }
  return detached;
}

/** A fresh filesystem of `fsType` on a loop device, mounted under TEST_ROOT. */
export async function makeLoopFs(fsType: FsType, sizeBytes: number): Promise<LoopFs> {
  const loop = await makeLoopDevice(sizeBytes, fsType);
  const mountPoint = path.join(path.dirname(loop.image), 'mnt');
  let mounted = false;
  const cleanup = async (): Promise<void> => {
    if (mounted) {
      mounted = false;
      // A loop device over a file in this filesystem (a block export a test left) would keep it busy.
      await detachLoopsUnder(mountPoint);
      await run('umount', [mountPoint]).catch(() => run('umount', ['--lazy', mountPoint]));
    }
    await loop.detach();
  };
  try {
    const [mkfs, ...args] = MKFS[fsType];
    await run(mkfs!, [...args, loop.device]);
    await mkdir(mountPoint);
    await run('mount', [loop.device, mountPoint]);
    mounted = true;
    return { ...loop, fsType, mountPoint, cleanup, detach: cleanup };
  } catch (error) {
    await cleanup();
    throw error;
  }
}

/** Unmounts, detaches and deletes whatever earlier runs left under TEST_ROOT. */
export async function sweepLeftovers(): Promise<string[]> {
  if (!existsSync(TEST_ROOT)) return [];
  const removed: string[] = [];
  const mounts = (await readFile('/proc/self/mounts', 'utf8')).split('\n')
    .map((line) => line.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((m): m is string => m !== undefined && m.startsWith(`${TEST_ROOT}/`))
    .sort((a, b) => b.length - a.length);
  for (const mountPoint of mounts) {
    await run('umount', ['--lazy', mountPoint]).catch(() => undefined);
    removed.push(`mount ${mountPoint}`);
  }
  // qemu-nbd servers of tests (test/helpers/qemu-nbd.ts) run detached; their pid files lie under TEST_ROOT.
  for (const entry of await readdir(TEST_ROOT, { recursive: true }).catch(() => [] as string[])) {
    if (!/(^|\/)qemu-nbd-[^/]*\.pid$/.test(entry)) continue;
    const pidFile = path.join(TEST_ROOT, entry);
    const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
    const command = Number.isInteger(pid) && pid > 1 ? await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '') : '';
    if (!command.startsWith('qemu-nbd\0') || !command.includes(pidFile)) continue;
    try {
      process.kill(pid, 'SIGKILL');
      removed.push(`qemu-nbd ${pid} (${pidFile})`);
    } catch { /* gone meanwhile */ }
  }
  const loops = await run('losetup', ['--noheadings', '--list', '--output', 'NAME,BACK-FILE']).catch(() => '');
  for (const line of loops.split('\n')) {
    const [device, backing] = line.trim().split(/\s+/);
    if (device && backing?.startsWith(`${TEST_ROOT}/`)) {
      await run('losetup', ['--detach', device]).catch(() => undefined);
      removed.push(`loop ${device} (${backing})`);
    }
  }
  await rm(TEST_ROOT, { recursive: true, force: true });
  return removed;
}

