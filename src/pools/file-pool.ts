// The `file` backend (docs/design.md "Pools"): a pool is a directory, each object
// a sparse raw file `<path>/objects/<name>.raw`. Clones go through the clone
// engine (FICLONE, else copy_file_range over data extents, else read/write).
//
// Commit protocol for every new object: write it under a temporary name in
// the same directory (`objects/.tmp-<name>-<random>.raw`), fsync it, publish
// it with renameat2(temp, final, RENAME_NOREPLACE), then fsync the directory.
// The rename fails with EEXIST when the final name exists, atomically, so the
// final name is never overwritten and of two racing writers exactly one wins
// (plain rename(2) would silently replace; check-then-rename races). Where
// the filesystem lacks RENAME_NOREPLACE (probed once at open), link(temp,
// final) + unlink(temp) gives the same guarantee in two steps: a crash
// between them leaves a complete, fsync'd object plus a second name for it
// under `.tmp-*`, which listTemporaries reports and removeTemporary unlinks
// without touching the object.
import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { link, mkdir, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';

import { throwIfAborted } from '../common/abort.js';
import { failpoint } from '../common/failpoints.js';
import type { CloneMethod } from '../clone/clone-file.js';
import { CLONE_METHODS, cloneFile, REFLINK_UNSUPPORTED } from '../clone/clone-file.js';
import { native } from '../native/binding.js';
import { isSystemError, systemError } from '../native/system-error.js';
import type {
  CloneOutcome, CloneRequest, ForeignObject, ObjectInfo, ObjectSink, Pool, PoolCapabilities, PoolCapacity, PopulateOutcome, PopulateRequest,
  ReceiveOutcome, ReceiveRequest,
} from './pool.js';
import { dataExtentsOf, isObjectName, sinkOf } from './pool.js';
import { SharedFsync } from './shared-fsync.js';
import { writeSparse } from './sparse-writer.js';

/** Objects live in the `objects/` subdirectory of the pool's `path`. */
export interface FilePoolOptions {
  name: string;
  path: string;
}

const OBJECT_SUFFIX = '.raw';
const TEMP_PREFIX = '.tmp-';
/** Temporaries this backend makes: `.tmp-<label>-<12 hex>.raw`. */
const TEMPORARY_NAME = /^\.tmp-[A-Za-z0-9._@-]*-[0-9a-f]{12}\.raw$/;
/** Longest label kept in a temporary's name, so it stays under NAME_MAX (255). */
const TEMP_LABEL_MAX = 200;
const NAME_MAX = 255;
/** Mode bits of writable and read-only objects. */
const MODE_WRITABLE = 0o644;
const MODE_READ_ONLY = 0o444;

function checkSize(sizeBytes: number, op: string, at: string): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) throw systemError('EINVAL', op, at);
}

async function unlinkIfPresent(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch (error) {
    if (!isSystemError(error, 'ENOENT')) throw error;
  }
}

export class FilePool implements Pool {
  readonly name: string;
  readonly backend = 'file';
  readonly objectKind = 'file' as const;
  readonly publishesWhole = true;
  readonly path: string;
  private readonly objectsDir: string;
  private probed: PoolCapabilities | undefined;
  /** renameat2(RENAME_NOREPLACE) works here (else publish links and unlinks). */
  private renameNoReplace = false;
  /** st_dev of `objects/`, known after open(): pools on one filesystem reflink between them. */
  private filesystemDevice: number | undefined;
  /** `objects/`, open from open() to close(): every publish fsyncs it. */
  private objectsDirHandle: FileHandle | undefined;
  /** The fsyncs of objects/, shared by the publishes and removes that ask at once. */
  private objectsDirSync: SharedFsync | undefined;

  constructor(config: FilePoolOptions) {
    this.name = config.name;
    this.path = path.resolve(config.path);
    this.objectsDir = path.join(this.path, 'objects');
  }

  /**
   * Fails fast when the pool directory is missing (ENOENT), not a directory
   * (ENOTDIR) or not writable (EACCES/EROFS; tried by creating a file, since
   * root passes access(2)); makes `objects/`; probes FICLONE and the publish method once.
   */
  async open(): Promise<void> {
    await this.openDirectory(this.path).then((dir) => dir.close());
    const probe = path.join(this.path, `.volagent-probe-${randomBytes(6).toString('hex')}`);
    await (await open(probe, 'wx', MODE_WRITABLE)).close();
    await unlink(probe);
    try {
      await mkdir(this.objectsDir);
      await this.syncDirectory(this.path);
    } catch (error) {
      if (!isSystemError(error, 'EEXIST')) throw error;
    }
    const objectsDir = await this.openDirectory(this.objectsDir);
    try {
      this.probed = await this.probeCapabilities();
    } catch (error) {
      await objectsDir.close();
      throw error;
    }
    await this.objectsDirHandle?.close();
    this.objectsDirHandle = objectsDir;
    this.objectsDirSync = new SharedFsync(() => native.fsync(objectsDir.fd, this.objectsDir));
    this.filesystemDevice = (await objectsDir.stat()).dev;
    // A publish cut off between its rename and the directory's fsync left an
    // entry that a power loss could still take: every object listed from
    // now on is durable (publishesWhole).
    await this.syncDirectory(this.objectsDir);
  }

  async close(): Promise<void> {
    const handle = this.objectsDirHandle;
    this.objectsDirHandle = undefined;
    this.objectsDirSync = undefined;
    await handle?.close();
  }

  capabilities(): PoolCapabilities {
    if (this.probed === undefined) throw new Error(`pool '${this.name}': capabilities() called before open()`);
    return { ...this.probed };
  }

  /** statfs(2) of the objects' filesystem; used counts blocks reserved for root as used. */
  async capacity(): Promise<PoolCapacity> {
    const s = await native.statfs(this.objectsDir);
    const totalBytes = s.blocks * s.frsize;
    return { totalBytes, usedBytes: totalBytes - s.bfree * s.frsize, freeBytes: s.bavail * s.frsize };
  }

  async create(name: string, sizeBytes: number): Promise<void> {
    const target = this.objectPath(name);
    checkSize(sizeBytes, 'create', target);
    await this.refuseExisting(target);
    const temp = this.temporaryPath(name);
    try {
      const handle = await open(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, MODE_WRITABLE);
      try {
        await handle.truncate(sizeBytes); // sparse: no blocks allocated
        await handle.chmod(MODE_WRITABLE); // exact bits whatever the umask
        await native.fsync(handle.fd, temp);
      } finally {
        await handle.close();
      }
      await this.publish(temp, target);
    } catch (error) {
      await unlinkIfPresent(temp).catch(() => undefined);
      throw error;
    }
  }

  async clone(source: string, target: string, request: CloneRequest = {}): Promise<CloneOutcome> {
    return this.cloneInto(this.objectPath(source), target, this.capabilities().constantTimeClone, request);
  }

  /**
   * FICLONE from the other pool's file where both share one filesystem
   * (EXDEV otherwise, and the engine copies); a thin source's allocation
   * bounds the copy to its provisioned blocks.
   */
  async cloneFrom(source: ForeignObject, target: string, request: CloneRequest = {}): Promise<CloneOutcome> {
    const extents = source.allocation && dataExtentsOf(source.allocation, source.sizeBytes);
    return this.cloneInto(source.path, target, false, request, extents);
  }

  /** Same filesystem as another file pool that reflinks: FICLONE works between their objects. */
  sharesBlocksWith(source: Pool): boolean {
    return source instanceof FilePool && source !== this && this.capabilities().reflink && source.capabilities().reflink
      && this.filesystemDevice !== undefined && this.filesystemDevice === source.filesystemDevice;
  }

  /** Makes `target` from the file or device at `sourcePath` (`cheap`: a reflink is expected, so no early EEXIST check). */
  private async cloneInto(sourcePath: string, target: string, cheap: boolean, request: CloneRequest,
    extents?: Array<[number, number]>): Promise<CloneOutcome> {
    const targetPath = this.objectPath(target);
    const { sizeBytes, readOnly = false, signal, onProgress } = request;
    if (sizeBytes !== undefined) checkSize(sizeBytes, 'clone', targetPath);
    throwIfAborted(signal);
    // A reflink costs little: the publish's EEXIST is enough. A copy is not made for nothing.
    if (!cheap) await this.refuseExisting(targetPath);
    const temp = this.temporaryPath(target);
    try {
      // The engine refuses a smaller size (EINVAL) before creating anything,
      // grows the file, sets the exact mode and fsyncs data, size and mode at once.
      const result = await cloneFile(sourcePath, temp, {
        fsync: true,
        methods: this.cloneMethods(),
        mode: readOnly ? MODE_READ_ONLY : MODE_WRITABLE,
        ...(sizeBytes !== undefined ? { growTo: sizeBytes } : {}),
        ...(extents ? { dataExtents: extents } : {}),
        ...(signal ? { signal } : {}),
        ...(onProgress ? { onProgress: (p) => onProgress(p.doneBytes, p.totalBytes) } : {}),
      });
      throwIfAborted(signal); // last point of no return: after publish the clone is done
      await this.publish(temp, targetPath);
      return { method: result.method, bytesCopied: result.bytesCopied };
    } catch (error) {
      await unlinkIfPresent(temp).catch(() => undefined);
      throw error;
    }
  }

  async receive(name: string, data: AsyncIterable<Uint8Array>, request: ReceiveRequest = {}): Promise<ReceiveOutcome> {
    const target = this.objectPath(name);
    await this.refuseExisting(target);
    const temp = this.temporaryPath(name);
    try {
      const handle = await open(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, MODE_WRITABLE);
      let outcome: ReceiveOutcome;
      try {
        outcome = await writeSparse(handle.fd, temp, data, {
          ...(request.maxBytes !== undefined ? { maxBytes: request.maxBytes } : {}),
          ...(request.onProgress ? { onProgress: request.onProgress } : {}),
        });
        await handle.truncate(outcome.sizeBytes); // a trailing zero run stays a hole
        await handle.chmod(request.readOnly ? MODE_READ_ONLY : MODE_WRITABLE);
        await native.fsync(handle.fd, temp); // every byte, the size and the mode before the name appears
      } finally {
        await handle.close();
      }
      await this.publish(temp, target);
      return outcome;
    } catch (error) {
      await unlinkIfPresent(temp).catch(() => undefined);
      throw error;
    }
  }

  /** Written into a temporary of the object's size (holes but where data is written), fsync'd, then published under its name. */
  async populate(name: string, sizeBytes: number, fill: (sink: ObjectSink) => Promise<void>, request: PopulateRequest = {}): Promise<PopulateOutcome> {
    const target = this.objectPath(name);
    checkSize(sizeBytes, 'populate', target);
    throwIfAborted(request.signal);
    await this.refuseExisting(target);
    const temp = this.temporaryPath(name);
    try {
      const handle = await open(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, MODE_WRITABLE);
      let bytesWritten = 0;
      try {
        await handle.truncate(sizeBytes);
        await fill(sinkOf(handle.fd, temp, sizeBytes, (written) => { bytesWritten += written; }));
        throwIfAborted(request.signal);
        await handle.chmod(request.readOnly ? MODE_READ_ONLY : MODE_WRITABLE);
        await native.fsync(handle.fd, temp); // every byte, the size and the mode before the name appears
      } finally {
        await handle.close();
      }
      throwIfAborted(request.signal); // last point of no return: after publish the object is done
      await this.publish(temp, target);
      return { bytesWritten };
    } catch (error) {
      await unlinkIfPresent(temp).catch(() => undefined);
      throw error;
    }
  }

  /**
   * The source cloned (FICLONE, else copied) into a temporary of the
   * object's size, fsync'd, then rename(2)d over the object: the name points
   * to the old inode or the new one, never a mix; the directory is fsync'd
   * so the new one stays. A crash before the rename leaves a temporary for
   * the start-up sweep. Descriptors open on the old file (none: the domain
   * refuses an exported volume) would go on seeing the old content.
   */
  async revert(name: string, source: string): Promise<CloneOutcome> {
    const targetPath = this.objectPath(name);
    const sourcePath = this.objectPath(source);
    const current = await stat(targetPath);
    if ((current.mode & 0o222) === 0) throw systemError('EPERM', 'revert', targetPath);
    const temp = this.temporaryPath(name);
    try {
      // The engine refuses a source larger than growTo (EINVAL) before creating anything.
      const result = await cloneFile(sourcePath, temp, { fsync: true, methods: this.cloneMethods(), mode: MODE_WRITABLE, growTo: current.size });
      failpoint('file.revert-synced');
      await rename(temp, targetPath);
      failpoint('file.revert-renamed');
      await this.syncDirectory(this.objectsDir);
      return { method: result.method, bytesCopied: result.bytesCopied };
    } catch (error) {
      await unlinkIfPresent(temp).catch(() => undefined);
      throw error;
    }
  }

  /** Grows an object (ftruncate keeps the new range a hole); smaller is EINVAL, equal a no-op. */
  async resize(name: string, sizeBytes: number): Promise<void> {
    const target = this.objectPath(name);
    checkSize(sizeBytes, 'resize', target);
    const current = await stat(target);
    if (sizeBytes < current.size) throw systemError('EINVAL', 'resize', target);
    if (sizeBytes === current.size) return;
    // Root ignores mode bits, so a read-only object is refused here rather than by open(2).
    if ((current.mode & 0o222) === 0) throw systemError('EPERM', 'resize', target);
    const handle = await open(target, fsConstants.O_WRONLY);
    try {
      await handle.truncate(sizeBytes);
      failpoint('file.resize-truncated');
      await native.fsync(handle.fd, target);
      failpoint('file.resized');
    } finally {
      await handle.close();
    }
  }

  /**
   * Read-only is the file mode (0444 vs 0644). Root, which the agent usually
   * is, ignores mode bits: the agent's API, not the kernel, enforces that a
   * read-only object is never written (exports, resize); the mode records the
   * flag durably and protects against other local users.
   */
  async setReadOnly(name: string, readOnly: boolean): Promise<void> {
    const target = this.objectPath(name);
    const handle = await open(target, fsConstants.O_RDONLY);
    try {
      await handle.chmod(readOnly ? MODE_READ_ONLY : MODE_WRITABLE);
      failpoint('file.mode-changed');
      await native.fsync(handle.fd, target);
      failpoint('file.mode-synced');
    } finally {
      await handle.close();
    }
  }

  async remove(name: string): Promise<void> {
    await unlinkIfPresent(this.objectPath(name));
    failpoint('file.unlinked');
    await this.syncDirectory(this.objectsDir);
    failpoint('file.removed');
  }

  async stat(name: string): Promise<ObjectInfo | undefined> {
    const target = this.objectPath(name);
    try {
      const s = await stat(target);
      return { sizeBytes: s.size, allocatedBytes: s.blocks * 512, readOnly: (s.mode & 0o222) === 0 };
    } catch (error) {
      if (isSystemError(error, 'ENOENT')) return undefined;
      throw error;
    }
  }

  async list(): Promise<string[]> {
    const entries = await readdir(this.objectsDir, { withFileTypes: true });
    return entries
      .filter((e) => e.isFile() && e.name.endsWith(OBJECT_SUFFIX))
      .map((e) => e.name.slice(0, -OBJECT_SUFFIX.length))
      .filter(isObjectName)
      .sort();
  }

  /** File names (in `objects/`) of temporaries left by interrupted operations. */
  async listTemporaries(): Promise<string[]> {
    const entries = await readdir(this.objectsDir, { withFileTypes: true });
    return entries.filter((e) => e.isFile() && TEMPORARY_NAME.test(e.name)).map((e) => e.name).sort();
  }

  async removeTemporary(temporary: string): Promise<void> {
    if (!TEMPORARY_NAME.test(temporary)) throw systemError('EINVAL', 'unlink', temporary);
    await unlinkIfPresent(path.join(this.objectsDir, temporary));
    await this.syncDirectory(this.objectsDir);
  }

  /** Throws EINVAL for a name outside OBJECT_NAME, ENAMETOOLONG when `<name>.raw` exceeds NAME_MAX. */
  objectPath(name: string): string {
    if (typeof name !== 'string' || !isObjectName(name)) throw systemError('EINVAL', 'open', String(name));
    const file = name + OBJECT_SUFFIX;
    if (Buffer.byteLength(file) > NAME_MAX) throw systemError('ENAMETOOLONG', 'open', path.join(this.objectsDir, file));
    return path.join(this.objectsDir, file);
  }

  private temporaryPath(label: string): string {
    return path.join(this.objectsDir, `${TEMP_PREFIX}${label.slice(0, TEMP_LABEL_MAX)}-${randomBytes(6).toString('hex')}${OBJECT_SUFFIX}`);
  }

  /** The engine's methods here: FICLONE is not tried (it would create a file to unlink) where the filesystem has no reflink. */
  private cloneMethods(): readonly CloneMethod[] {
    return this.capabilities().reflink ? CLONE_METHODS : CLONE_METHODS.filter((m) => m !== 'reflink');
  }

  /** Cheap early EEXIST so a long copy is not made for nothing; publish is the real guard. */
  private async refuseExisting(target: string): Promise<void> {
    try {
      await stat(target);
    } catch (error) {
      if (isSystemError(error, 'ENOENT')) return;
      throw error;
    }
    throw systemError('EEXIST', 'link', target);
  }

  /**
   * Makes the fsync'd `temp` visible as `target`, never replacing it (EEXIST
   * when target exists). The directory is fsync'd so the new entry survives
   * a power loss; if that fails the object is withdrawn.
   */
  private async publish(temp: string, target: string): Promise<void> {
    failpoint('file.temp-synced');
    try {
      if (this.renameNoReplace) {
        await native.renameNoReplace(temp, target);
      } else {
        await link(temp, target);
        await unlink(temp);
      }
    } catch (error) {
      if (isSystemError(error, 'EEXIST')) throw systemError('EEXIST', 'rename', target);
      throw error;
    }
    try {
      failpoint('file.renamed');
      await this.syncDirectory(this.objectsDir);
    } catch (error) {
      await unlinkIfPresent(target).catch(() => undefined);
      throw error;
    }
    failpoint('file.published');
  }

  /** Opens a directory (O_DIRECTORY: ENOTDIR for anything else, ENOENT when absent). */
  private openDirectory(dir: string): Promise<FileHandle> {
    return open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  }

  /** fsync(2) on a directory fd makes its entries (creates, links, unlinks) durable. */
  private async syncDirectory(dir: string): Promise<void> {
    if (dir === this.objectsDir && this.objectsDirSync) {
      await this.objectsDirSync.request();
      return;
    }
    const handle = await this.openDirectory(dir);
    try {
      await native.fsync(handle.fd, dir);
    } finally {
      await handle.close();
    }
  }

  /**
   * One FICLONE between two probe files decides reflink support. Publishing
   * is probed the same way: renameat2(RENAME_NOREPLACE) of one probe onto a
   * new name, then of another onto that name (which must be EEXIST); where
   * the flag is not supported (EINVAL), link(2) must work instead.
   */
  private async probeCapabilities(): Promise<PoolCapabilities> {
    const [source, dest, renamed, linked] = [1, 2, 3, 4].map(() => this.temporaryPath('probe')) as [string, string, string, string];
    let src: FileHandle | undefined;
    let dst: FileHandle | undefined;
    try {
      src = await open(source, 'wx+', MODE_WRITABLE);
      await src.write(Buffer.alloc(4096, 0xa5), 0, 4096, 0);
      dst = await open(dest, 'wx', MODE_WRITABLE);
      this.renameNoReplace = await this.probeRenameNoReplace(dest, renamed, source);
      if (!this.renameNoReplace) await link(source, linked);
      try {
        await native.ficlone(dst.fd, src.fd, source, dest);
        return { reflink: true, constantTimeClone: true, sizeAlignmentBytes: 1 };
      } catch (error) {
        if (isSystemError(error, ...REFLINK_UNSUPPORTED)) return { reflink: false, constantTimeClone: false, sizeAlignmentBytes: 1 };
        throw error;
      }
    } finally {
      await src?.close().catch(() => undefined);
      await dst?.close().catch(() => undefined);
      for (const file of [source, dest, renamed, linked]) await unlinkIfPresent(file).catch(() => undefined);
    }
  }

  /** Renames `from` to the new name `to`, then checks `other` cannot replace it. False where the flag is unsupported. */
  private async probeRenameNoReplace(from: string, to: string, other: string): Promise<boolean> {
    try {
      await native.renameNoReplace(from, to);
    } catch (error) {
      if (isSystemError(error, 'EINVAL', 'ENOSYS')) return false;
      throw error;
    }
    try {
      await native.renameNoReplace(other, to);
    } catch (error) {
      if (isSystemError(error, 'EEXIST')) return true;
      throw error;
    }
    throw new Error(`pool '${this.name}': renameat2(RENAME_NOREPLACE) replaced an existing file in ${this.objectsDir}`);
  }
}
