// A block device (a thin volume's node) as an NBD export. TRIM is
// BLKDISCARD (dm-thin unmaps whole blocks), WRITE_ZEROES is BLKZEROOUT.
// Block status comes from the pool that owns the device (a thin pool's
// mapping: unprovisioned blocks are holes that read as zeros); without one it
// answers "data" for the whole range: correct, only not sparse.
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';

import { native } from '../../native/binding.js';
import type { TargetOptions } from './fd-target.js';
import { FdTarget, openDirectReader } from './fd-target.js';
import { AllocationState } from './protocol.js';
import type { Extent, ZeroOptions } from './target.js';
import { FastZeroUnsupportedError } from './target.js';

/** Allocation of [offset, offset + length) of the device, in order from offset (Pool.allocation). */
export type AllocationSource = (offset: number, length: number) => Promise<Array<{ length: number; allocated: boolean }>>;

/** Extents in one block-status reply, at most. */
const MAX_EXTENTS = 1024;

export class BlockTarget extends FdTarget {
  readonly canTrim = true;
  readonly canFastZero = false;

  private constructor(handle: FileHandle, path: string, sizeBytes: number, readOnly: boolean, directReader: FileHandle | undefined, private readonly allocation?: AllocationSource) {
    super(handle, path, sizeBytes, readOnly, directReader);
  }

  static async open(path: string, readOnly: boolean, options: TargetOptions & { allocation?: AllocationSource } = {}): Promise<BlockTarget> {
    const handle = await open(path, readOnly ? 'r' : 'r+');
    let directReader: FileHandle | undefined;
    try {
      const size = await native.blkGetSize64(handle.fd, path);
      directReader = options.directIo ? await openDirectReader(path) : undefined;
      return new BlockTarget(handle, path, size, readOnly, directReader, options.allocation);
    } catch (error) {
      await directReader?.close();
      await handle.close();
      throw error;
    }
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await native.blkDiscard(this.handle.fd, offset, length, this.path);
    if (fua) await this.flush();
  }

  async zero(offset: number, length: number, options: ZeroOptions & { fast: boolean }): Promise<void> {
    if (options.fast) throw new FastZeroUnsupportedError(`${this.path}: BLKZEROOUT may write zeros`);
    await native.blkZeroOut(this.handle.fd, offset, length, this.path);
    if (options.fua) await this.flush();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    if (!this.allocation) return [{ length, flags: 0 }];
    const extents = (await this.allocation(offset, length)).slice(0, MAX_EXTENTS);
    return extents.map((extent) => ({ length: extent.length, flags: extent.allocated ? 0 : AllocationState.HOLE | AllocationState.ZERO }));
  }
}
