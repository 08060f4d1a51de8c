// Loop devices over files. Two layers bind them, so they sit below both: the
// exports (a block export of a volume whose pool keeps files, objectKind
// 'file') and thin pools in development and tests (a regular file as the
// data or metadata device; docs/design.md "Pools"). Attaching
// asks the kernel for a free device and binds it with one LOOP_CONFIGURE;
// another process may take that device in between (EBUSY), so the attach is
// retried with a new one.
import { readdir, readFile } from 'node:fs/promises';

import { native } from '../native/binding.js';
import type { LoopStatus } from '../native/addon-types.js';
import { isSystemError } from '../native/system-error.js';

export interface LoopOptions {
  readOnly?: boolean;
  /** Bypass the page cache for the backing file (O_DIRECT): data reaches the file when the device's write completes. */
  directIo?: boolean;
  /** Unbind on the last close of the device. */
  autoclear?: boolean;
  /** Logical block size; default 512. */
  blockSize?: number;
  /** `/dev/loopN` to bind if it is free (a device recorded before a reboot); another free one otherwise. */
  preferredDevice?: string;
}

export interface AttachedLoop extends LoopStatus {
  /** `/dev/loopN`. */
  device: string;
}

/** How many free devices are tried before EBUSY is given up on. */
const ATTACH_ATTEMPTS = 8;

export function loopDevicePath(number: number): string {
  return `/dev/loop${number}`;
}

export async function attachLoop(file: string, options: LoopOptions = {}): Promise<AttachedLoop> {
  const { READ_ONLY, AUTOCLEAR, DIRECT_IO } = native.loopFlags;
  const flags = (options.readOnly ? READ_ONLY : 0) | (options.autoclear ? AUTOCLEAR : 0) | (options.directIo ? DIRECT_IO : 0);
  if (options.preferredDevice && /^\/dev\/loop\d+$/.test(options.preferredDevice)) {
    try {
      return { device: options.preferredDevice, ...(await native.loopConfigure(options.preferredDevice, file, flags, options.blockSize ?? 0)) };
    } catch (error) {
      // EBUSY: bound to something else; ENOENT/ENXIO: no such device (yet).
      if (!isSystemError(error, 'EBUSY', 'ENOENT', 'ENXIO')) throw error;
    }
  }
  for (let attempt = 1; ; attempt++) {
    const device = loopDevicePath(await native.loopGetFree());
    try {
      return { device, ...(await native.loopConfigure(device, file, flags, options.blockSize ?? 0)) };
    } catch (error) {
      if (!isSystemError(error, 'EBUSY') || attempt >= ATTACH_ATTEMPTS) throw error;
    }
  }
}

/** Unbinds `device`; a device that is already free is not an error. */
export async function detachLoop(device: string): Promise<void> {
  try {
    await native.loopDetach(device);
  } catch (error) {
    if (!isSystemError(error, 'ENXIO')) throw error;
  }
}

/** The file loop device `device` (`/dev/loopN`) is bound to, from sysfs; undefined when it is free. */
export async function loopBackingFile(device: string): Promise<string | undefined> {
  const name = device.replace(/^\/dev\//, '');
  return (await readFile(`/sys/block/${name}/loop/backing_file`, 'utf8').catch(() => undefined))?.trim();
}

/** The loop device bound to `file`, undefined when none is. */
export async function loopBoundTo(file: string): Promise<string | undefined> {
  return (await boundLoopDevices()).find((loop) => loop.backingFile === file)?.device;
}

/** Every bound loop device and its backing file (as sysfs says it: a deleted file ends in " (deleted)"). */
export async function boundLoopDevices(): Promise<Array<{ device: string; backingFile: string }>> {
  const entries = await readdir('/sys/block').catch(() => [] as string[]);
  const bound: Array<{ device: string; backingFile: string }> = [];
  for (const entry of entries.filter((e) => /^loop\d+$/.test(e)).sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)))) {
    const backingFile = await loopBackingFile(`/dev/${entry}`);
    if (backingFile !== undefined) bound.push({ device: `/dev/${entry}`, backingFile });
  }
  return bound;
}
