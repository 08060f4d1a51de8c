// Test data: sparse files with known data extents, hashes and allocation.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';

import { fiemapExtents } from '../../src/clone/extents.js';

export interface Layout {
  sizeBytes: number;
  /** [offset, length] of each run of non-zero data to write. */
  data: Array<[number, number]>;
}

/** Writes a sparse file: `sizeBytes` long, random bytes at each data run, holes elsewhere. */
export async function makeSparseFile(file: string, layout: Layout): Promise<void> {
  const handle = await open(file, 'wx');
  try {
    await handle.truncate(layout.sizeBytes);
    const chunk = 4 * 1024 * 1024;
    for (const [offset, length] of layout.data) {
      for (let at = 0; at < length; at += chunk) {
        const n = Math.min(chunk, length - at);
        const bytes = randomBytes(n);
        bytes[0] = 0xff; // never an all-zero block, so the run stays data
        await handle.write(bytes, 0, n, offset + at);
      }
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** `count` runs of `runBytes` spread evenly over `sizeBytes`. */
export function spreadLayout(sizeBytes: number, count: number, runBytes: number): Layout {
  const stride = Math.floor(sizeBytes / count);
  return { sizeBytes, data: Array.from({ length: count }, (_, i) => [i * stride, runBytes] as [number, number]) };
}

export async function sha256(file: string, length?: number): Promise<string> {
  const hash = createHash('sha256');
  const range = length === undefined ? {} : { start: 0, end: length - 1 };
  const stream = createReadStream(file, { ...range, highWaterMark: 4 * 1024 * 1024 });
  for await (const piece of stream) hash.update(piece as Buffer);
  return hash.digest('hex');
}

export async function allocatedBytes(file: string): Promise<number> {
  return (await stat(file)).blocks * 512;
}

/** How many extents FIEMAP reports for the file. */
export async function extentCount(file: string): Promise<number> {
  const handle = await open(file, 'r');
  try {
    return (await fiemapExtents(handle.fd, (await handle.stat()).size, file)).length;
  } finally {
    await handle.close();
  }
}

/** Writes `data` at `offset` of a file or device and fsyncs it. */
export async function writeAt(file: string, data: Buffer, offset: number): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    await handle.write(data, 0, data.length, offset);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** `length` bytes of a file or device from `offset` (zeros past its end). */
export async function readAt(file: string, length: number, offset = 0): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, offset);
    return buffer;
  } finally {
    await handle.close();
  }
}
