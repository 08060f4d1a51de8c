// The devices under a thin pool. A configured path is a block device, or, in
// development, a regular file that the agent binds to a loop device (docs/design.md
// "Pools"); the binding is found again on the next start instead of made twice.
import { open, stat, unlink } from 'node:fs/promises';
import path from 'node:path';

import { native } from '../../native/binding.js';
import { isSystemError } from '../../native/system-error.js';
import type { DeviceNumber } from '../../devices/dm-thin.js';
import { attachLoop, loopBoundTo } from '../../devices/loop-device.js';

export interface PoolDevice {
  /** As configured. */
  configured: string;
  /** The block device node used: the configured path, or the loop device over the configured file. */
  node: string;
  device: DeviceNumber;
  sizeBytes: number;
  /** Set when `node` is a loop device the configured file was bound to. */
  loopOver?: string;
  /** The binding was made by this call (not found from an earlier run). */
  attachedNow?: boolean;
}

/** A configured device path that is neither a block device nor a regular file (Linux's ENOTBLK, which Node does not name). */
export class NotABlockDeviceError extends Error {
  override name = 'NotABlockDeviceError';
  readonly code = 'ENOTBLK';
  constructor(readonly path: string, what: string) {
    super(`${path} is ${what}: a thin pool needs a block device (or, in development, a regular file bound to a loop device)`);
  }
}

/** A dev_t as stat's bigint rdev reports it (glibc's 64-bit layout, gnu_dev_major/minor) into major:minor. */
export function decodeDeviceNumber(rdev: bigint): { major: number; minor: number } {
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & 0xfffff000n));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & 0xffffff00n));
  return { major, minor };
}

/** BLKGETSIZE64 of the device at `node`. */
export async function blockDeviceSize(node: string): Promise<number> {
  const handle = await open(node, 'r');
  try {
    return await native.blkGetSize64(handle.fd, node);
  } finally {
    await handle.close();
  }
}

/**
 * Resolves a configured data or metadata device: a block device is used as
 * it is; a regular file is bound to a loop device (the one already bound to
 * it, else a new one). Anything else is ENOTBLK.
 */
export async function resolvePoolDevice(configured: string): Promise<PoolDevice> {
  const absolute = path.resolve(configured);
  const info = await stat(absolute, { bigint: true });
  let node = absolute;
  let loopOver: string | undefined;
  let attachedNow = false;
  if (info.isFile()) {
    loopOver = absolute;
    const bound = await loopBoundTo(absolute);
    attachedNow = bound === undefined;
    node = bound ?? (await attachLoop(absolute)).device;
  } else if (!info.isBlockDevice()) {
    throw new NotABlockDeviceError(absolute, info.isDirectory() ? 'a directory' : info.isCharacterDevice() ? 'a character device' : 'not a regular file');
  }
  const { major, minor } = decodeDeviceNumber(node === absolute ? info.rdev : (await stat(node, { bigint: true })).rdev);
  return { configured: absolute, node, device: `${major}:${minor}`, sizeBytes: await blockDeviceSize(node), ...(loopOver ? { loopOver, attachedNow } : {}) };
}

/**
 * Makes `node` a block device node for major:minor: kept when it already is
 * one, replaced when it is anything else (a stale node of an earlier device).
 */
export async function ensureDeviceNode(node: string, major: number, minor: number): Promise<void> {
  const existing = await stat(node, { bigint: true }).catch((error: unknown) => {
    if (isSystemError(error, 'ENOENT')) return undefined;
    throw error;
  });
  if (existing) {
    const current = decodeDeviceNumber(existing.rdev);
    if (existing.isBlockDevice() && current.major === major && current.minor === minor) return;
    await unlink(node);
  }
  await native.mknodBlock(node, major, minor, 0o600);
}
