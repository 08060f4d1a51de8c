// What an NBD export serves: one volume, as a file or a block device, behind
// one interface (file-target.ts, block-target.ts). Offsets and lengths are
// bytes, already checked against the size by the connection.

export interface Extent {
  length: number;
  /** AllocationState bits: HOLE (unallocated), ZERO (reads as zeros). */
  flags: number;
}

export interface ZeroOptions {
  fua: boolean;
  /** The client wants the range allocated (NBD_CMD_FLAG_NO_HOLE). */
  noHole: boolean;
}

export interface ExportTarget {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** TRIM can free space. */
  readonly canTrim: boolean;
  /** WRITE_ZEROES without writing data (a fast zero is possible). */
  readonly canFastZero: boolean;
  /** Writes from one connection are visible to reads of another, and a flush on one covers all (one page cache, one fd). */
  readonly multiConn: boolean;
  /** `into`, when given, is a buffer of exactly `length` bytes to read into. */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  write(data: Buffer, offset: number, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  /** EOPNOTSUPP-like `FastZeroUnsupported` when `fast` and the target can only zero by writing. */
  zero(offset: number, length: number, options: ZeroOptions & { fast: boolean }): Promise<void>;
  /** Extents covering [offset, offset + length) from the start, at least one; they may stop early. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}

/** A fast zero was asked of a target that can only zero by writing (the client then writes zeros itself). */
export class FastZeroUnsupportedError extends Error {
  override name = 'FastZeroUnsupportedError';
}
