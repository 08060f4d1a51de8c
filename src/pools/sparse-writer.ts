// Writes a byte stream into a fresh sparse file: incoming chunks are copied
// into one of two staging buffers whose file offsets are multiples of the
// staging size, so every zero-detection block is aligned in the file; a full
// buffer is written on the libuv pool (native.writeData, which skips all-zero
// blocks) while the other one fills. At most two buffers are alive, whatever
// the stream's length: the reader waits (backpressure) while both are busy.
// Each written buffer's writeback is started at once (sync_file_range), so
// the caller's final fsync waits for the last few MiB, not the whole file,
// and dirty pages do not pile up in the page cache.
import { failpoint } from '../common/failpoints.js';
import { native } from '../native/binding.js';
import { systemError } from '../native/system-error.js';

/** Zero runs are detected per 4 KiB, the usual filesystem block: smaller holes would not be holes. */
export const ZERO_BLOCK_BYTES = 4096;
export const STAGING_BYTES = 4 * 1024 * 1024;

/** Staging buffers kept between writes (two: one upload's worth), so uploads do not churn 4 MiB allocations. */
const idleStaging: Buffer[] = [];
const IDLE_STAGING_MAX = 2;

function takeStaging(): Buffer {
  return idleStaging.pop() ?? Buffer.allocUnsafe(STAGING_BYTES);
}

function returnStaging(buffers: Buffer[]): void {
  for (const buffer of buffers) if (idleStaging.length < IDLE_STAGING_MAX) idleStaging.push(buffer);
}

export interface SparseWriteResult {
  /** Bytes received: the file's size. */
  sizeBytes: number;
  /** Bytes actually written (the rest were zero blocks left as holes). */
  bytesWritten: number;
}

export interface SparseWriteOptions {
  /** More bytes than this is EFBIG, raised the moment the stream passes it. */
  maxBytes?: number;
  onProgress?: (receivedBytes: number) => void;
}

/**
 * Writes `data` into `fd` (a fresh, empty file opened for writing) from
 * offset 0. Zero blocks at the end are not written either: the caller sets
 * the file's size to `sizeBytes` (ftruncate) and decides when it is durable.
 */
export async function writeSparse(fd: number, path: string, data: AsyncIterable<Uint8Array>, options: SparseWriteOptions = {}): Promise<SparseWriteResult> {
  const maxBytes = options.maxBytes ?? Number.MAX_SAFE_INTEGER;
  const spare: Buffer[] = [takeStaging(), takeStaging()];
  let staging = spare.pop()!;
  let filled = 0;
  /** File offset of staging[0]. */
  let base = 0;
  let bytesWritten = 0;
  let inFlight: Promise<void> | undefined;

  const flush = async (): Promise<void> => {
    const buffer = staging;
    const length = filled;
    const offset = base;
    if (inFlight) await inFlight; // the other buffer is free once its write is done
    staging = spare.pop()!;
    base += length;
    filled = 0;
    inFlight = native.writeData(fd, length === buffer.length ? buffer : buffer.subarray(0, length), offset, ZERO_BLOCK_BYTES, true, path)
      .then((written) => {
        bytesWritten += written;
        spare.push(buffer);
      });
    // A failed write surfaces at the next flush or at the end; until then it must not be unhandled.
    inFlight.catch(() => undefined);
  };

  try {
    for await (const chunk of data) {
      let position = 0;
      if (base + filled + chunk.length > maxBytes) throw systemError('EFBIG', 'write', path);
      while (position < chunk.length) {
        const take = Math.min(chunk.length - position, staging.length - filled);
        staging.set(chunk.subarray(position, position + take), filled);
        filled += take;
        position += take;
        if (filled === staging.length) {
          await flush();
          if (base === staging.length) failpoint('upload.receiving'); // once: the first block is on its way
        }
      }
      options.onProgress?.(base + filled);
    }
    if (filled > 0) await flush();
  } finally {
    // Never leave a write running on a buffer or descriptor the caller is about to drop.
    if (inFlight) await inFlight.catch(() => undefined);
    returnStaging([staging, ...spare]); // a buffer whose write failed is not returned: it is simply dropped
  }
  await inFlight; // rethrows a failed last write
  return { sizeBytes: base, bytesWritten };
}
