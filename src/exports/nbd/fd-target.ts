// What file and block-device targets share: an open descriptor read and
// written at positions (pread/pwrite may transfer less than asked; these loop
// until done), flushed with fdatasync. Each backend adds how it trims, zeros
// and reports allocation (file-target.ts, block-target.ts).
import type { FileHandle } from 'node:fs/promises';

import { native } from '../../native/binding.js';
import { systemError } from '../../native/system-error.js';
import type { Extent, ExportTarget, ZeroOptions } from './target.js';

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

  protected constructor(protected readonly handle: FileHandle, protected readonly path: string, readonly sizeBytes: number, readonly readOnly: boolean) {}

  /** Reads into `into` when given (exactly `length` bytes), else into a new buffer. */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buffer = into ?? Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(buffer, done, length - done, offset + done);
      if (bytesRead === 0) throw systemError('EIO', 'read', this.path); // past the end: the size changed under the export
      done += bytesRead;
    }
    return buffer;
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

  close(): Promise<void> {
    return this.handle.close();
  }
}
