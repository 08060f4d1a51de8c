// Positional reads and writes of whole ranges on an open file or device
// (pread/pwrite may transfer less than asked; these loop until done).
import type { FileHandle } from 'node:fs/promises';

import { systemError } from '../../native/system-error.js';

export async function readFully(handle: FileHandle, offset: number, length: number, path: string): Promise<Buffer> {
  const buffer = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buffer, done, length - done, offset + done);
    if (bytesRead === 0) throw systemError('EIO', 'read', path); // past the end: the size changed under the export
    done += bytesRead;
  }
  return buffer;
}

export async function writeFully(handle: FileHandle, data: Buffer, offset: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, offset + done);
    done += bytesWritten;
  }
}
