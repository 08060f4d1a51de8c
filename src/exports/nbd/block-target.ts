// A block device (a thin volume's node) as an NBD export. TRIM is
// BLKDISCARD (dm-thin unmaps whole blocks), WRITE_ZEROES is BLKZEROOUT.
// Block status comes from the pool that owns the device (a thin pool's
// mapping: unprovisioned blocks are holes that read as zeros); without one it
// answers "data" for the whole range: correct, only not sparse.

import { native } from '../../native/binding.js';
import type { TargetFiles, TargetOptions } from './fd-target.js';
import { FdTarget, openTargetFiles } from './fd-target.js';
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

  private constructor(files: TargetFiles, path: string, readOnly: boolean, private readonly allocation?: AllocationSource) {
    super(files, path, readOnly);
  }

  static async open(path: string, readOnly: boolean, options: TargetOptions & { allocation?: AllocationSource } = {}): Promise<BlockTarget> {
    const files = await openTargetFiles(path, readOnly, options, (handle) => native.blkGetSize64(handle.fd, path));
    return new BlockTarget(files, path, readOnly, options.allocation);
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
