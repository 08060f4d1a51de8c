// A file volume as an NBD export. Holes are real: TRIM punches them,
// WRITE_ZEROES punches or zero-ranges them (fallocate), and block status
// answers from SEEK_DATA/SEEK_HOLE, so a sparse volume copies in time
// proportional to its data.

import { native } from '../../native/binding.js';
import { isSystemError } from '../../native/system-error.js';
import type { TargetFiles, TargetOptions } from './fd-target.js';
import { FdTarget, openTargetFiles, writeFully } from './fd-target.js';
import { AllocationState } from './protocol.js';
import type { Extent, ZeroOptions } from './target.js';
import { FastZeroUnsupportedError } from './target.js';

/** fallocate modes a filesystem may lack. */
const UNSUPPORTED = ['EOPNOTSUPP', 'ENOTSUP', 'ENOSYS'];
/** Extents asked of SEEK_DATA/SEEK_HOLE per block-status request. */
const MAX_EXTENTS = 1024;
const ZERO_CHUNK_BYTES = 1024 * 1024;

export class FileTarget extends FdTarget {
  readonly canTrim = true;
  readonly canFastZero = true;

  private constructor(files: TargetFiles, path: string, readOnly: boolean) {
    super(files, path, readOnly);
  }

  static async open(path: string, readOnly: boolean, options: TargetOptions = {}): Promise<FileTarget> {
    return new FileTarget(await openTargetFiles(path, readOnly, options, async (handle) => (await handle.stat()).size), path, readOnly);
  }

  /** A hole punched where the filesystem can; advisory, so a filesystem that cannot is not an error. */
  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    const { FALLOC_FL_PUNCH_HOLE, FALLOC_FL_KEEP_SIZE } = native.fileConstants;
    try {
      await native.fallocate(this.handle.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length, this.path);
    } catch (error) {
      if (!isSystemError(error, ...UNSUPPORTED)) throw error;
    }
    if (fua) await this.flush();
  }

  /**
   * Zeros without writing data: a punched hole, or with NO_HOLE a zeroed
   * allocated range (FALLOC_FL_ZERO_RANGE). Where the filesystem has neither,
   * zeros are written, unless the client asked for a fast zero.
   */
  async zero(offset: number, length: number, options: ZeroOptions & { fast: boolean }): Promise<void> {
    const { FALLOC_FL_PUNCH_HOLE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE } = native.fileConstants;
    const modes = options.noHole ? [FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE] : [FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE];
    let zeroed = false;
    for (const mode of modes) {
      try {
        await native.fallocate(this.handle.fd, mode, offset, length, this.path);
        zeroed = true;
        break;
      } catch (error) {
        if (!isSystemError(error, ...UNSUPPORTED)) throw error;
      }
    }
    if (!zeroed) {
      if (options.fast) throw new FastZeroUnsupportedError(`${this.path}: the filesystem cannot zero without writing`);
      const zeros = Buffer.alloc(Math.min(length, ZERO_CHUNK_BYTES));
      for (let at = 0; at < length; at += zeros.length) await writeFully(this.handle, zeros.subarray(0, Math.min(zeros.length, length - at)), offset + at);
    }
    if (options.fua) await this.flush();
  }

  /** Data extents from SEEK_DATA/SEEK_HOLE; the gaps between them are holes that read as zeros. */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const end = offset + length;
    const batch = await native.dataExtents(this.handle.fd, offset, end, MAX_EXTENTS, this.path);
    const extents: Extent[] = [];
    let at = offset;
    for (const [start, bytes] of batch.extents) {
      if (start > at) extents.push({ length: start - at, flags: AllocationState.HOLE | AllocationState.ZERO });
      extents.push({ length: bytes, flags: 0 });
      at = start + bytes;
    }
    const covered = batch.next >= end ? end : batch.next;
    if (covered > at) extents.push({ length: covered - at, flags: AllocationState.HOLE | AllocationState.ZERO });
    return extents;
  }
}
