// Volumes and their snapshots: idempotent creation, clones, resize, delete.
//
// Every change follows the same order (docs/design.md "House style" 10):
// take the locks, write the intent row (`creating`, `deleting`) to the
// catalog, call the backend, then write the outcome. A creation that fails or
// is cancelled leaves no object (the Pool contract) and its row is discarded,
// so a half-made volume is never visible; a crash in between is settled by reconcile at start-up.
// A clone that is not constant-time runs as an operation (202) unless the
// client waits; its locks are held by the operation, not by the request.
// Such a copy of a volume is the volume at one instant: the writes the agent
// serves (NBD) are held for exactly the pool's copy, and a volume written
// past the agent (a writable block export) is refused (copyWrites).
import type { Catalog, SnapshotRow, SourceKind, VolumeKind, VolumeRow } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';
import type { ObjectState } from '../catalog/volume-state.js';
import type { CloneOutcome, Pool, ReceiveOutcome } from '../pools/pool.js';
import { systemError } from '../native/system-error.js';
import { failpoint, failpointAsync } from '../common/failpoints.js';
import type { Access } from './access.js';
import { DomainError } from './errors.js';
import { toDomainError } from './faults.js';
import { snapshotObject } from './ids.js';
import type { LockTable, Release } from './locks.js';
import type { OperationView, Operations, TaskContext } from './operations.js';
import { newOperationId } from './operations.js';
import type { RemoteSource, RemoteSources } from './remote-sources.js';


export type SourceRef = { volume: string } | { snapshot: string } | { image: string };
/** A volume's source: an object of this host, or a peer agent's export (remote-sources.ts). */
export type VolumeSource = SourceRef | { remote: RemoteSource };

export interface PutVolumeRequest {
  id: string;
  pool?: string;
  /** The owner named in the request: an admin must name it; a tenant-bound peer's is its own. */
  tenant?: string;
  sizeBytes?: number;
  source?: VolumeSource;
  /** Block until a long clone has ended instead of answering with its operation. */
  wait: boolean;
}

export interface VolumeView {
  id: string;
  pool: string;
  tenant: string;
  kind: VolumeKind;
  sizeBytes: number;
  allocatedBytes: number;
  state: ObjectState;
  source?: VolumeSource;
  cloneMethod: string | null;
  readOnly: boolean;
  createdAt: string;
  operation?: string;
  error?: string;
}

export interface SnapshotView {
  id: string;
  volume: string;
  pool: string;
  tenant: string;
  sizeBytes: number;
  allocatedBytes: number;
  state: ObjectState;
  cloneMethod: string | null;
  readOnly: true;
  createdAt: string;
  operation?: string;
  error?: string;
}

/** `created`: 201; `exists`: 200 (an identical one was there); `started`: 202 with the operation. */
export type PutOutcome<View> =
  | { status: 'created' | 'exists'; view: View }
  | { status: 'started'; view: View; operation: OperationView };

interface ResolvedSource {
  ref: SourceRef;
  kind: SourceKind;
  id: string;
  pool: string;
  object: string;
  sizeBytes: number;
}

/** What a clone makes: a plain volume, or an Image-Volume (read-only, maybe in the internal tenant). */
interface CloneShape {
  kind: VolumeKind;
  readOnly: boolean;
}

interface Pending {
  operationId?: string;
  done: Promise<void>;
}

export interface VolumeFilter {
  pool?: string;
  kind?: VolumeKind;
}

export class Volumes {
  /** Creations in progress in this process, by pool object name. */
  private readonly pending = new Map<string, Pending>();
  /**
   * Intent rows being written, by object name. The row is visible to reads
   * once the writer thread has committed it, a moment before the write's
   * promise resolves here: a repeat that sees it waits for that promise.
   */
  private readonly intents = new Map<string, Promise<unknown>>();
  /** Told of every volume made from an image (the image cache counts hits and orders entries by it). */
  onImageClone: ((imageId: string) => void) | undefined;
  /** Whether a volume is exported (set by Exports): such a volume is neither deleted nor resized. */
  isExported: ((volumeId: string) => boolean) | undefined;
  /**
   * Set by the agent (Exports): what keeps a copy of a volume one point in
   * time. `check` refuses (VOLUME_IN_USE) a volume written by what the agent
   * cannot hold (a writable block export); `hold` stops the writes it can
   * (NBD) until the release it resolves to. Used only when the pool copies:
   * a reflink or a thin snapshot is atomic on its own.
   */
  copyWrites: { check(volumeId: string): void; hold(volumeId: string): Promise<() => void> } | undefined;
  /** Set by the agent: how a volume is pulled from a peer agent; absent, a remote source is refused. */
  remotes: RemoteSources | undefined;
  /** Told of every clone and snapshot whose data is in place: the method, how long it took, the bytes copied (metrics). */
  onCloned: ((method: string, seconds: number, bytesCopied: number) => void) | undefined;

  constructor(
    /** Reads; every write goes through `writes`. */
    private readonly catalog: Catalog,
    private readonly writes: CatalogWrites,
    private readonly pools: ReadonlyMap<string, Pool>,
    private readonly locks: LockTable,
    private readonly operations: Operations,
    /** How long delete and resize wait for readers (clones, snapshots) of their object. */
    private readonly lockWaitMs: number,
  ) {}

  /** True while this process is making or reading `object`: reconcile leaves it alone. */
  isLive(object: string): boolean {
    return this.pending.has(object) || this.intents.has(object) || this.locks.isHeld(object);
  }

  // --- volumes ---

  /** The volumes `access` sees (its scope's, or all). */
  async list(access: Access, filter: VolumeFilter = {}): Promise<VolumeView[]> {
    if (filter.pool !== undefined) this.pool(filter.pool);
    const rows = this.catalog.listVolumes({ ...filter, ...(access.scope !== undefined ? { tenant: access.scope } : {}) });
    return Promise.all(rows.map((row) => this.volumeView(row)));
  }

  async get(id: string, access: Access): Promise<VolumeView> {
    return this.volumeView(this.volumeRow(id, access));
  }

  async put(request: PutVolumeRequest, access: Access): Promise<PutOutcome<VolumeView>> {
    const owned = { ...request, tenant: access.owner(request.tenant) };
    if (request.source === undefined) return this.createEmpty(owned);
    if ('remote' in request.source) return this.createFromRemote(owned, request.source.remote);
    return this.createClone(owned, request.source, access);
  }

  async resize(id: string, sizeBytes: number, access: Access): Promise<VolumeView> {
    this.volumeRow(id, access);
    const release = await this.lock(id, 'exclusive', `resize ${id}`);
    try {
      const row = this.volumeRow(id);
      if (row.state !== 'available') throw new DomainError('VOLUME_BUSY', `volume ${id} is ${row.state}`, { volume: id, state: row.state });
      if (row.readOnly) throw new DomainError('VOLUME_READ_ONLY', `volume ${id} is read-only`, { volume: id });
      if (this.isExported?.(id)) throw this.exported(id);
      if (sizeBytes < row.sizeBytes) {
        throw new DomainError('SHRINK_NOT_SUPPORTED', `volume ${id} is ${row.sizeBytes} bytes; it can only grow`, { volume: id, sizeBytes: row.sizeBytes });
      }
      if (sizeBytes > row.sizeBytes) {
        this.checkSizeAlignment(this.pool(row.pool), sizeBytes);
        try {
          await this.pool(row.pool).resize(id, sizeBytes);
        } catch (error) {
          throw toDomainError(error, { volume: id });
        }
        await this.writes.updateVolume(id, { sizeBytes });
      }
      return await this.volumeView(this.volumeRow(id));
    } finally {
      release();
    }
  }

  /**
   * Gives volume `id` to `tenant` (Cinder's volume transfer), the admin's
   * alone: one row update; its snapshots and exports follow (they are judged
   * by their volume's tenant), operations already recorded keep theirs. The
   * same tenant again is a no-op. Not for an Image-Volume (VOLUME_IS_IMAGE),
   * a volume that is not available (VOLUME_BUSY) or the internal tenant.
   */
  async transfer(id: string, tenant: string, access: Access): Promise<VolumeView> {
    access.checkAdmin('POST /v1/volumes/{id}/transfer');
    access.checkTransferTarget(tenant);
    this.volumeRow(id, access);
    const release = await this.lock(id, 'exclusive', `transfer ${id}`);
    try {
      const row = this.volumeRow(id);
      const image = this.catalog.imageOfVolume(id);
      if (image) throw this.isImage(id, image.id);
      if (row.kind === 'image') throw new DomainError('VOLUME_IS_IMAGE', `volume ${id} is an Image-Volume; it is not transferred`, { volume: id });
      this.requireAvailable(row);
      if (row.tenant !== tenant && !(await this.writes.updateVolume(id, { tenant }))) this.requireAvailable(this.volumeRow(id));
      return await this.volumeView(this.volumeRow(id));
    } finally {
      release();
    }
  }

  /**
   * Makes volume `id` hold the content of its snapshot `snapshotId`
   * (Cinder's revert_to_snapshot), keeping its id, tenant and size (past the
   * snapshot's size it reads zeros); the snapshot stays. Holds the volume
   * exclusive (no export, clone or resize meanwhile) and the snapshot shared;
   * the pool's revert is atomic (Pool.revert), so nothing else is recorded.
   * Refused with nothing changed: an Image-Volume (VOLUME_IS_IMAGE), a
   * volume not available or exported (VOLUME_BUSY), read-only
   * (VOLUME_READ_ONLY), a snapshot not of this volume (SNAPSHOT_NOT_FOUND).
   */
  async revert(id: string, snapshotId: string, access: Access): Promise<VolumeView> {
    this.volumeRow(id, access);
    const image = this.catalog.imageOfVolume(id);
    if (image) throw this.isImage(id, image.id);
    const snapshotNotFound = (): DomainError => new DomainError('SNAPSHOT_NOT_FOUND', `volume ${id} has no snapshot ${snapshotId}`, { volume: id, snapshot: snapshotId });
    if (!this.catalog.getSnapshot(id, snapshotId)) throw snapshotNotFound();
    const object = snapshotObject(id, snapshotId);
    const release = await this.lock(id, 'exclusive', `revert ${id}`);
    try {
      const releaseSnapshot = await this.lock(object, 'shared', `revert ${id}`);
      try {
        const row = this.volumeRow(id);
        if (row.kind === 'image') throw new DomainError('VOLUME_IS_IMAGE', `volume ${id} is an Image-Volume; it is not reverted`, { volume: id });
        this.requireAvailable(row);
        if (row.readOnly) throw new DomainError('VOLUME_READ_ONLY', `volume ${id} is read-only`, { volume: id });
        if (this.isExported?.(id)) throw this.exported(id);
        const snapshot = this.catalog.getSnapshot(id, snapshotId);
        if (!snapshot) throw snapshotNotFound();
        if (snapshot.state !== 'available') throw new DomainError('VOLUME_BUSY', `snapshot ${snapshotId} is ${snapshot.state}`, { snapshot: snapshotId, state: snapshot.state });
        const pool = this.pool(row.pool);
        if (await pool.inUse?.(id)) throw this.heldOpen(id, { volume: id });
        try {
          await pool.revert(id, object);
        } catch (error) {
          throw toDomainError(error, { volume: id, snapshot: snapshotId });
        }
        return await this.volumeView(this.volumeRow(id));
      } finally {
        releaseSnapshot();
      }
    } finally {
      release();
    }
  }

  /** Absent is done (204); another tenant's is absent to `access` (404). Waits lockWaitMs for readers, then VOLUME_BUSY. An Image-Volume goes with its image only. */
  async delete(id: string, access: Access): Promise<void> {
    const row = this.catalog.getVolume(id);
    if (row && !access.sees(row)) throw this.notFound(id);
    const image = this.catalog.imageOfVolume(id);
    if (image) throw this.isImage(id, image.id);
    return this.remove(id);
  }

  /**
   * Deletes the Image-Volume of an image being deleted, once nothing reads it
   * (no time limit: a background removal); with `held`, the caller holds its
   * exclusive lock already (an eviction), released here.
   */
  async deleteImageVolume(id: string, held?: Release): Promise<void> {
    return this.remove(id, Infinity, held);
  }

  /**
   * An Image-Volume: a read-only clone of volume `source`, owned by `tenant`
   * (maybe the internal one), the source one `access` may use. When the
   * pool copies and `wait` is false, it answers with the running operation
   * (`started`); `whenCreated` then tells how the creation ended.
   */
  async createImageVolume(id: string, tenant: string, source: string, access: Access, wait = true): Promise<PutOutcome<VolumeView>> {
    return this.createClone({ id, tenant, wait }, { volume: source }, access, { kind: 'image', readOnly: true });
  }

  /** Resolves when the creation of `object` running in this process has ended (at once when none runs); rejects with its fault. */
  whenCreated(object: string): Promise<void> {
    return this.settled(object);
  }

  /**
   * An Image-Volume `id` in pool `poolName`, owned by `tenant`, made from the
   * bytes of `data` (an upload): read-only, sparse, durable before it is
   * available. `expectedBytes` is the declared length (recorded on the intent
   * row); more than `maxBytes` is EFBIG. A failure leaves neither row nor object.
   */
  async receiveImageVolume(id: string, tenant: string, poolName: string, data: AsyncIterable<Uint8Array>,
    limits: { maxBytes?: number; expectedBytes?: number } = {}): Promise<ReceiveOutcome> {
    const pool = this.pool(poolName);
    this.checkObjectName(pool, id, { volume: id });
    const requestKey = `${canonicalKey({ pool: pool.name, tenant, sizeBytes: null, source: null })}/upload`;
    const inserted = await this.recordIntent(id, this.writes.insertCreating({
      id, pool: pool.name, tenant, kind: 'image', readOnly: true, sizeBytes: limits.expectedBytes ?? 0, requestKey,
    }));
    if (!inserted.inserted) throw new DomainError('VOLUME_EXISTS', `volume ${id} exists`, { volume: id });
    let received: ReceiveOutcome | undefined;
    const work = async (): Promise<void> => {
      let published = false;
      try {
        received = await pool.receive(id, data, { readOnly: true, ...(limits.maxBytes !== undefined ? { maxBytes: limits.maxBytes } : {}) });
        published = true;
        await this.writes.transitionVolume(id, 'creating', 'available', { cloneMethod: 'upload', sizeBytes: received.sizeBytes });
      } catch (error) {
        if (published) await pool.remove(id).catch(() => undefined); // published but not recorded: withdraw it
        await this.writes.discardCreatingVolume(id);
        throw error;
      }
    };
    this.start(id, limits.expectedBytes ?? 0, undefined, work, () => undefined);
    await this.pending.get(id)?.done; // its fault as thrown (EFBIG tells which limit to the caller)
    return received!;
  }

  /**
   * Adoption of volume `id` as image `imageId`'s Image-Volume (in `tenant`):
   * the file becomes read-only, then the volume and the image change in one
   * commit; a failure makes the file writable again.
   */
  async adoptAsImageVolume(id: string, imageId: string, tenant: string): Promise<void> {
    const release = await this.lock(id, 'exclusive', `adopt ${id} as image ${imageId}`);
    try {
      this.checkNoWriters(id);
      const pool = this.pool(this.volumeRow(id).pool);
      try {
        await pool.setReadOnly(id, true);
        await this.writes.completeAdoption(imageId, id, tenant);
      } catch (error) {
        await pool.setReadOnly(id, false).catch(() => undefined);
        throw error;
      }
    } finally {
      release();
    }
  }

  private async remove(id: string, waitMs = this.lockWaitMs, held?: Release): Promise<void> {
    const first = this.catalog.getVolume(id);
    if (!first || first.state === 'creating') held?.();
    if (!first) return;
    if (first.state === 'creating') throw this.busyCreating(id, first.operationId);
    const release = held ?? await this.lock(id, 'exclusive', `delete ${id}`, waitMs);
    try {
      const row = this.catalog.getVolume(id);
      if (!row) return;
      if (row.state === 'creating') throw this.busyCreating(id, row.operationId);
      const snapshots = this.catalog.listSnapshots(id);
      if (snapshots.length > 0) {
        throw new DomainError('VOLUME_HAS_SNAPSHOTS', `volume ${id} has ${snapshots.length} snapshot(s); delete them first`, {
          volume: id, snapshots: snapshots.map((s) => s.id),
        });
      }
      if (this.isExported?.(id)) throw this.exported(id);
      const pool = this.pool(row.pool);
      if (await pool.inUse?.(id)) throw this.heldOpen(id, { volume: id });
      if (row.state !== 'deleting') await this.writes.transitionVolume(id, row.state, 'deleting');
      try {
        await pool.remove(id);
      } catch (error) {
        await this.writes.transitionVolume(id, 'deleting', 'error', { error: (error as Error).message });
        throw toDomainError(error, { volume: id });
      }
      await this.writes.removeVolume(id);
    } finally {
      release();
    }
  }

  // --- snapshots ---

  async listSnapshots(volumeId: string, access: Access): Promise<SnapshotView[]> {
    const volume = this.volumeRow(volumeId, access);
    return Promise.all(this.catalog.listSnapshots(volumeId).map((s) => this.snapshotView(s, volume)));
  }

  async getSnapshot(volumeId: string, id: string, access?: Access): Promise<SnapshotView> {
    const volume = this.volumeRow(volumeId, access);
    const row = this.catalog.getSnapshot(volumeId, id);
    if (!row) throw new DomainError('SNAPSHOT_NOT_FOUND', `volume ${volumeId} has no snapshot ${id}`, { volume: volumeId, snapshot: id });
    return this.snapshotView(row, volume);
  }

  async putSnapshot(volumeId: string, id: string, wait: boolean, access: Access): Promise<PutOutcome<SnapshotView>> {
    const object = snapshotObject(volumeId, id);
    let volume = this.volumeRow(volumeId, access);
    const existing = this.catalog.findSnapshot(id);
    if (existing) return this.repeatSnapshot(existing, volumeId, wait);
    const image = this.catalog.imageOfVolume(volumeId);
    if (image) throw this.isImage(volumeId, image.id); // immutable already: an image is cloned from, not snapshotted
    const pool = this.pool(volume.pool);
    this.checkObjectName(pool, object, { volume: volumeId, snapshot: id });
    const release = await this.lock(volumeId, 'shared', `snapshot ${object}`);
    let handedOver = false;
    try {
      volume = this.volumeRow(volumeId);
      this.requireAvailable(volume);
      await this.checkPoolObjects(pool, volumeId, pool, object, { volume: volumeId, snapshot: id });
      const copies = !pool.capabilities().constantTimeClone;
      if (copies) this.copyWrites?.check(volumeId);
      const operationId = copies ? newOperationId() : undefined;
      const inserted = await this.recordIntent(object, this.writes.insertSnapshotCreating({ volumeId, id, pool: pool.name, sizeBytes: volume.sizeBytes },
        operationId ? { id: operationId, kind: 'snapshot', targetId: object, totalBytes: volume.sizeBytes, tenant: volume.tenant } : undefined));
      if (!inserted.inserted) return await this.repeatSnapshot(inserted.row, volumeId, wait);
      handedOver = true;
      const work = async (context?: TaskContext): Promise<void> => {
        try {
          const started = process.hrtime.bigint();
          const outcome = await this.copyAtOneInstant(copies ? volumeId : undefined, () => pool.clone(volumeId, object, { readOnly: true, ...this.taskOptions(context) }));
          this.onCloned?.(outcome.method, secondsSince(started), outcome.bytesCopied);
          await this.writes.transitionSnapshot(volumeId, id, 'creating', 'available', { cloneMethod: outcome.method });
        } catch (error) {
          await this.writes.discardCreatingSnapshot(volumeId, id);
          throw toDomainError(error, { volume: volumeId, snapshot: id });
        }
      };
      const started = this.start(object, volume.sizeBytes, operationId, work, release);
      if (started && !wait) {
        return { status: 'started', view: await this.getSnapshot(volumeId, id), operation: started };
      }
      await this.settled(object);
      return { status: 'created', view: await this.getSnapshot(volumeId, id) };
    } finally {
      if (!handedOver) release();
    }
  }

  async deleteSnapshot(volumeId: string, id: string, access: Access): Promise<void> {
    const volume = this.catalog.getVolume(volumeId);
    if (volume && !access.sees(volume)) throw this.notFound(volumeId);
    const object = snapshotObject(volumeId, id);
    const first = this.catalog.getSnapshot(volumeId, id);
    if (!first) return;
    if (first.state === 'creating') throw this.busyCreating(object, first.operationId);
    const release = await this.lock(object, 'exclusive', `delete ${object}`);
    try {
      const row = this.catalog.getSnapshot(volumeId, id);
      if (!row) return;
      if (row.state === 'creating') throw this.busyCreating(object, row.operationId);
      const pool = this.pool(row.pool);
      if (await pool.inUse?.(object)) throw this.heldOpen(object, { volume: volumeId, snapshot: id });
      if (row.state !== 'deleting') await this.writes.transitionSnapshot(volumeId, id, row.state, 'deleting');
      try {
        await pool.remove(object);
      } catch (error) {
        await this.writes.transitionSnapshot(volumeId, id, 'deleting', 'error', { error: (error as Error).message });
        throw toDomainError(error, { volume: volumeId, snapshot: id });
      }
      await this.writes.removeSnapshot(volumeId, id);
    } finally {
      release();
    }
  }

  // --- creation ---

  private async createEmpty(request: PutVolumeRequest & { tenant: string }): Promise<PutOutcome<VolumeView>> {
    const pool = this.pool(request.pool ?? this.defaultPoolName());
    const { id, tenant, sizeBytes } = request;
    if (sizeBytes === undefined) throw new DomainError('INVALID_SIZE', 'sizeBytes is required when there is no source', { field: 'sizeBytes' });
    const requestKey = canonicalKey({ pool: pool.name, tenant, sizeBytes, source: null });
    const existing = this.catalog.getVolume(id);
    if (existing) return this.repeatVolume(existing, requestKey, request.wait);
    this.checkObjectName(pool, id, { volume: id });
    this.checkSizeAlignment(pool, sizeBytes);
    const inserted = await this.recordIntent(id, this.writes.insertCreating({ id, pool: pool.name, tenant, kind: 'volume', sizeBytes, requestKey }));
    if (!inserted.inserted) return this.repeatVolume(inserted.row, requestKey, request.wait);
    const work = async (): Promise<void> => {
      try {
        await pool.create(id, sizeBytes);
        await this.writes.transitionVolume(id, 'creating', 'available', { cloneMethod: 'create' });
      } catch (error) {
        await this.writes.discardCreatingVolume(id);
        throw toDomainError(error, { volume: id });
      }
    };
    this.start(id, sizeBytes, undefined, work, () => undefined);
    await this.settled(id);
    return { status: 'created', view: await this.viewOf(id) };
  }

  private async createClone(request: PutVolumeRequest & { tenant: string }, ref: SourceRef, access: Access,
    shape: CloneShape = { kind: 'volume', readOnly: false }): Promise<PutOutcome<VolumeView>> {
    const { id, tenant } = request;
    let source = this.resolveSource(ref, access);
    // The target pool: the named one, else the source's. Another pool of this host gets a copy (or a reflink where they share a filesystem).
    const pool = this.pool(request.pool ?? source.pool);
    const requestKey = canonicalKey({ pool: pool.name, tenant, sizeBytes: request.sizeBytes ?? null, source: ref }) + (shape.kind === 'volume' ? '' : `/${shape.kind}`);
    const existing = this.catalog.getVolume(id);
    if (existing) return this.repeatVolume(existing, requestKey, request.wait);
    if (request.sizeBytes !== undefined && request.sizeBytes < source.sizeBytes) {
      throw new DomainError('SHRINK_NOT_SUPPORTED', `the source is ${source.sizeBytes} bytes; a clone cannot be smaller`, {
        sizeBytes: request.sizeBytes, sourceSizeBytes: source.sizeBytes,
      });
    }
    this.checkObjectName(pool, id, { volume: id });
    // Within one pool the source's size is the pool's already; into another, the size the clone ends with must be one it stores.
    if (request.sizeBytes !== undefined || source.pool !== pool.name) this.checkSizeAlignment(pool, request.sizeBytes ?? source.sizeBytes);
    const release = await this.lock(source.object, 'shared', `clone ${id}`);
    let handedOver = false;
    try {
      source = this.resolveSource(ref, access); // it may have changed while we waited for the lock
      const sourcePool = this.pool(source.pool);
      const across = sourcePool !== pool;
      await this.checkPoolObjects(sourcePool, source.object, pool, id, { volume: id });
      const sizeBytes = request.sizeBytes ?? source.sizeBytes;
      const copies = across ? !pool.sharesBlocksWith(sourcePool) : !pool.capabilities().constantTimeClone;
      // Snapshots and Image-Volumes are never written: only a volume source has writes to hold.
      const heldVolume = copies && source.kind === 'volume' ? source.id : undefined;
      if (heldVolume !== undefined) this.copyWrites?.check(heldVolume);
      const operationId = copies ? newOperationId() : undefined;
      const inserted = await this.recordIntent(id, this.writes.insertCreating(
        { id, pool: pool.name, tenant, kind: shape.kind, readOnly: shape.readOnly, sizeBytes, requestKey, source: { kind: source.kind, id: source.id } },
        operationId ? { id: operationId, kind: 'clone', targetId: id, totalBytes: source.sizeBytes, tenant } : undefined));
      if (!inserted.inserted) return await this.repeatVolume(inserted.row, requestKey, request.wait);
      handedOver = true;
      const resolved = source;
      const work = async (context?: TaskContext): Promise<void> => {
        let outcome: CloneOutcome | undefined;
        try {
          const started = process.hrtime.bigint();
          const options = {
            readOnly: shape.readOnly,
            ...(request.sizeBytes !== undefined ? { sizeBytes: request.sizeBytes } : {}),
            ...this.taskOptions(context),
          };
          outcome = await this.copyAtOneInstant(heldVolume, async () => {
            if (!across) return pool.clone(resolved.object, id, options);
            // Inside the hold: the allocation is of the same instant as the bytes copied.
            const allocation = await sourcePool.allocation?.(resolved.object, 0, resolved.sizeBytes);
            return pool.cloneFrom({ path: sourcePool.objectPath(resolved.object), sizeBytes: resolved.sizeBytes, ...(allocation ? { allocation } : {}) }, id, options);
          });
          this.onCloned?.(outcome.method, secondsSince(started), outcome.bytesCopied);
          await this.writes.transitionVolume(id, 'creating', 'available', { cloneMethod: outcome.method, sizeBytes: Math.max(sizeBytes, resolved.sizeBytes) });
          if (resolved.kind === 'image') this.onImageClone?.(resolved.id);
        } catch (error) {
          if (outcome) await pool.remove(id).catch(() => undefined); // published but not recorded: withdraw it
          await this.writes.discardCreatingVolume(id);
          throw toDomainError(error, { volume: id });
        }
      };
      const started = this.start(id, source.sizeBytes, operationId, work, release);
      if (started && !request.wait) return { status: 'started', view: await this.viewOf(id), operation: started };
      await this.settled(id);
      return { status: 'created', view: await this.viewOf(id) };
    } finally {
      if (!handedOver) release();
    }
  }

  /**
   * A volume pulled from a peer agent's export (remote-sources.ts): always an
   * operation (202 unless the client waits), recorded before the peer is
   * contacted; the object appears, durable, only once every data extent is
   * in, and the row becomes available after it. A failure, a cancel or a
   * crash leaves nothing: the object is removed (a crash: by the start-up
   * reconcile, which finds the row creating and its operation running).
   */
  private async createFromRemote(request: PutVolumeRequest & { tenant: string }, source: RemoteSource): Promise<PutOutcome<VolumeView>> {
    const remotes = this.remotes;
    if (!remotes) throw new DomainError('UNSUPPORTED_FOR_POOL', 'this agent does not pull remote sources', { field: 'source.remote' });
    const { id, tenant } = request;
    const pool = this.pool(request.pool ?? this.defaultPoolName());
    remotes.check(source);
    const remote = { uri: source.uri, sizeBytes: source.sizeBytes, ...(source.volume !== undefined ? { volume: source.volume } : {}) };
    const requestKey = canonicalKey({ pool: pool.name, tenant, sizeBytes: request.sizeBytes ?? null, source: { remote } });
    const existing = this.catalog.getVolume(id);
    if (existing) return this.repeatVolume(existing, requestKey, request.wait);
    if (request.sizeBytes !== undefined && request.sizeBytes < source.sizeBytes) {
      throw new DomainError('SHRINK_NOT_SUPPORTED', `the source is ${source.sizeBytes} bytes; a clone cannot be smaller`, {
        sizeBytes: request.sizeBytes, sourceSizeBytes: source.sizeBytes,
      });
    }
    const sizeBytes = request.sizeBytes ?? source.sizeBytes;
    this.checkObjectName(pool, id, { volume: id });
    this.checkSizeAlignment(pool, sizeBytes);
    if (await pool.stat(id)) {
      throw toDomainError(systemError('EEXIST', 'populate', pool.objectPath(id)), { volume: id });
    }
    const operationId = newOperationId();
    const inserted = await this.recordIntent(id, this.writes.insertCreating(
      { id, pool: pool.name, tenant, kind: 'volume', sizeBytes, requestKey, remoteSource: remote },
      { id: operationId, kind: 'pull', targetId: id, totalBytes: source.sizeBytes, tenant }));
    if (!inserted.inserted) return this.repeatVolume(inserted.row, requestKey, request.wait);
    const work = async (context?: TaskContext): Promise<void> => {
      let made = false;
      try {
        const started = process.hrtime.bigint();
        const opened = await remotes.open(source, context?.signal);
        let pulled;
        try {
          failpoint('pull.connected');
          await pool.populate(id, sizeBytes, async (poolSink) => {
            // A test's way to catch the pull in the middle: passed once, at the first write done; held
            // there, every write waits, so the pull reads no more than the chunks already in flight.
            let copying: Promise<void> | undefined;
            const sink = {
              write: async (data: Buffer, offset: number): Promise<void> => {
                await poolSink.write(data, offset);
                copying ??= failpointAsync('pull.copying', context?.signal);
                await copying;
              },
            };
            pulled = await opened.copyInto(sink, {
              ...(context ? { signal: context.signal, onProgress: (copied: number) => context.progress(copied, source.sizeBytes) } : {}),
            });
            failpoint('pull.copied');
          }, { ...(context ? { signal: context.signal } : {}) });
          made = true;
        } finally {
          await opened.close().catch(() => undefined);
        }
        failpoint('pull.populated');
        this.onCloned?.('nbd_pull', secondsSince(started), (pulled as { writtenBytes: number } | undefined)?.writtenBytes ?? 0);
        await this.writes.transitionVolume(id, 'creating', 'available', { cloneMethod: 'nbd_pull', sizeBytes });
      } catch (error) {
        if (made) await pool.remove(id).catch(() => undefined); // published but not recorded: withdraw it
        await this.writes.discardCreatingVolume(id);
        throw toDomainError(error, { volume: id });
      }
    };
    const started = this.start(id, source.sizeBytes, operationId, work, () => undefined);
    if (started && !request.wait) return { status: 'started', view: await this.viewOf(id), operation: started };
    await this.settled(id);
    return { status: 'created', view: await this.viewOf(id) };
  }

  /** Runs the pool's copy `clone` with the writes to `volumeId` held for exactly its time (none given: as it is). */
  private async copyAtOneInstant(volumeId: string | undefined, clone: () => Promise<CloneOutcome>): Promise<CloneOutcome> {
    const release = volumeId !== undefined ? await this.copyWrites?.hold(volumeId) : undefined;
    try {
      return await clone();
    } finally {
      release?.();
    }
  }

  /**
   * Runs `work` for `object`: as an operation when `operationId` is given
   * (returning its view), else directly. `release` is called when it ends.
   */
  private start(object: string, totalBytes: number, operationId: string | undefined,
    work: (context?: TaskContext) => Promise<void>, release: Release): OperationView | undefined {
    const done = (operationId ? this.operations.run(operationId, totalBytes, work) : work()).finally(() => {
      release();
      this.pending.delete(object);
    });
    done.catch(() => undefined); // awaited by whoever waits; an unwatched operation records its own outcome
    this.pending.set(object, { ...(operationId ? { operationId } : {}), done });
    return operationId ? this.operations.get(operationId) : undefined;
  }

  /** Waits for the creation of `object` to end; rethrows its fault. */
  private async settled(object: string): Promise<void> {
    try {
      await this.pending.get(object)?.done;
    } catch (error) {
      throw toDomainError(error);
    }
  }

  /**
   * A repeat of a request whose creation of `object` is still running: the
   * running operation when the first answer was 202 and the repeat does not
   * wait, else undefined once the creation has ended.
   */
  private async joinCreation(object: string, operationId: string | undefined, wait: boolean): Promise<OperationView | undefined> {
    let pending = this.pending.get(object);
    const intent = pending ? undefined : this.intents.get(object);
    if (intent) {
      await intent.catch(() => undefined); // its writer, awaiting it first, has started the creation by now
      pending = this.pending.get(object);
    }
    if (!pending) throw this.busyCreating(object, operationId);
    if (pending.operationId && !wait) return this.operations.get(pending.operationId)!;
    await this.settled(object);
    return undefined;
  }

  /**
   * Tracks the write of `object`'s intent row until it resolves. The writer
   * awaits the returned promise before anyone else can (see joinCreation),
   * so its continuation, which starts the creation, runs first.
   */
  private recordIntent<T>(object: string, write: Promise<T>): Promise<T> {
    const tracked: Promise<T> = write.finally(() => {
      if (this.intents.get(object) === tracked) this.intents.delete(object);
    });
    this.intents.set(object, tracked);
    return tracked;
  }

  private taskOptions(context?: TaskContext): { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } {
    return context ? { signal: context.signal, onProgress: (done, total) => context.progress(done, total) } : {};
  }

  /** The answer to a PUT whose id exists: the same definition is a repeat, another is a conflict. */
  private async repeatVolume(row: VolumeRow, requestKey: string, wait: boolean): Promise<PutOutcome<VolumeView>> {
    if (row.requestKey !== requestKey) {
      throw new DomainError('VOLUME_EXISTS', `volume ${row.id} exists with a different definition`, { volume: row.id });
    }
    const running = row.state === 'creating' ? await this.joinCreation(row.id, row.operationId, wait) : undefined;
    if (running) return { status: 'started', view: await this.volumeView(row), operation: running };
    return { status: 'exists', view: await this.viewOf(row.id) };
  }

  private async repeatSnapshot(row: SnapshotRow, volumeId: string, wait: boolean): Promise<PutOutcome<SnapshotView>> {
    if (row.volumeId !== volumeId) {
      throw new DomainError('SNAPSHOT_EXISTS', `snapshot ${row.id} exists on volume ${row.volumeId}`, { snapshot: row.id, volume: row.volumeId });
    }
    const object = snapshotObject(volumeId, row.id);
    const running = row.state === 'creating' ? await this.joinCreation(object, row.operationId, wait) : undefined;
    if (running) return { status: 'started', view: await this.getSnapshot(volumeId, row.id), operation: running };
    return { status: 'exists', view: await this.getSnapshot(volumeId, row.id) };
  }

  /** The source `ref` names, when `access` may clone from it; another tenant's is absent (404). */
  private resolveSource(ref: SourceRef, access: Access): ResolvedSource {
    if ('volume' in ref) {
      const row = this.catalog.getVolume(ref.volume);
      if (!row || !access.usesSource(row)) throw this.notFound(ref.volume);
      this.requireAvailable(row);
      return { ref, kind: 'volume', id: row.id, pool: row.pool, object: row.id, sizeBytes: row.sizeBytes };
    }
    if ('snapshot' in ref) {
      const snapshot = this.catalog.findSnapshot(ref.snapshot);
      const volume = snapshot && this.catalog.getVolume(snapshot.volumeId);
      if (!snapshot || !volume || !access.usesSource(volume)) {
        throw new DomainError('SNAPSHOT_NOT_FOUND', `snapshot ${ref.snapshot} does not exist`, { snapshot: ref.snapshot });
      }
      if (snapshot.state !== 'available') {
        throw new DomainError('VOLUME_BUSY', `snapshot ${snapshot.id} is ${snapshot.state}`, { snapshot: snapshot.id, state: snapshot.state });
      }
      return { ref, kind: 'snapshot', id: snapshot.id, pool: snapshot.pool, object: snapshotObject(snapshot.volumeId, snapshot.id), sizeBytes: snapshot.sizeBytes };
    }
    const image = this.catalog.getImage(ref.image);
    if (!image || image.state === 'deleting' || !access.usesImage(image)) {
      throw new DomainError('IMAGE_NOT_FOUND', `image ${ref.image} does not exist`, { image: ref.image });
    }
    if (image.state !== 'available') {
      throw new DomainError('VOLUME_BUSY', `image ${image.id} is ${image.state}`, { image: image.id, state: image.state });
    }
    const imageVolume = this.volumeRow(image.volumeId);
    this.requireAvailable(imageVolume);
    return { ref, kind: 'image', id: image.id, pool: imageVolume.pool, object: imageVolume.id, sizeBytes: imageVolume.sizeBytes };
  }

  private isImage(volumeId: string, imageId: string): DomainError {
    return new DomainError('VOLUME_IS_IMAGE', `volume ${volumeId} is the Image-Volume of image ${imageId}; delete the image instead`, {
      volume: volumeId, image: imageId,
    });
  }

  // --- helpers ---

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
  private volumeRow(id: string, access?: Access): VolumeRow {
    const row = this.catalog.getVolume(id);
    if (!row || (access && !access.sees(row))) throw this.notFound(id);
    return row;
  }

  /** The view of a volume this request made or found (already judged visible). */
  private async viewOf(id: string): Promise<VolumeView> {
    return this.volumeView(this.volumeRow(id));
  }

  /** Absent, or not the caller's: one answer for both, so no other tenant's id is confirmed. */
  private notFound(id: string): DomainError {
    return new DomainError('VOLUME_NOT_FOUND', `volume ${id} does not exist`, { volume: id });
  }

  private requireAvailable(row: VolumeRow): void {
    if (row.state !== 'available') {
      throw new DomainError('VOLUME_BUSY', `volume ${row.id} is ${row.state}`, { volume: row.id, state: row.state, ...(row.operationId ? { operation: row.operationId } : {}) });
    }
  }

  /** The backend's own limits on names (a file name within NAME_MAX), before any intent is written. */
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
   * a source file removed, or a target name taken, behind the agent's back is refused before any intent
   * or operation is recorded (the pool would refuse it mid-way).
   */
  private async checkPoolObjects(sourcePool: Pool, source: string, targetPool: Pool, target: string, details: Record<string, unknown>): Promise<void> {
    if (!(await sourcePool.stat(source))) throw toDomainError(systemError('ENOENT', 'stat', sourcePool.objectPath(source)), details);
    if (await targetPool.stat(target)) throw toDomainError(systemError('EEXIST', 'stat', targetPool.objectPath(target)), details);
  }

  private checkObjectName(pool: Pool, object: string, details: Record<string, unknown>): void {
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

  private exported(id: string): DomainError {
    return new DomainError('VOLUME_BUSY', `volume ${id} is exported; unexport it first`, { volume: id, exports: this.catalog.exportsOfVolume(id).map((e) => e.id) });
  }

  /** Checked before the row changes: a device in use stays as it is (the pool's EBUSY later would leave the row in error). */
  private heldOpen(object: string, details: Record<string, unknown>): DomainError {
    return new DomainError('VOLUME_BUSY', `${object} is held open outside the agent (a process or a mount uses its device)`, details);
  }

  private busyCreating(object: string, operationId: string | undefined): DomainError {
    return new DomainError('VOLUME_BUSY', `${object} is being created${operationId ? ` by operation ${operationId}` : ''}`, {
      object, ...(operationId ? { operations: [operationId] } : {}),
    });
  }

  private async lock(key: string, mode: 'shared' | 'exclusive', holder: string, waitMs = this.lockWaitMs): Promise<Release> {
    try {
      return await this.locks.acquire(key, mode, holder, waitMs);
    } catch (error) {
      throw toDomainError(error, { operations: this.operationsOn(key) });
    }
  }

  /** Operations whose work holds `key`, for VOLUME_BUSY details. */
  private operationsOn(key: string): string[] {
    return this.operations.list().filter((op) => op.state === 'running' && this.locks.holdersOf(key).some((h) => h.endsWith(` ${op.target}`))).map((op) => op.id);
  }

  private async volumeView(row: VolumeRow): Promise<VolumeView> {
    const info = row.state === 'creating' ? undefined : await this.pools.get(row.pool)?.stat(row.id).catch(() => undefined);
    return {
      id: row.id,
      pool: row.pool,
      tenant: row.tenant,
      kind: row.kind,
      sizeBytes: row.sizeBytes,
      allocatedBytes: info?.allocatedBytes ?? 0,
      state: row.state,
      ...(row.source ? { source: { [row.source.kind]: row.source.id } as SourceRef } : {}),
      ...(row.remoteSource ? { source: { remote: row.remoteSource } } : {}),
      cloneMethod: row.cloneMethod ?? null,
      readOnly: row.readOnly,
      createdAt: row.createdAt,
      ...(row.operationId ? { operation: row.operationId } : {}),
      ...(row.error ? { error: row.error } : {}),
    };
  }

  private async snapshotView(row: SnapshotRow, volume: VolumeRow): Promise<SnapshotView> {
    const info = row.state === 'creating' ? undefined : await this.pools.get(row.pool)?.stat(snapshotObject(row.volumeId, row.id)).catch(() => undefined);
    return {
      id: row.id,
      volume: row.volumeId,
      pool: row.pool,
      tenant: volume.tenant,
      sizeBytes: row.sizeBytes,
      allocatedBytes: info?.allocatedBytes ?? 0,
      state: row.state,
      cloneMethod: row.cloneMethod ?? null,
      readOnly: true,
      createdAt: row.createdAt,
      ...(row.operationId ? { operation: row.operationId } : {}),
      ...(row.error ? { error: row.error } : {}),
    };
  }
}

/** A request's definition in one canonical form (keys in a fixed order), to tell a repeat from a conflict. */
export function canonicalKey(definition: { pool: string; tenant: string; sizeBytes: number | null; source: VolumeSource | null }): string {
  const source = definition.source === null ? null : Object.entries(definition.source)[0]!;
  return JSON.stringify([definition.pool, definition.tenant, definition.sizeBytes, source]);
}

function secondsSince(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}
