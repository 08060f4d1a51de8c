// The one interface every storage backend implements (docs/design.md "Pools").
// A backend stores named objects (volumes and snapshots) and knows nothing of
// tenants, images or the catalog: the domain layer decides object names and
// records intent in the catalog before calling a backend.
import type { CloneMethod, CloneProgress } from '../clone/clone-file.js';
import { cloneFile } from '../clone/clone-file.js';
import { native } from '../native/binding.js';
import { systemError } from '../native/system-error.js';
import { ZERO_BLOCK_BYTES } from './sparse-writer.js';

/**
 * What a pool's objects are, which decides how the exports serve them: a
 * regular file (NBD reads it with its own holes, SEEK_DATA; a block export
 * binds a loop device to it), or a block device node (NBD reads the device,
 * with the pool's `allocation`; a block export hands out the node itself,
 * one device for every user, made read-only through `setReadOnly`).
 */
export type ObjectKind = 'file' | 'block';

export interface PoolCapabilities {
  /** Clones share blocks with their source (FICLONE, thin snapshots). */
  reflink: boolean;
  /** A clone costs the same whatever the source's size. */
  constantTimeClone: boolean;
  /** Every object size is a multiple of this (1: any size; a thin pool: its data block size). */
  sizeAlignmentBytes: number;
}

/** The state a backend's kernel side reports (thin pools: the thin-pool status line). */
export interface PoolHealth {
  /** `rw` normal; `out_of_data_space`; `ro` metadata read-only after a failure; `failed` / `error` the target failed. */
  mode: 'rw' | 'ro' | 'out_of_data_space' | 'failed' | 'error';
  /** The metadata needs thin_check before the pool is usable again. */
  needsCheck: boolean;
  /** Writes to unprovisioned blocks of a full pool fail at once (`error`) or wait for space (`queue`). */
  noSpace?: 'error' | 'queue';
  /** Free data or metadata is at or below the low-water mark. */
  lowWater: boolean;
  transactionId?: number;
}

/** A size the pool cannot store: not a multiple of its allocation unit. Nothing was changed. */
export class UnalignedSizeError extends Error {
  override name = 'UnalignedSizeError';
  readonly code = 'EINVAL';
  constructor(readonly pool: string, readonly sizeBytes: number, readonly alignmentBytes: number) {
    super(`pool ${pool} stores sizes in multiples of ${alignmentBytes} bytes; ${sizeBytes} is not one`);
  }
}

export interface PoolCapacity {
  totalBytes: number;
  usedBytes: number;
  freeBytes: number;
  dataPercent?: number;
  metadataPercent?: number;
}

export interface ObjectInfo {
  sizeBytes: number;
  /** Bytes the backend has allocated for this object (shared blocks count in full). */
  allocatedBytes: number;
  readOnly: boolean;
}

export interface CloneRequest {
  /** Grow the clone to this size when larger than the source; smaller is an error. */
  sizeBytes?: number;
  /** Make the new object read-only (snapshots, image-volumes). */
  readOnly?: boolean;
  signal?: AbortSignal;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export interface ReceiveRequest {
  /** More bytes than this is EFBIG, raised as soon as the stream passes it; nothing is left. */
  maxBytes?: number;
  /** Make the new object read-only (image-volumes). */
  readOnly?: boolean;
  onProgress?: (receivedBytes: number) => void;
}

export interface ReceiveOutcome {
  /** Bytes received: the object's size. */
  sizeBytes: number;
  /** Bytes written; all-zero blocks were left unallocated. */
  bytesWritten: number;
}

/**
 * An object of another pool, as that pool shows it: a path this process can
 * read (a file or a block device) and its size. `allocation`, from the
 * source pool's `allocation()`, says which parts hold data; without it the
 * file's own holes (SEEK_DATA) say so, and a device is all data.
 */
export interface ForeignObject {
  path: string;
  sizeBytes: number;
  allocation?: AllocationExtent[];
}

/** Where `Pool.populate` takes data: writes may overlap in time, never in range. */
export interface ObjectSink {
  write(data: Buffer, offset: number): Promise<void>;
}

export interface PopulateRequest {
  /** Make the new object read-only (image-volumes). */
  readOnly?: boolean;
  signal?: AbortSignal;
}

export interface PopulateOutcome {
  /** Bytes stored; all-zero blocks handed to the sink were left unallocated. */
  bytesWritten: number;
}

export interface CloneOutcome {
  method: CloneMethod | 'thin_snapshot';
  bytesCopied: number;
}

/**
 * Object names match OBJECT_NAME (a backend may refuse a valid name it cannot
 * store with ENAMETOOLONG: a file is `<name>.raw` within NAME_MAX, 255 bytes). The pattern is the API's id
 * pattern, plus '@' to join a volume and a snapshot id. Every mutating call either completes or leaves
 * no object under the name; work in progress lives under temporary names
 * that `listTemporaries` reports and `removeTemporary` deletes.
 */
export interface Pool {
  readonly name: string;
  /** The backend's name, as configured (`backend = "..."`): for views and logs, never for decisions. */
  readonly backend: string;
  readonly objectKind: ObjectKind;
  /**
   * An object is under its name only once its content is whole and durable
   * (made under a temporary name, fsync'd, renamed in), and every name that
   * list() shows after open() is durable too: a creation cut off after its
   * object was named can be completed instead of undone. False where an
   * object is named while its content is still being made.
   */
  readonly publishesWhole: boolean;
  /** Checks the backing store (fails fast: missing, not writable) and probes capabilities once. */
  open(): Promise<void>;
  /** Releases what open() holds (descriptors); objects are untouched. Safe to call twice. */
  close(): Promise<void>;
  capabilities(): PoolCapabilities;
  capacity(): Promise<PoolCapacity>;
  /** Backends with a kernel-side state to report (thin pools). */
  health?(): Promise<PoolHealth>;
  /** A new sparse object of sizeBytes; EEXIST if the name is taken. */
  create(name: string, sizeBytes: number): Promise<void>;
  /** A new object `target` with the content of `source`; EEXIST if taken, ENOENT if source absent. */
  clone(source: string, target: string, request?: CloneRequest): Promise<CloneOutcome>;
  /**
   * A new object `target` with the content of `source`, an object of another
   * pool: shared blocks where `sharesBlocksWith` the source's pool holds,
   * else a copy of the data only (what reads as zeros is not written: the
   * target stays sparse). Same contract as `clone`: EEXIST if taken, ENOENT
   * if the source is absent, nothing left under `target` on any failure or abort.
   */
  cloneFrom(source: ForeignObject, target: string, request?: CloneRequest): Promise<CloneOutcome>;
  /** Whether `cloneFrom` an object of pool `source` shares its blocks (constant time, no copy). */
  sharesBlocksWith(source: Pool): boolean;
  /**
   * A new object `name` holding the bytes of `data`, sparse (all-zero blocks
   * are not written), durable before it appears; EEXIST if the name is taken.
   * A stream that fails (a broken upload) leaves no object.
   */
  receive(name: string, data: AsyncIterable<Uint8Array>, request?: ReceiveRequest): Promise<ReceiveOutcome>;
  /**
   * A new object `name` of `sizeBytes` that reads zeros except where `fill`
   * writes through the sink it is given (a copy from elsewhere: another
   * host). All-zero 4 KiB blocks are not stored. Durable before it appears;
   * nothing left under `name` when `fill` rejects or `signal` aborts. EEXIST
   * if the name is taken.
   */
  populate(name: string, sizeBytes: number, fill: (sink: ObjectSink) => Promise<void>, request?: PopulateRequest): Promise<PopulateOutcome>;
  /**
   * Makes object `name` hold the content of object `source` (a snapshot of
   * it, no larger), keeping `name`'s size: past the source's size it reads
   * zeros. Atomic: after a crash `name` holds either its old or its new
   * content (a leftover is a temporary, or settled at open). `source` stays.
   * EPERM for a read-only `name`, ENOENT when either is absent.
   */
  revert(name: string, source: string): Promise<CloneOutcome>;
  /** Grows an object; a smaller size is EINVAL. */
  resize(name: string, sizeBytes: number): Promise<void>;
  setReadOnly(name: string, readOnly: boolean): Promise<void>;
  /** Removes an object; absent is not an error. EBUSY (nothing changed) while something holds it open, where the backend can tell. */
  remove(name: string): Promise<void>;
  /** Whether something outside the agent holds the object open (a thin device's open count); backends that cannot tell lack it. */
  inUse?(name: string): Promise<boolean>;
  /**
   * Which parts of [offset, offset + length) of object `name` hold data and
   * which read as zeros without any (thin: unprovisioned blocks), in order
   * from `offset`; they may stop short of the end. Backends whose objects are
   * files lack it: the file's own holes say the same (SEEK_DATA/SEEK_HOLE).
   */
  allocation?(name: string, offset: number, length: number): Promise<AllocationExtent[]>;
  /** The objects of the pool's storage the agent did not make, and their adoption; backends that adopt nothing lack it. */
  readonly unmanaged?: UnmanagedObjects;
  /** undefined when absent. */
  stat(name: string): Promise<ObjectInfo | undefined>;
  /** Names of complete objects. */
  list(): Promise<string[]>;
  /** Leftovers of interrupted operations. */
  listTemporaries(): Promise<string[]>;
  removeTemporary(temporary: string): Promise<void>;
  /** A path the exports layer can open: a regular file or a block device node, as `objectKind` says. */
  objectPath(name: string): string;
}

/** An object in a pool's storage that the agent did not make: what Cinder's manage_existing can hand to the agent. */
export interface UnmanagedObject {
  /** The backend's own name for it (lvm: the LV's name). */
  name: string;
  sizeBytes: number;
  /** Why it cannot be adopted (held open, read-only, ...); absent when it can. */
  refusal?: string;
}

/**
 * Adoption: an object the agent did not make becomes one of the pool's
 * objects, its data untouched (lvm: the LV is tagged and renamed, as
 * Cinder's LVM driver renames the LV it manages). It takes more than one
 * step, so the caller records the adoption before it starts, and after a
 * crash `giveBack` undoes whatever part of it was done.
 */
export interface UnmanagedObjects {
  /** The candidates, adoptable or not (with why), sorted by name. */
  list(): Promise<UnmanagedObject[]>;
  /** One candidate; undefined when the storage holds none of that name that is not the agent's. */
  get(foreign: string): Promise<UnmanagedObject | undefined>;
  /** Makes `foreign` the object `name`: ENOENT when it is absent, EPERM when it has a refusal, EEXIST when `name` is taken. A failure leaves `foreign` as it was. */
  adopt(foreign: string, name: string): Promise<void>;
  /** Undoes a whole or partial `adopt(foreign, name)`: the object is `foreign` again, its data untouched. Done when neither name is there (the operator removed it). */
  giveBack(foreign: string, name: string): Promise<void>;
}

export interface AllocationExtent {
  length: number;
  /** False: nothing is stored there and it reads as zeros. */
  allocated: boolean;
}

/**
 * A sink writing at offsets into an open file or device `fd` of `sizeBytes`
 * (native.writeData on the libuv pool: all-zero 4 KiB blocks are skipped, the
 * target reads zeros there already; each write's writeback starts at once so
 * the final fsync waits for little). A write past the end is EINVAL.
 */
export function sinkOf(fd: number, path: string, sizeBytes: number, onWritten: (bytes: number) => void): ObjectSink {
  return {
    async write(data, offset) {
      if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.length > sizeBytes) throw systemError('EINVAL', 'write', path);
      onWritten(await native.writeData(fd, data, offset, ZERO_BLOCK_BYTES, true, path));
    },
  };
}

export const OBJECT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(@[A-Za-z0-9][A-Za-z0-9._-]{0,127})?$/;

export function isObjectName(name: string): boolean {
  return OBJECT_NAME.test(name) && !name.includes('..');
}

/**
 * The parts of an object of `sizeBytes` that hold data, as [offset, length],
 * from its allocation answer; what the answer does not reach counts as data.
 */
export function dataExtentsOf(allocation: readonly AllocationExtent[], sizeBytes: number): Array<[number, number]> {
  const extents: Array<[number, number]> = [];
  let offset = 0;
  for (const extent of allocation) {
    if (extent.allocated && offset < sizeBytes) extents.push([offset, Math.min(extent.length, sizeBytes - offset)]);
    offset += extent.length;
  }
  if (offset < sizeBytes) extents.push([offset, sizeBytes - offset]);
  return extents;
}

/**
 * Copies `source` into `node`, a new block device that reads zeros (a new
 * thin device or thin LV): only its data extents, then a flush, so the
 * device's pool has committed what it mapped. The block backends' cloneFrom.
 */
export async function copyIntoZeroedDevice(source: ForeignObject, node: string, request: CloneRequest): Promise<CloneOutcome> {
  const result = await cloneFile(source.path, node, {
    fsync: true,
    methods: ['copy_file_range', 'read_write'],
    zeroedDestination: true,
    ...(source.allocation ? { dataExtents: dataExtentsOf(source.allocation, source.sizeBytes) } : {}),
    ...(request.signal ? { signal: request.signal } : {}),
    ...(request.onProgress ? { onProgress: (p: CloneProgress) => request.onProgress!(p.doneBytes, p.totalBytes) } : {}),
  });
  return { method: result.method, bytesCopied: result.bytesCopied };
}
