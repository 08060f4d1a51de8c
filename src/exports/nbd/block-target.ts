// A block device (a thin volume's node) as an NBD export. TRIM is
// BLKDISCARD (dm-thin unmaps whole blocks), WRITE_ZEROES is BLKZEROOUT. The
// device reports no allocation here, so block status answers "data" for the
// whole range: correct, only not sparse.
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';

import { native } from '../../native/binding.js';
import { FdTarget } from './fd-target.js';
import type { Extent, ZeroOptions } from './target.js';
import { FastZeroUnsupportedError } from './target.js';

export class BlockTarget extends FdTarget {
  readonly canTrim = true;
  readonly canFastZero = false;

  private constructor(handle: FileHandle, path: string, sizeBytes: number, readOnly: boolean) {
    super(handle, path, sizeBytes, readOnly);
  }

  static async open(path: string, readOnly: boolean): Promise<BlockTarget> {
    const handle = await open(path, readOnly ? 'r' : 'r+');
    try {
      return new BlockTarget(handle, path, await native.blkGetSize64(handle.fd, path), readOnly);
    } catch (error) {
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

  async blockStatus(_offset: number, length: number): Promise<Extent[]> {
    return [{ length, flags: 0 }];
  }
}
