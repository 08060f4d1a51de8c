// Copies an NBD export's data into a destination that reads as zeros where it
// is not written (a fresh sparse file, a fresh thin volume): base:allocation
// block status is walked over the whole export, extents the server marks
// NBD_STATE_ZERO are skipped, and the rest is read in chunks, several in
// flight, each handed to the caller's sink at its offset. A hole the server
// does not also mark ZERO is read like data: proto.md leaves its content
// undefined rather than zero. Without base:allocation the whole export is
// data. A chunk that reads as all zeros is not handed to the sink.
import { abortError } from '../common/abort.js';
import { AllocationState } from '../exports/nbd/protocol.js';
import { native } from '../native/binding.js';
import { MAX_BLOCK_STATUS_BYTES } from './nbd-client.js';
import type { NbdExtent, NbdRequestOptions } from './nbd-client.js';

/** What pullExtents needs of a client (NbdClient has it). */
export interface PullSource {
  readonly sizeBytes: number;
  readonly maxPayloadBytes: number;
  readonly minBlockBytes: number;
  read(offset: number, length: number, options?: NbdRequestOptions): Promise<Buffer>;
  blockStatus(offset: number, length: number, options?: NbdRequestOptions): Promise<NbdExtent[]>;
}

/** Where the chunks go. Writes may overlap in time (never in range); a rejected write ends the pull. */
export interface PullSink {
  write(data: Buffer, offset: number): Promise<void>;
}

export interface PullOptions {
  /** Aborting rejects the pull at once with an AbortError (writes already started finish first). */
  signal?: AbortSignal;
  /** After each chunk: bytes of data done (written or skipped as zeros), data bytes found by block status so far. */
  onProgress?: (copiedBytes: number, dataBytesKnownSoFar: number) => void;
  /** Bytes per read; default 1 MiB, never above the client's maxPayloadBytes. */
  chunkBytes?: number;
  /** Reads in flight; default 8. */
  queueDepth?: number;
}

export interface PullResult {
  sizeBytes: number;
  /** Bytes read from the server: the extents not marked ZERO. */
  dataBytes: number;
  /** Runs of adjacent data extents read. */
  extents: number;
  /** Of dataBytes, the chunks that read as all zeros and were not handed to the sink. */
  zeroBytesSkipped: number;
  /** Handed to the sink: dataBytes - zeroBytesSkipped. */
  writtenBytes: number;
}

/**
 * 1 MiB reads, 8 in flight: 8 MiB stays under volagentd's NBD server limit of
 * 16 MiB of reads in flight per connection (held until each reply has gone
 * into the socket), so the server never stalls the connection's reads, and a
 * read's disk time overlaps the others' sending. With 4 MiB reads (the
 * limit reached by 4) the copy took 1.3 to 4 times as long between two
 * hosts, TLS or plain (docs/bench-remote.md).
 */
export const DEFAULT_CHUNK_BYTES = 1024 * 1024;
export const DEFAULT_QUEUE_DEPTH = 8;

interface Piece {
  offset: number;
  length: number;
}

/** Copies the data of `source` into `sink`; resolves once every write has finished, rejects with the first failure after the writes in progress have. */
export async function pullExtents(source: PullSource, sink: PullSink, options: PullOptions = {}): Promise<PullResult> {
  const queueDepth = options.queueDepth ?? DEFAULT_QUEUE_DEPTH;
  if (!Number.isInteger(queueDepth) || queueDepth < 1) throw new RangeError(`queueDepth must be a positive integer, not ${queueDepth}`);
  const wanted = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  if (!Number.isInteger(wanted) || wanted < 1) throw new RangeError(`chunkBytes must be a positive integer, not ${wanted}`);
  const min = source.minBlockBytes;
  const capped = Math.min(wanted, source.maxPayloadBytes);
  const chunkBytes = capped - (capped % min);
  if (chunkBytes < 1) throw new RangeError(`chunkBytes ${wanted} is below the server's minimum block size ${min}`);

  // One failure (or the caller's abort) stops every other request at once.
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  const size = source.sizeBytes;
  const zeros = Buffer.alloc(Math.min(chunkBytes, size));
  let dataBytes = 0;
  let extents = 0;
  let copied = 0;
  let zeroBytesSkipped = 0;

  async function* pieces(): AsyncGenerator<Piece> {
    /** The data run being cut into chunks: [offset, offset + length), ending where block status has reached. */
    let run: Piece | undefined;
    let at = 0;
    while (at < size) {
      const status = await source.blockStatus(at, Math.min(MAX_BLOCK_STATUS_BYTES, size - at), { signal });
      for (const extent of status) {
        if (extent.flags & AllocationState.ZERO) {
          if (run) yield* cut(run, run.length);
          run = undefined;
        } else {
          dataBytes += extent.length;
          if (run) run.length += extent.length;
          else {
            run = { offset: at, length: extent.length };
            extents++;
          }
        }
        at += extent.length;
      }
      // The run may go on in the next answer: only whole chunks of it are cut now.
      if (run) yield* cut(run, run.length - (run.length % chunkBytes));
    }
    if (run) yield* cut(run, run.length);
  }

  /** Yields the first `bytes` of `run` as chunks and takes them off it. */
  function* cut(run: Piece, bytes: number): Generator<Piece> {
    const end = run.offset + bytes;
    while (run.offset < end) {
      const length = Math.min(chunkBytes, end - run.offset);
      yield { offset: run.offset, length };
      run.offset += length;
      run.length -= length;
    }
  }

  const queue = pieces();
  let failure: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    for (;;) {
      if (failure) return;
      const next = await queue.next(); // concurrent next() calls are served in turn by the generator
      if (next.done) return;
      const { offset, length } = next.value;
      const data = await source.read(offset, length, { signal });
      if (signal.aborted) throw abortError(signal); // never a write after the pull has stopped
      if (data.equals(zeros.subarray(0, length))) zeroBytesSkipped += length;
      else await sink.write(data, offset);
      copied += length;
      options.onProgress?.(copied, dataBytes);
    }
  };
  await Promise.all(Array.from({ length: queueDepth }, () => worker().catch((error: unknown) => {
    failure ??= { error };
    stop.abort();
  })));
  if (failure) {
    if (options.signal?.aborted) throw abortError(options.signal);
    throw failure.error;
  }
  return { sizeBytes: size, dataBytes, extents, zeroBytesSkipped, writtenBytes: dataBytes - zeroBytesSkipped };
}

export interface FdSinkOptions {
  /** Labels errors. */
  path?: string;
  /** Blocks of this size that are all zero are not written (the destination reads zeros there already); 0 writes everything. Default 4096. */
  skipZeroBlockBytes?: number;
  /** Start writeback of each chunk at once (sync_file_range), so a final fsync waits for little. Default true. */
  startWriteback?: boolean;
}

export interface FdSink extends PullSink {
  /** Bytes actually written (zero blocks skipped are not counted). */
  readonly bytesWritten: number;
}

/**
 * A sink that pwrites into `fd` (a file or a block device, opened without
 * O_DIRECT) on the libuv pool, through the addon's writeData. The caller owns
 * the fd, makes the result durable (fsync) and closes it after the pull.
 */
export function writeToFd(fd: number, options: FdSinkOptions = {}): FdSink {
  const skip = options.skipZeroBlockBytes ?? 4096;
  const startWriteback = options.startWriteback ?? true;
  let bytesWritten = 0;
  return {
    get bytesWritten() { return bytesWritten; },
    async write(data: Buffer, offset: number): Promise<void> {
      const written = await native.writeData(fd, data, offset, skip, startWriteback, options.path);
      bytesWritten += written; // after the await: writes run concurrently
    },
  };
}
