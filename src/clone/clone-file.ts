// The clone engine: make `destination` a copy of `source` by the cheapest
// method the kernel allows. FICLONE shares every block (constant time);
// otherwise copy_file_range moves only the data extents (holes stay holes);
// otherwise pread/pwrite does, skipping blocks that read as zero. The next
// method is tried only on error codes that mean "not possible here".
import type { FileHandle } from 'node:fs/promises';
import { constants as fsConstants, open, stat, unlink } from 'node:fs/promises';

import { failpointAsync } from '../common/failpoints.js';
import { native } from '../native/binding.js';
import { isSystemError, systemError } from '../native/system-error.js';
import { throwIfAborted } from '../common/abort.js';
import { dataExtents } from './extents.js';

export type CloneMethod = 'reflink' | 'copy_file_range' | 'read_write';

export const CLONE_METHODS: readonly CloneMethod[] = ['reflink', 'copy_file_range', 'read_write'];

export interface CloneProgress {
  method: CloneMethod;
  /** Logical bytes of the source dealt with so far (holes count as done). */
  doneBytes: number;
  totalBytes: number;
  /** Bytes moved by copying so far. */
  bytesCopied: number;
}

export interface CloneOptions {
  signal?: AbortSignal;
  onProgress?: (progress: CloneProgress) => void;
  /** Methods the engine may use, in the engine's order. Default: all. */
  methods?: readonly CloneMethod[];
  /** fsync the destination before returning (its directory is the caller's). */
  fsync?: boolean;
  /** Upper bound of one native copy step. Default 32 MiB. */
  stepBytes?: number;
  /**
   * Mode of a created destination file, set exactly (fchmod: the umask does
   * not apply). Default: the source's permission bits, under the umask.
   */
  mode?: number;
  /**
   * Size a created destination file ends with, when larger than the source
   * (the added range is a hole). Smaller than the source is EINVAL, before
   * anything is created.
   */
  growTo?: number;
  /**
   * The source's data extents as [offset, length], in order, when the caller
   * knows them better than SEEK_DATA can tell (a thin device's provisioned
   * blocks); the rest of the source is taken to read as zeros.
   */
  dataExtents?: ReadonlyArray<readonly [number, number]>;
  /**
   * A block-device destination already reads as zeros everywhere (a fresh
   * thin device): holes are left unwritten and all-zero blocks are skipped,
   * so no block is provisioned for zeros.
   */
  zeroedDestination?: boolean;
}

export interface CloneResult {
  method: CloneMethod;
  /** Bytes whose data was copied (0 for a reflink, which shares them). */
  bytesCopied: number;
  /** Logical size of the source. */
  bytesTotal: number;
}

const DEFAULT_STEP_BYTES = 32 * 1024 * 1024;
const ZERO_STEP_BYTES = 256 * 1024 * 1024;
/** Granularity at which read/write copies detect zero blocks: a page, the usual filesystem block. */
const ZERO_DETECT_BYTES = 4096;

/** FICLONE fails with these where reflink is impossible: other filesystem, no support, unaligned, not a regular file. */
export const REFLINK_UNSUPPORTED: readonly string[] = ['EXDEV', 'EOPNOTSUPP', 'ENOTSUP', 'EINVAL', 'ENOTTY', 'ENOSYS', 'EBADF'];
/** copy_file_range fails with these where only read/write can work (block devices, old kernels, special files). */
const COPY_RANGE_UNSUPPORTED = ['EXDEV', 'EOPNOTSUPP', 'ENOTSUP', 'EINVAL', 'ENOSYS', 'EBADF', 'ESPIPE'];

interface Endpoint {
  handle: FileHandle;
  path: string;
  kind: 'file' | 'block';
  size: number;
  /** Permission bits. */
  mode: number;
}

async function openSource(path: string): Promise<Endpoint> {
  const handle = await open(path, fsConstants.O_RDONLY);
  try {
    const stat = await handle.stat();
    if (stat.isDirectory()) throw systemError('EISDIR', 'open', path);
    const mode = stat.mode & 0o7777;
    if (stat.isBlockDevice()) return { handle, path, kind: 'block', size: await native.blkGetSize64(handle.fd, path), mode };
    if (!stat.isFile()) throw systemError('EINVAL', 'open', path);
    return { handle, path, kind: 'file', size: stat.size, mode };
  } catch (error) {
    await handle.close();
    throw error;
  }
}

/**
 * A regular-file destination must not exist and is created exclusively; an
 * existing block device is written in place and must hold the source.
 */
async function openDestination(path: string, source: Endpoint, mode: number): Promise<Endpoint & { created: boolean }> {
  try {
    const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL;
    const handle = await open(path, flags, mode);
    return { handle, path, kind: 'file', size: 0, mode, created: true };
  } catch (error) {
    if (!isSystemError(error, 'EEXIST', 'EISDIR')) throw error;
    const existing = await stat(path).catch(() => undefined);
    if (existing?.isDirectory()) throw systemError('EISDIR', 'open', path);
    if (!existing?.isBlockDevice()) throw error;
  }
  const handle = await open(path, fsConstants.O_WRONLY);
  try {
    const size = await native.blkGetSize64(handle.fd, path);
    if (size < source.size) throw systemError('ENOSPC', 'open', source.path, path);
    return { handle, path, kind: 'block', size, mode: source.mode, created: false };
  } catch (error) {
    await handle.close();
    throw error;
  }
}

/** Makes [offset, offset + length) of a block device read as zeroes: BLKZEROOUT on whole sectors, pwrite at the edges. */
async function zeroBlockRange(dest: Endpoint, offset: number, length: number, sectorSize: number, signal?: AbortSignal): Promise<void> {
  const end = offset + length;
  const alignedStart = Math.ceil(offset / sectorSize) * sectorSize;
  const alignedEnd = Math.floor(end / sectorSize) * sectorSize;
  if (alignedStart >= alignedEnd) {
    await dest.handle.write(Buffer.alloc(length), 0, length, offset);
    return;
  }
  if (alignedStart > offset) await dest.handle.write(Buffer.alloc(alignedStart - offset), 0, alignedStart - offset, offset);
  for (let at = alignedStart; at < alignedEnd; at += ZERO_STEP_BYTES) {
    throwIfAborted(signal);
    await native.blkZeroOut(dest.handle.fd, at, Math.min(ZERO_STEP_BYTES, alignedEnd - at), dest.path);
  }
  if (end > alignedEnd) await dest.handle.write(Buffer.alloc(end - alignedEnd), 0, end - alignedEnd, alignedEnd);
}

class ExtentCopier {
  method: CloneMethod;
  bytesCopied = 0;

  constructor(
    private readonly source: Endpoint,
    private readonly dest: Endpoint,
    private readonly allowed: readonly CloneMethod[],
    private readonly options: CloneOptions,
  ) {
    this.method = allowed.includes('copy_file_range') ? 'copy_file_range' : 'read_write';
  }

  /** Copies the data of [offset, offset + length) in bounded steps. */
  async copyExtent(offset: number, length: number): Promise<void> {
    const step = this.options.stepBytes ?? DEFAULT_STEP_BYTES;
    const end = offset + length;
    for (let at = offset; at < end; ) {
      throwIfAborted(this.options.signal);
      const want = Math.min(step, end - at);
      const moved = await this.copyStep(at, want);
      if (moved === 0) return; // the source ended early (it shrank while we copied)
      at += moved;
      this.options.onProgress?.({ method: this.method, doneBytes: at, totalBytes: this.source.size, bytesCopied: this.bytesCopied });
    }
  }

  private async copyStep(offset: number, length: number): Promise<number> {
    const { source, dest } = this;
    if (this.method === 'copy_file_range') {
      try {
        const copied = await native.copyFileRange(source.handle.fd, offset, dest.handle.fd, offset, length, source.path, dest.path);
        this.bytesCopied += copied;
        return copied;
      } catch (error) {
        if (!isSystemError(error, ...COPY_RANGE_UNSUPPORTED) || !this.allowed.includes('read_write')) throw error;
        this.method = 'read_write';
      }
    }
    // A fresh file destination reads as zeroes everywhere: zero blocks need not be written.
    const skipZero = dest.kind === 'file' || this.options.zeroedDestination ? ZERO_DETECT_BYTES : 0;
    const { bytesRead, bytesWritten } = await native.copyByReadWrite(
      source.handle.fd, offset, dest.handle.fd, offset, length, skipZero, source.path, dest.path);
    this.bytesCopied += bytesWritten;
    return bytesRead;
  }
}

/** The extents the caller gave, else the source's own (SEEK_DATA). */
async function* sourceExtents(source: Endpoint, options: CloneOptions): AsyncGenerator<readonly [number, number]> {
  if (options.dataExtents === undefined) {
    yield* dataExtents(source.handle.fd, source.size, source.path);
    return;
  }
  for (const [offset, length] of options.dataExtents) {
    const end = Math.min(offset + length, source.size);
    if (end > offset) yield [offset, end - offset];
  }
}

async function copyDataExtents(source: Endpoint, dest: Endpoint, allowed: readonly CloneMethod[], options: CloneOptions): Promise<CloneResult> {
  const copier = new ExtentCopier(source, dest, allowed, options);
  const sectorSize = dest.kind === 'block' ? await native.blkSszGet(dest.handle.fd, dest.path) : 0;
  if (dest.kind === 'file') await dest.handle.truncate(source.size);
  // A block destination that does not read as zeros has its holes zeroed.
  const zeroHoles = dest.kind === 'block' && !options.zeroedDestination;
  let covered = 0;
  for await (const [offset, length] of sourceExtents(source, options)) {
    if (zeroHoles && offset > covered) await zeroBlockRange(dest, covered, offset - covered, sectorSize, options.signal);
    await copier.copyExtent(offset, length);
    if (covered === 0) await failpointAsync('clone.copying', options.signal); // once: a part of the data is in the destination
    covered = offset + length;
  }
  if (zeroHoles && covered < source.size) await zeroBlockRange(dest, covered, source.size - covered, sectorSize, options.signal);
  options.onProgress?.({ method: copier.method, doneBytes: source.size, totalBytes: source.size, bytesCopied: copier.bytesCopied });
  return { method: copier.method, bytesCopied: copier.bytesCopied, bytesTotal: source.size };
}

async function tryReflink(source: Endpoint, dest: Endpoint): Promise<boolean> {
  try {
    await native.ficlone(dest.handle.fd, source.handle.fd, source.path, dest.path);
    return true;
  } catch (error) {
    if (isSystemError(error, ...REFLINK_UNSUPPORTED)) return false;
    throw error;
  }
}

/**
 * The common case in one pool job (native.reflinkNewFile): a new file
 * destination, an exact mode, FICLONE. Undefined where it does not apply
 * (no reflink here, a block device on either side, an existing destination,
 * a source larger than growTo): the general path then decides, and makes
 * the same refusals before it creates anything.
 */
async function reflinkNewFile(sourcePath: string, destinationPath: string, allowed: readonly CloneMethod[], options: CloneOptions): Promise<CloneResult | undefined> {
  if (!allowed.includes('reflink') || options.mode === undefined || options.dataExtents !== undefined) return undefined;
  let size: number;
  try {
    size = await native.reflinkNewFile(sourcePath, destinationPath, options.mode, options.growTo ?? 0, options.fsync ?? false);
  } catch (error) {
    if (isSystemError(error, ...REFLINK_UNSUPPORTED, 'EEXIST', 'EISDIR')) return undefined;
    throw error;
  }
  // The source's size: FICLONE gave the destination exactly it, before any growTo.
  const sourceSize = options.growTo === undefined ? size : (await stat(sourcePath)).size;
  options.onProgress?.({ method: 'reflink', doneBytes: sourceSize, totalBytes: sourceSize, bytesCopied: 0 });
  return { method: 'reflink', bytesCopied: 0, bytesTotal: sourceSize };
}

/**
 * Copies `sourcePath` to `destinationPath` (a new file, or an existing block
 * device at least as large as the source). On any failure or abort a created
 * destination file is removed; the source is only ever read.
 */
export async function cloneFile(sourcePath: string, destinationPath: string, options: CloneOptions = {}): Promise<CloneResult> {
  throwIfAborted(options.signal);
  const allowed = options.methods ?? CLONE_METHODS;
  if (allowed.length === 0) throw new TypeError('cloneFile: options.methods must name at least one method');
  const shared = await reflinkNewFile(sourcePath, destinationPath, allowed, options);
  if (shared) return shared;
  const source = await openSource(sourcePath);
  let dest: (Endpoint & { created: boolean }) | undefined;
  try {
    if (options.growTo !== undefined && !(Number.isSafeInteger(options.growTo) && options.growTo >= source.size)) {
      throw systemError('EINVAL', 'clone', sourcePath, destinationPath);
    }
    dest = await openDestination(destinationPath, source, options.mode ?? source.mode);
    if (dest.created && options.mode !== undefined) await dest.handle.chmod(options.mode);
    let result: CloneResult;
    if (allowed.includes('reflink') && source.kind === 'file' && dest.kind === 'file' && (await tryReflink(source, dest))) {
      result = { method: 'reflink', bytesCopied: 0, bytesTotal: source.size };
      options.onProgress?.({ method: 'reflink', doneBytes: source.size, totalBytes: source.size, bytesCopied: 0 });
    } else {
      const copyMethods = allowed.filter((m) => m !== 'reflink');
      if (copyMethods.length === 0) throw systemError('EOPNOTSUPP', 'ficlone', sourcePath, destinationPath);
      result = await copyDataExtents(source, dest, copyMethods, options);
    }
    throwIfAborted(options.signal);
    if (dest.created && options.growTo !== undefined && options.growTo > source.size) await dest.handle.truncate(options.growTo);
    if (options.fsync) await native.fsync(dest.handle.fd, dest.path);
    return result;
  } catch (error) {
    if (dest?.created) {
      await dest.handle.close().catch(() => undefined);
      await unlink(destinationPath).catch(() => undefined);
      dest = undefined;
    }
    throw error;
  } finally {
    await Promise.all([dest?.handle.close(), source.handle.close()]);
  }
}
