// What file and block-device targets share: an open descriptor read and
// written at positions (pread/pwrite may transfer less than asked; these loop
// until done), flushed with fdatasync. Each backend adds how it trims, zeros
// and reports allocation (file-target.ts, block-target.ts).
//
// Direct I/O (an export made with `directIo`, as qemu-nbd --cache=none): a
// second descriptor opened O_DIRECT serves the reads whose offset and length
// are multiples of 4 KiB, into 4 KiB-aligned buffers (native.alignedBuffer;
// the connection's buffer pool hands out such buffers). O_DIRECT needs both
// aligned, and 4 KiB covers every logical block size up to 4Kn disks. The
// kernel writes back dirty page-cache pages of the range before a direct read
// (XFS, ext4, btrfs and block devices alike), so buffered writes stay visible.
// Writes and unaligned reads stay buffered. A filesystem that refuses O_DIRECT
// (EINVAL at open or at the first read) falls back to buffered reads.
import { constants as fsConstants } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';

import { native } from '../../native/binding.js';
import { isSystemError, systemError } from '../../native/system-error.js';
import type { Extent, ExportTarget, ZeroOptions } from './target.js';

export const DIRECT_IO_ALIGNMENT = 4096;

export interface TargetOptions {
  /** Aligned reads bypass the page cache (O_DIRECT). */
  directIo?: boolean;
}

/** `path` opened O_RDONLY | O_DIRECT; undefined where the filesystem refuses O_DIRECT. */
async function openDirectReader(path: string): Promise<FileHandle | undefined> {
  try {
    return await open(path, fsConstants.O_RDONLY | fsConstants.O_DIRECT);
  } catch (error) {
    if (isSystemError(error, 'EINVAL')) return undefined;
    throw error;
  }
}

export interface TargetFiles {
  handle: FileHandle;
  sizeBytes: number;
  directReader?: FileHandle;
}

/**
 * A target's descriptors: `path` opened read-write (read-only when asked),
 * its size by `sizeOf`, and the O_DIRECT reader when `directIo`. On a
 * failure, none stays open.
 */
export async function openTargetFiles(path: string, readOnly: boolean, options: TargetOptions, sizeOf: (handle: FileHandle) => Promise<number>): Promise<TargetFiles> {
  const handle = await open(path, readOnly ? 'r' : 'r+');
  let directReader: FileHandle | undefined;
  try {
    const sizeBytes = await sizeOf(handle);
    directReader = options.directIo ? await openDirectReader(path) : undefined;
    return { handle, sizeBytes, ...(directReader ? { directReader } : {}) };
  } catch (error) {
    await directReader?.close();
    await handle.close();
    throw error;
  }
}

export async function writeFully(handle: FileHandle, data: Buffer, offset: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, offset + done);
    done += bytesWritten;
  }
}

export abstract class FdTarget implements ExportTarget {
  abstract readonly canTrim: boolean;
  abstract readonly canFastZero: boolean;
  readonly multiConn = true;

  protected readonly handle: FileHandle;
  readonly sizeBytes: number;
  private directReader: FileHandle | undefined;

  protected constructor(files: TargetFiles, protected readonly path: string, readonly readOnly: boolean) {
    this.handle = files.handle;
    this.sizeBytes = files.sizeBytes;
    this.directReader = files.directReader;
  }

  /**
   * Reads into `into` when given (exactly `length` bytes, from take() of the
   * connection's pool: 4 KiB-aligned), else into a new buffer.
   */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const direct = this.directReader && offset % DIRECT_IO_ALIGNMENT === 0 && length % DIRECT_IO_ALIGNMENT === 0 ? this.directReader : undefined;
    if (direct) {
      const buffer = into ?? native.alignedBuffer(length);
      try {
        return await this.readFully(direct, buffer, offset, length);
      } catch (error) {
        if (!isSystemError(error, 'EINVAL')) throw error;
        await this.stopDirectIo(); // the filesystem takes O_DIRECT opens but not reads of this shape
      }
    }
    return this.readFully(this.handle, into ?? Buffer.allocUnsafe(length), offset, length);
  }

  private async readFully(handle: FileHandle, buffer: Buffer, offset: number, length: number): Promise<Buffer> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await handle.read(buffer, done, length - done, offset + done);
      if (bytesRead === 0) throw systemError('EIO', 'read', this.path); // past the end: the size changed under the export
      done += bytesRead;
    }
    return buffer;
  }

  private async stopDirectIo(): Promise<void> {
    const reader = this.directReader;
    this.directReader = undefined;
    await reader?.close().catch(() => undefined);
  }

  async write(data: Buffer, offset: number, fua: boolean): Promise<void> {
    await writeFully(this.handle, data, offset);
    if (fua) await this.flush();
  }

  flush(): Promise<void> {
    return native.fdatasync(this.handle.fd, this.path);
  }

  abstract trim(offset: number, length: number, fua: boolean): Promise<void>;
  abstract zero(offset: number, length: number, options: ZeroOptions & { fast: boolean }): Promise<void>;
  abstract blockStatus(offset: number, length: number): Promise<Extent[]>;

  async close(): Promise<void> {
    await this.stopDirectIo();
    await this.handle.close();
  }
}
