// What volumes, snapshots and Image-Volumes share before they change
// anything: the pool a request names, the row it names and its state, names
// and sizes the pool takes, objects made or removed behind the agent's back,
// exports in the way, and the per-object locks (VOLUME_BUSY with the
// operations that hold them). And what they need of the rest of the agent,
// given at construction: the exports' state and the clone events.
import type { Catalog, VolumeRow } from '../catalog/catalog.js';
import { systemError } from '../native/system-error.js';
import type { CloneOutcome, Pool } from '../pools/pool.js';
import type { Access } from './access.js';
import { DomainError } from './errors.js';
import { toDomainError } from './faults.js';
import type { LockTable, Release } from './locks.js';
import type { Operations } from './operations.js';

/** What changes of volumes need to know of the exports (agent/exports.ts). */
export interface ExportState {
  /** The volume is exported: it is neither deleted, resized nor reverted. */
  isExported(volumeId: string): boolean;
  /**
   * What keeps a copy of a volume one point in time. VOLUME_IN_USE for a
   * volume written by what the agent cannot hold (a writable block export).
   */
  checkWritesHoldable(volumeId: string): void;
  /** Stops the writes the agent serves (NBD) until the release it resolves to. */
  holdWrites(volumeId: string): Promise<() => void>;
}

/** Told of clones as their data is in place (metrics, the image cache). */
export interface CloneEvents {
  /** Every clone and snapshot: the method, how long it took, the bytes copied. */
  cloned(method: string, seconds: number, bytesCopied: number): void;
  /** Every volume made from an image (the image cache counts hits and orders entries by it). */
  imageCloned(imageId: string): void;
}

export class VolumeChecks {
  constructor(
    private readonly catalog: Catalog,
    private readonly pools: ReadonlyMap<string, Pool>,
    private readonly locks: LockTable,
    private readonly operations: Operations,
    readonly exports: ExportState,
    /** How long delete and resize wait for readers (clones, snapshots) of their object. */
    readonly lockWaitMs: number,
  ) {}

  /** The first configured pool: where a request that names none goes. */
  defaultPoolName(): string {
    return this.pools.keys().next().value!;
  }

  /** The pool named `name`, or POOL_NOT_FOUND. */
  pool(name: string): Pool {
    const pool = this.pools.get(name);
    if (!pool) throw new DomainError('POOL_NOT_FOUND', `no pool named ${name}`, { pool: name, pools: [...this.pools.keys()] });
    return pool;
  }

  /** Volume `id`; absent, or another tenant's to `access` when given: VOLUME_NOT_FOUND. */
  volumeRow(id: string, access?: Access): VolumeRow {
    const row = this.catalog.getVolume(id);
    if (!row || (access && !access.sees(row))) throw this.notFound(id);
    return row;
  }

  /** Absent, or not the caller's: one answer for both, so no other tenant's id is confirmed. */
  notFound(id: string): DomainError {
    return new DomainError('VOLUME_NOT_FOUND', `volume ${id} does not exist`, { volume: id });
  }

  requireAvailable(row: VolumeRow): void {
    if (row.state !== 'available') {
      throw new DomainError('VOLUME_BUSY', `volume ${row.id} is ${row.state}`, { volume: row.id, state: row.state, ...(row.operationId ? { operation: row.operationId } : {}) });
    }
  }

  /** A size the pool stores in whole units (a thin pool's block size): refused before any intent is recorded. */
  checkSizeAlignment(pool: Pool, sizeBytes: number, field = 'sizeBytes'): void {
    const { sizeAlignmentBytes } = pool.capabilities();
    if (sizeBytes % sizeAlignmentBytes !== 0) {
      throw new DomainError('INVALID_SIZE', `${field} ${sizeBytes} is not a multiple of ${sizeAlignmentBytes} bytes, pool ${pool.name}'s allocation unit`, {
        field, value: sizeBytes, pool: pool.name, sizeAlignmentBytes,
      });
    }
  }

  /**
   * A copy reads `source` and makes `target` (in the same pool or another):
   * a source removed, or a target name taken, behind the agent's back is
   * refused before any intent or operation is recorded (the pool would
   * refuse it mid-way).
   */
  async checkPoolObjects(sourcePool: Pool, source: string, targetPool: Pool, target: string, details: Record<string, unknown>): Promise<void> {
    const [sourceInfo, targetInfo] = await Promise.all([sourcePool.stat(source), targetPool.stat(target)]);
    if (!sourceInfo) throw toDomainError(systemError('ENOENT', 'stat', sourcePool.objectPath(source)), details);
    if (targetInfo) throw toDomainError(systemError('EEXIST', 'stat', targetPool.objectPath(target)), details);
  }

  /** The backend's own limits on names (a file name within NAME_MAX), before any intent is written. */
  checkObjectName(pool: Pool, object: string, details: Record<string, unknown>): void {
    try {
      pool.objectPath(object);
    } catch (error) {
      throw toDomainError(error, details);
    }
  }

  /**
   * An Image-Volume is immutable: a volume with a writable export (whose
   * writer would go on changing it) is not made one. VOLUME_IN_USE.
   */
  checkNoWriters(id: string): void {
    const writable = this.catalog.exportsOfVolume(id).filter((e) => !e.readOnly);
    if (writable.length > 0) {
      throw new DomainError('VOLUME_IN_USE', `volume ${id} has writable exports (${writable.map((e) => e.id).join(', ')}): an Image-Volume is immutable; remove them or export the volume read-only first`, {
        volume: id, exports: writable.map((e) => e.id),
      });
    }
  }

  exported(id: string): DomainError {
    return new DomainError('VOLUME_BUSY', `volume ${id} is exported; unexport it first`, { volume: id, exports: this.catalog.exportsOfVolume(id).map((e) => e.id) });
  }

  /** Checked before the row changes: a device in use stays as it is (the pool's EBUSY later would leave the row in error). */
  heldOpen(object: string, details: Record<string, unknown>): DomainError {
    return new DomainError('VOLUME_BUSY', `${object} is held open outside the agent (a process or a mount uses its device)`, details);
  }

  isImage(volumeId: string, imageId: string): DomainError {
    return new DomainError('VOLUME_IS_IMAGE', `volume ${volumeId} is the Image-Volume of image ${imageId}; delete the image instead`, {
      volume: volumeId, image: imageId,
    });
  }

  /** The lock on `key`, waiting up to `waitMs`; VOLUME_BUSY names the operations that hold it. */
  async lock(key: string, mode: 'shared' | 'exclusive', holder: string, waitMs = this.lockWaitMs): Promise<Release> {
    try {
      return await this.locks.acquire(key, mode, holder, waitMs);
    } catch (error) {
      throw toDomainError(error, { operations: this.operationsOn(key) });
    }
  }

  /** Runs the pool's copy `clone` with the writes to `volumeId` held for exactly its time (none given: as it is). */
  async copyAtOneInstant(volumeId: string | undefined, clone: () => Promise<CloneOutcome>): Promise<CloneOutcome> {
    const release = volumeId !== undefined ? await this.exports.holdWrites(volumeId) : undefined;
    try {
      return await clone();
    } finally {
      release?.();
    }
  }

  /** Operations whose work holds `key`, for VOLUME_BUSY details. */
  private operationsOn(key: string): string[] {
    return this.operations.list().filter((op) => op.state === 'running' && this.locks.holdersOf(key).some((h) => h.endsWith(` ${op.target}`))).map((op) => op.id);
  }
}
