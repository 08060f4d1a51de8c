// Types of the C++ addon's exports (native/*.cc). Offsets and lengths are
// bytes as JavaScript numbers (exact up to 2^53). The trailing path arguments
// only label errors; the kernel works on the file descriptors.

export interface DataExtentBatch {
  /** [offset, length] pairs of data, in order, clipped to [start, end). */
  extents: Array<[number, number]>;
  /** Where the next call should start; equals `end` when the range is done. */
  next: number;
}

export interface FiemapExtent {
  logical: number;
  physical: number;
  length: number;
  flags: number;
}

export interface StatfsResult {
  type: number;
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namelen: number;
}

export interface DmVersion {
  major: number;
  minor: number;
  patch: number;
}

export interface DmDevice {
  name: string;
  major: number;
  minor: number;
}

/** What device-mapper answers about one device (struct dm_ioctl). */
export interface DmDeviceInfo {
  name: string;
  uuid: string;
  major: number;
  minor: number;
  openCount: number;
  targetCount: number;
  eventNr: number;
  suspended: boolean;
  readOnly: boolean;
  /** A table is live. */
  activeTable: boolean;
  /** A loaded table waits for resume. */
  inactiveTable: boolean;
}

/** One line of a device-mapper table, in 512-byte sectors: `start length type params`. */
export interface DmTarget {
  start: number;
  length: number;
  type: string;
  params: string;
}

/** What a loop device is bound to (LOOP_GET_STATUS64). */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
  /** Supplementary groups (SO_PEERGROUPS). */
  groups: number[];
}

export type SocketName =
  | { family: 'unix'; path: string }
  | { family: 'inet' | 'inet6'; address: string; port: number }
  | { family: 'other' };

export interface LoopStatus {
  number: number;
  major: number;
  minor: number;
  /** As recorded at attach time (lo_file_name, at most 63 bytes). */
  backingFile: string;
  offset: number;
  sizeLimit: number;
  readOnly: boolean;
  autoclear: boolean;
  directIo: boolean;
}

export interface LoopFlags {
  READ_ONLY: number;
  AUTOCLEAR: number;
  DIRECT_IO: number;
}

export interface FileConstants {
  FALLOC_FL_KEEP_SIZE: number;
  FALLOC_FL_PUNCH_HOLE: number;
  FALLOC_FL_ZERO_RANGE: number;
  FIEMAP_EXTENT_LAST: number;
  FIEMAP_EXTENT_UNKNOWN: number;
  FIEMAP_EXTENT_DELALLOC: number;
  FIEMAP_EXTENT_UNWRITTEN: number;
  FIEMAP_EXTENT_SHARED: number;
}

export interface NativeAddon {
  /** ioctl(dst, FICLONE, src): dst shares every block of src. */
  ficlone(dstFd: number, srcFd: number, srcPath?: string, dstPath?: string): Promise<void>;
  /**
   * A new file `dstPath` sharing every block of `srcPath`, in one pool job:
   * open both (dst O_CREAT|O_EXCL), fchmod(dst, mode) exactly, FICLONE, then
   * ftruncate to `growTo` when it is > 0 (EINVAL when src is larger), and
   * fsync when `sync`. On any failure dst is unlinked and the error is that
   * step's (EEXIST: dst existed and is untouched). Resolves dst's size.
   */
  reflinkNewFile(srcPath: string, dstPath: string, mode: number, growTo: number, sync: boolean): Promise<number>;
  /** ioctl(dst, FICLONERANGE): block-aligned ranges; length 0 = to src EOF. */
  ficloneRange(
    dstFd: number, srcFd: number, srcOffset: number, length: number, dstOffset: number,
    srcPath?: string, dstPath?: string,
  ): Promise<void>;
  /** copy_file_range until `length` bytes or src EOF; resolves the bytes copied. */
  copyFileRange(
    srcFd: number, srcOffset: number, dstFd: number, dstOffset: number, length: number,
    srcPath?: string, dstPath?: string,
  ): Promise<number>;
  /** pread/pwrite of one range; blocks of `skipZeroBlockSize` that read as zero are not written (0: write all). */
  copyByReadWrite(
    srcFd: number, srcOffset: number, dstFd: number, dstOffset: number, length: number,
    skipZeroBlockSize: number, srcPath?: string, dstPath?: string,
  ): Promise<{ bytesRead: number; bytesWritten: number }>;
  /**
   * pwrite of `data` at `fileOffset`; blocks of `skipZeroBlockSize` (counted
   * from the start of `data`) that are all zero are not written (0: write
   * all). With `startWriteback`, sync_file_range(SYNC_FILE_RANGE_WRITE) then
   * starts writeback of the range without waiting (durability still needs
   * fsync). Resolves the bytes written. `data` must not change until it settles.
   */
  writeData(fd: number, data: Buffer, fileOffset: number, skipZeroBlockSize: number, startWriteback: boolean, path?: string): Promise<number>;
  /** SEEK_DATA/SEEK_HOLE walk of [start, end), at most `maxExtents` extents. */
  dataExtents(fd: number, start: number, end: number, maxExtents: number, path?: string): Promise<DataExtentBatch>;
  /** FS_IOC_FIEMAP from `start` for `length` bytes, at most `maxExtents`. */
  fiemap(fd: number, start: number, length: number, maxExtents: number, sync: boolean, path?: string): Promise<FiemapExtent[]>;
  fallocate(fd: number, mode: number, offset: number, length: number, path?: string): Promise<void>;
  fsync(fd: number, path?: string): Promise<void>;
  fdatasync(fd: number, path?: string): Promise<void>;
  statfs(path: string): Promise<StatfsResult>;
  /** renameat2(from, to, RENAME_NOREPLACE): EEXIST when `to` exists; EINVAL where the filesystem lacks the flag. */
  renameNoReplace(from: string, to: string): Promise<void>;
  blkGetSize64(fd: number, path?: string): Promise<number>;
  blkSszGet(fd: number, path?: string): Promise<number>;
  blkDiscard(fd: number, offset: number, length: number, path?: string): Promise<void>;
  blkZeroOut(fd: number, offset: number, length: number, path?: string): Promise<void>;
  /** pread into 4 KiB-aligned memory, for an fd opened O_DIRECT; at most 1 MiB; fewer bytes only at the end. */
  preadAligned(fd: number, offset: number, length: number, path?: string): Promise<Buffer>;
  /** A Buffer over 4 KiB-aligned memory (for O_DIRECT reads and writes), at most 64 MiB; returns at once. */
  alignedBuffer(length: number): Buffer;
  /** DM_VERSION on /dev/mapper/control: the kernel's ioctl interface version. */
  dmVersion(): Promise<DmVersion>;
  /** DM_LIST_DEVICES: every mapped device with its dev_t. */
  dmListDevices(): Promise<DmDevice[]>;
  /** DM_DEV_CREATE: a device with no table (suspended); EBUSY when the name or uuid is taken. */
  dmCreate(name: string, uuid?: string): Promise<DmDeviceInfo>;
  /** DM_DEV_REMOVE; ENXIO when absent, EBUSY while open. */
  dmRemove(name: string): Promise<DmDeviceInfo>;
  /** DM_DEV_SUSPEND: waits for in-flight io (not flushed with `noflush`); later io waits for resume. */
  dmSuspend(name: string, noflush?: boolean): Promise<DmDeviceInfo>;
  /** DM_DEV_SUSPEND without the suspend flag: a loaded table goes live, io flows. */
  dmResume(name: string): Promise<DmDeviceInfo>;
  /** DM_DEV_STATUS; ENXIO when absent. */
  dmInfo(name: string): Promise<DmDeviceInfo>;
  /** DM_TABLE_LOAD into the inactive slot. */
  dmLoad(name: string, targets: DmTarget[], readOnly?: boolean): Promise<DmDeviceInfo>;
  /** DM_TABLE_STATUS: the live table's targets with their status (`params`), or with `table` their table lines. */
  dmTable(name: string, table?: boolean): Promise<DmTarget[]>;
  /** DM_TARGET_MSG to the target at `sector`; resolves its answer ("" when none). */
  dmMessage(name: string, sector: number, message: string): Promise<string>;
  /** LOOP_CTL_GET_FREE: a free loop device's number (the kernel makes one when none is free). */
  loopGetFree(): Promise<number>;
  /** LOOP_CONFIGURE: `file` behind `device` with `flags` (loopFlags) and a logical block size (0: 512); EBUSY when bound. */
  loopConfigure(device: string, file: string, flags: number, blockSize: number): Promise<LoopStatus>;
  /** LOOP_GET_STATUS64; ENXIO when the device is free. */
  loopStatus(device: string): Promise<LoopStatus>;
  /** LOOP_CLR_FD (deferred while the device is open); ENXIO when free. */
  loopDetach(device: string): Promise<void>;
  loopFlags: LoopFlags;
  /** mknod(path, S_IFBLK | mode, major:minor); EEXIST when the path exists. */
  mknodBlock(path: string, major: number, minor: number, mode: number): Promise<void>;
  /** One sd_notify datagram to `socketPath` (a path, or `@name` for an abstract socket); EAGAIN when its queue is full. */
  sdNotify(socketPath: string, message: string): Promise<void>;
  /** SO_PEERCRED and SO_PEERGROUPS of a connected unix socket: the peer's pid, uid, gid and groups as the kernel recorded them at connect. */
  peerCredentials(fd: number): Promise<PeerCredentials>;
  /** getsockname(2), on the calling thread: a unix socket's path ("@name" when abstract, "" when unbound), or an inet address and port. */
  socketName(fd: number): SocketName;
  fileConstants: FileConstants;
}
