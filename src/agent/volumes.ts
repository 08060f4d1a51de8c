// Volumes: idempotent creation (empty, a clone of a volume, snapshot or
// image of this host, a pull from a peer agent, the adoption of an object the
// agent did not make), resize, transfer, revert, delete. Snapshots are in snapshots.ts, the Image-Volumes images.ts asks for
// in image-volumes.ts, the creation runner in creations.ts, the checks they
// share in volume-checks.ts and the views in volume-views.ts.
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
// past the agent (a writable block export) is refused (ExportState).
import type { Catalog, SourceKind, VolumeKind, VolumeRow } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';
import { failpoint, failpointAsync } from '../common/failpoints.js';
import { systemError } from '../native/system-error.js';
import type { CloneOutcome, Pool, UnmanagedObject, UnmanagedObjects } from '../pools/pool.js';
import type { Access } from './access.js';
import type { Creations } from './creations.js';
import { busyCreating, secondsSince, taskOptions } from './creations.js';
import { DomainError } from './errors.js';
import { toDomainError } from './faults.js';
import { snapshotObject } from './ids.js';
import type { Release } from './locks.js';
import type { TaskContext } from './operations.js';
import { newOperationId } from './operations.js';
import { isCompletable } from './reconcile.js';
import type { RemoteSource, RemoteSources } from './remote-sources.js';
import type { CloneEvents, VolumeChecks } from './volume-checks.js';
import type { PutOutcome, SourceRef, VolumeSource, VolumeView } from './volume-views.js';
import { canonicalKey, volumeView } from './volume-views.js';

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

interface ResolvedSource {
  ref: SourceRef;
  kind: SourceKind;
  id: string;
  pool: string;
  object: string;
  sizeBytes: number;
}

/** What a clone makes: a plain volume, or an Image-Volume (read-only, maybe in the internal tenant). */
export interface CloneShape {
  kind: VolumeKind;
  readOnly: boolean;
}

export interface VolumeFilter {
  pool?: string;
  kind?: VolumeKind;
}

export class Volumes {
  constructor(
    /** Reads; every write goes through `writes`. */
    private readonly catalog: Catalog,
    private readonly writes: CatalogWrites,
    /** The same writes, resolving before their fsync (Durability): only for what the start-up reconcile can redo. */
    private readonly deferredWrites: CatalogWrites,
    private readonly pools: ReadonlyMap<string, Pool>,
    private readonly checks: VolumeChecks,
    private readonly creations: Creations,
    private readonly events: CloneEvents,
    /** How a volume is pulled from a peer agent; absent, a remote source is refused. */
    private readonly remotes?: RemoteSources,
  ) {}

  // --- volumes ---

  /** The volumes `access` sees (its scope's, or all). */
  async list(access: Access, filter: VolumeFilter = {}): Promise<VolumeView[]> {
    if (filter.pool !== undefined) this.checks.pool(filter.pool);
    const rows = this.catalog.listVolumes({ ...filter, ...(access.scope !== undefined ? { tenant: access.scope } : {}) });
    return Promise.all(rows.map((row) => volumeView(row, this.pools)));
  }

  async get(id: string, access: Access): Promise<VolumeView> {
    return volumeView(this.checks.volumeRow(id, access), this.pools);
  }

  async put(request: PutVolumeRequest, access: Access): Promise<PutOutcome<VolumeView>> {
    const owned = { ...request, tenant: access.owner(request.tenant) };
    if (request.source === undefined) return this.createEmpty(owned);
    if ('remote' in request.source) return this.createFromRemote(owned, request.source.remote);
    if ('unmanaged' in request.source) return this.adopt(owned, request.source.unmanaged, access);
    return this.clone(owned, request.source, access);
  }

  async resize(id: string, sizeBytes: number, access: Access): Promise<VolumeView> {
    this.checks.volumeRow(id, access);
    const release = await this.checks.lock(id, 'exclusive', `resize ${id}`);
    try {
      const row = this.checks.volumeRow(id);
      if (row.state !== 'available') throw new DomainError('VOLUME_BUSY', `volume ${id} is ${row.state}`, { volume: id, state: row.state });
      if (row.readOnly) throw new DomainError('VOLUME_READ_ONLY', `volume ${id} is read-only`, { volume: id });
      if (this.checks.exports.isExported(id)) throw this.checks.exported(id);
      if (sizeBytes < row.sizeBytes) {
        throw new DomainError('SHRINK_NOT_SUPPORTED', `volume ${id} is ${row.sizeBytes} bytes; it can only grow`, { volume: id, sizeBytes: row.sizeBytes });
      }
      if (sizeBytes > row.sizeBytes) {
        this.checks.checkSizeAlignment(this.checks.pool(row.pool), sizeBytes);
        try {
          await this.checks.pool(row.pool).resize(id, sizeBytes);
        } catch (error) {
          throw toDomainError(error, { volume: id });
        }
        await this.writes.updateVolume(id, { sizeBytes });
      }
      return await volumeView(this.checks.volumeRow(id), this.pools);
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
    this.checks.volumeRow(id, access);
    const release = await this.checks.lock(id, 'exclusive', `transfer ${id}`);
    try {
      const row = this.checks.volumeRow(id);
      const image = this.catalog.imageOfVolume(id);
      if (image) throw this.checks.isImage(id, image.id);
      if (row.kind === 'image') throw new DomainError('VOLUME_IS_IMAGE', `volume ${id} is an Image-Volume; it is not transferred`, { volume: id });
      this.checks.requireAvailable(row);
      if (row.tenant !== tenant && !(await this.writes.updateVolume(id, { tenant }))) this.checks.requireAvailable(this.checks.volumeRow(id));
      return await volumeView(this.checks.volumeRow(id), this.pools);
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
    this.checks.volumeRow(id, access);
    const image = this.catalog.imageOfVolume(id);
    if (image) throw this.checks.isImage(id, image.id);
    const snapshotNotFound = (): DomainError => new DomainError('SNAPSHOT_NOT_FOUND', `volume ${id} has no snapshot ${snapshotId}`, { volume: id, snapshot: snapshotId });
    if (!this.catalog.getSnapshot(id, snapshotId)) throw snapshotNotFound();
    const object = snapshotObject(id, snapshotId);
    const release = await this.checks.lock(id, 'exclusive', `revert ${id}`);
    try {
      const releaseSnapshot = await this.checks.lock(object, 'shared', `revert ${id}`);
      try {
        const row = this.checks.volumeRow(id);
        if (row.kind === 'image') throw new DomainError('VOLUME_IS_IMAGE', `volume ${id} is an Image-Volume; it is not reverted`, { volume: id });
        this.checks.requireAvailable(row);
        if (row.readOnly) throw new DomainError('VOLUME_READ_ONLY', `volume ${id} is read-only`, { volume: id });
        if (this.checks.exports.isExported(id)) throw this.checks.exported(id);
        const snapshot = this.catalog.getSnapshot(id, snapshotId);
        if (!snapshot) throw snapshotNotFound();
        if (snapshot.state !== 'available') throw new DomainError('VOLUME_BUSY', `snapshot ${snapshotId} is ${snapshot.state}`, { snapshot: snapshotId, state: snapshot.state });
        const pool = this.checks.pool(row.pool);
        if (await pool.inUse?.(id)) throw this.checks.heldOpen(id, { volume: id });
        try {
          await pool.revert(id, object);
        } catch (error) {
          throw toDomainError(error, { volume: id, snapshot: snapshotId });
        }
        return await volumeView(this.checks.volumeRow(id), this.pools);
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
    if (row && !access.sees(row)) throw this.checks.notFound(id);
    const image = this.catalog.imageOfVolume(id);
    if (image) throw this.checks.isImage(id, image.id);
    return this.remove(id);
  }

  async remove(id: string, waitMs = this.checks.lockWaitMs, held?: Release): Promise<void> {
    const first = this.catalog.getVolume(id);
    if (!first || first.state === 'creating') held?.();
    if (!first) return;
    if (first.state === 'creating') throw busyCreating(id, first.operationId);
    const release = held ?? await this.checks.lock(id, 'exclusive', `delete ${id}`, waitMs);
    try {
      const row = this.catalog.getVolume(id);
      if (!row) return;
      if (row.state === 'creating') throw busyCreating(id, row.operationId);
      const snapshots = this.catalog.listSnapshots(id);
      if (snapshots.length > 0) {
        throw new DomainError('VOLUME_HAS_SNAPSHOTS', `volume ${id} has ${snapshots.length} snapshot(s); delete them first`, {
          volume: id, snapshots: snapshots.map((s) => s.id),
        });
      }
      if (this.checks.exports.isExported(id)) throw this.checks.exported(id);
      const pool = this.checks.pool(row.pool);
      if (await pool.inUse?.(id)) throw this.checks.heldOpen(id, { volume: id });
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

  private async createEmpty(request: PutVolumeRequest & { tenant: string }): Promise<PutOutcome<VolumeView>> {
    const pool = this.checks.pool(request.pool ?? this.checks.defaultPoolName());
    const { id, tenant, sizeBytes } = request;
    if (sizeBytes === undefined) throw new DomainError('INVALID_SIZE', 'sizeBytes is required when there is no source', { field: 'sizeBytes' });
    const requestKey = canonicalKey({ pool: pool.name, tenant, sizeBytes, source: null });
    const existing = this.catalog.getVolume(id);
    if (existing) return this.repeat(existing, requestKey, request.wait);
    this.checks.checkObjectName(pool, id, { volume: id });
    this.checks.checkSizeAlignment(pool, sizeBytes);
    const inserted = await this.creations.recordIntent(id, this.writes.insertCreating({ id, pool: pool.name, tenant, kind: 'volume', sizeBytes, requestKey }));
    if (!inserted.inserted) return this.repeat(inserted.row, requestKey, request.wait);
    const work = async (): Promise<void> => {
      try {
        await pool.create(id, sizeBytes);
        await this.writes.transitionVolume(id, 'creating', 'available', { cloneMethod: 'create' });
      } catch (error) {
        await this.writes.discardCreatingVolume(id);
        throw toDomainError(error, { volume: id });
      }
    };
    this.creations.start(id, sizeBytes, undefined, work, () => undefined);
    await this.creations.settled(id);
    return { status: 'created', view: await this.viewOf(id) };
  }

  async clone(request: PutVolumeRequest & { tenant: string }, ref: SourceRef, access: Access,
    shape: CloneShape = { kind: 'volume', readOnly: false }): Promise<PutOutcome<VolumeView>> {
    const { id, tenant } = request;
    let source = this.resolveSource(ref, access);
    // The target pool: the named one, else the source's. Another pool of this host gets a copy (or a reflink where they share a filesystem).
    const pool = this.checks.pool(request.pool ?? source.pool);
    const requestKey = canonicalKey({ pool: pool.name, tenant, sizeBytes: request.sizeBytes ?? null, source: ref }) + (shape.kind === 'volume' ? '' : `/${shape.kind}`);
    const existing = this.catalog.getVolume(id);
    if (existing) return this.repeat(existing, requestKey, request.wait);
    if (request.sizeBytes !== undefined && request.sizeBytes < source.sizeBytes) {
      throw new DomainError('SHRINK_NOT_SUPPORTED', `the source is ${source.sizeBytes} bytes; a clone cannot be smaller`, {
        sizeBytes: request.sizeBytes, sourceSizeBytes: source.sizeBytes,
      });
    }
    this.checks.checkObjectName(pool, id, { volume: id });
    // Within one pool the source's size is the pool's already; into another, the size the clone ends with must be one it stores.
    if (request.sizeBytes !== undefined || source.pool !== pool.name) this.checks.checkSizeAlignment(pool, request.sizeBytes ?? source.sizeBytes);
    const release = await this.checks.lock(source.object, 'shared', `clone ${id}`);
    let handedOver = false;
    try {
      source = this.resolveSource(ref, access); // it may have changed while we waited for the lock
      const sourcePool = this.checks.pool(source.pool);
      const across = sourcePool !== pool;
      await this.checks.checkPoolObjects(sourcePool, source.object, pool, id, { volume: id });
      const sizeBytes = request.sizeBytes ?? source.sizeBytes;
      const copies = across ? !pool.sharesBlocksWith(sourcePool) : !pool.capabilities().constantTimeClone;
      // Snapshots and Image-Volumes are never written: only a volume source has writes to hold.
      const heldVolume = copies && source.kind === 'volume' ? source.id : undefined;
      if (heldVolume !== undefined) this.checks.exports.checkWritesHoldable(heldVolume);
      const operationId = copies ? newOperationId() : undefined;
      const inserted = await this.creations.recordIntent(id, this.writes.insertCreating(
        { id, pool: pool.name, tenant, kind: shape.kind, readOnly: shape.readOnly, sizeBytes, requestKey, source: { kind: source.kind, id: source.id } },
        operationId ? { id: operationId, kind: 'clone', targetId: id, totalBytes: source.sizeBytes, tenant } : undefined));
      if (!inserted.inserted) return await this.repeat(inserted.row, requestKey, request.wait);
      handedOver = true;
      const resolved = source;
      // A crash before a completable row's result is durable leaves it creating
      // beside its whole object, and the start-up reconcile completes it: its
      // answer need not wait for an fsync.
      const resultWrites = isCompletable(inserted.row, pool) ? this.deferredWrites : this.writes;
      const work = async (context?: TaskContext): Promise<void> => {
        let outcome: CloneOutcome | undefined;
        try {
          const started = process.hrtime.bigint();
          const options = {
            readOnly: shape.readOnly,
            ...(request.sizeBytes !== undefined ? { sizeBytes: request.sizeBytes } : {}),
            ...taskOptions(context),
          };
          outcome = await this.checks.copyAtOneInstant(heldVolume, async () => {
            if (!across) return pool.clone(resolved.object, id, options);
            // Inside the hold: the allocation is of the same instant as the bytes copied.
            const allocation = await sourcePool.allocation?.(resolved.object, 0, resolved.sizeBytes);
            return pool.cloneFrom({ path: sourcePool.objectPath(resolved.object), sizeBytes: resolved.sizeBytes, ...(allocation ? { allocation } : {}) }, id, options);
          });
          this.events.cloned(outcome.method, secondsSince(started), outcome.bytesCopied);
          await resultWrites.transitionVolume(id, 'creating', 'available', { cloneMethod: outcome.method, sizeBytes: Math.max(sizeBytes, resolved.sizeBytes) });
          if (resolved.kind === 'image') this.events.imageCloned(resolved.id);
        } catch (error) {
          if (outcome) await pool.remove(id).catch(() => undefined); // published but not recorded: withdraw it
          await this.writes.discardCreatingVolume(id);
          throw toDomainError(error, { volume: id });
        }
      };
      const started = this.creations.start(id, source.sizeBytes, operationId, work, release);
      if (started && !request.wait) return { status: 'started', view: await this.viewOf(id), operation: started };
      await this.creations.settled(id);
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
    const pool = this.checks.pool(request.pool ?? this.checks.defaultPoolName());
    remotes.check(source);
    const remote = { uri: source.uri, sizeBytes: source.sizeBytes, ...(source.volume !== undefined ? { volume: source.volume } : {}) };
    const requestKey = canonicalKey({ pool: pool.name, tenant, sizeBytes: request.sizeBytes ?? null, source: { remote } });
    const existing = this.catalog.getVolume(id);
    if (existing) return this.repeat(existing, requestKey, request.wait);
    if (request.sizeBytes !== undefined && request.sizeBytes < source.sizeBytes) {
      throw new DomainError('SHRINK_NOT_SUPPORTED', `the source is ${source.sizeBytes} bytes; a clone cannot be smaller`, {
        sizeBytes: request.sizeBytes, sourceSizeBytes: source.sizeBytes,
      });
    }
    const sizeBytes = request.sizeBytes ?? source.sizeBytes;
    this.checks.checkObjectName(pool, id, { volume: id });
    this.checks.checkSizeAlignment(pool, sizeBytes);
    if (await pool.stat(id)) {
      throw toDomainError(systemError('EEXIST', 'populate', pool.objectPath(id)), { volume: id });
    }
    const operationId = newOperationId();
    const inserted = await this.creations.recordIntent(id, this.writes.insertCreating(
      { id, pool: pool.name, tenant, kind: 'volume', sizeBytes, requestKey, remoteSource: remote },
      { id: operationId, kind: 'pull', targetId: id, totalBytes: source.sizeBytes, tenant }));
    if (!inserted.inserted) return this.repeat(inserted.row, requestKey, request.wait);
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
        this.events.cloned('nbd_pull', secondsSince(started), (pulled as { writtenBytes: number } | undefined)?.writtenBytes ?? 0);
        await this.writes.transitionVolume(id, 'creating', 'available', { cloneMethod: 'nbd_pull', sizeBytes });
      } catch (error) {
        if (made) await pool.remove(id).catch(() => undefined); // published but not recorded: withdraw it
        await this.writes.discardCreatingVolume(id);
        throw toDomainError(error, { volume: id });
      }
    };
    const started = this.creations.start(id, source.sizeBytes, operationId, work, () => undefined);
    if (started && !request.wait) return { status: 'started', view: await this.viewOf(id), operation: started };
    await this.creations.settled(id);
    return { status: 'created', view: await this.viewOf(id) };
  }

  /**
   * An object of the pool's storage that the agent did not make becomes
   * volume `id`, its data and size as they are (Cinder's manage_existing of
   * an LV), the admin's alone. Recorded before the pool touches it: the
   * pool's adoption takes more than one step, and a failure, or a crash
   * (the start-up reconcile finds the row creating), gives the object back
   * as it was; it is never removed.
   */
  private async adopt(request: PutVolumeRequest & { tenant: string }, foreign: string, access: Access): Promise<PutOutcome<VolumeView>> {
    access.checkAdmin('PUT /v1/volumes/{id} with source.unmanaged');
    const { id, tenant } = request;
    const pool = this.checks.pool(request.pool ?? this.checks.defaultPoolName());
    const unmanaged = unmanagedOf(pool, 'source.unmanaged');
    if (request.sizeBytes !== undefined) {
      throw new DomainError('BAD_REQUEST', 'an adopted volume keeps the size it has: leave sizeBytes out, and resize it afterwards', { field: 'sizeBytes' });
    }
    const requestKey = canonicalKey({ pool: pool.name, tenant, sizeBytes: null, source: { unmanaged: foreign } });
    const existing = this.catalog.getVolume(id);
    if (existing) return this.repeat(existing, requestKey, request.wait);
    this.checks.checkObjectName(pool, id, { volume: id });
    // One adoption of an object at a time: a second one's give-back must not take the tags off
    // the object while the first is between its steps. '~' is in no object name.
    const release = await this.checks.lock(`~unmanaged/${pool.name}/${foreign}`, 'exclusive', `adopt ${foreign} as ${id}`);
    let handedOver = false;
    try {
      const candidate = await candidateOf(pool, unmanaged, foreign);
      if (candidate.refusal !== undefined) throw refused(pool, foreign, candidate.refusal);
      if (await pool.stat(id)) throw toDomainError(systemError('EEXIST', 'adopt', pool.objectPath(id)), { volume: id });
      const inserted = await this.creations.recordIntent(id, this.writes.insertCreating(
        { id, pool: pool.name, tenant, kind: 'volume', sizeBytes: candidate.sizeBytes, requestKey, unmanagedSource: foreign }));
      if (!inserted.inserted) return await this.repeat(inserted.row, requestKey, request.wait);
      handedOver = true;
      this.creations.start(id, candidate.sizeBytes, undefined, () => this.adoptNow(pool, unmanaged, foreign, id, candidate.sizeBytes), release);
    } finally {
      if (!handedOver) release();
    }
    await this.creations.settled(id);
    return { status: 'created', view: await this.viewOf(id) };
  }

  /** The adoption itself, its row recorded: on any failure the object is given back and the row discarded. */
  private async adoptNow(pool: Pool, unmanaged: UnmanagedObjects, foreign: string, id: string, sizeBytes: number): Promise<void> {
    try {
      await unmanaged.adopt(foreign, id);
      failpoint('adopt.adopted');
      const info = await pool.stat(id);
      await this.writes.transitionVolume(id, 'creating', 'available', { cloneMethod: 'adopt', sizeBytes: info?.sizeBytes ?? sizeBytes });
    } catch (error) {
      await unmanaged.giveBack(foreign, id).catch(() => undefined);
      await this.writes.discardCreatingVolume(id);
      const refusal = (error as { refusal?: string }).refusal;
      throw refusal !== undefined ? refused(pool, foreign, refusal) : toDomainError(error, { volume: id });
    }
  }

  /**
   * The objects of pool `poolName`'s storage that the agent did not make
   * (candidates for `adopt`), or the one named `name`; not a tenant's to see.
   */
  async unmanaged(poolName: string, access: Access, name?: string): Promise<UnmanagedObject[] | UnmanagedObject> {
    access.checkAgentWide(name === undefined ? 'GET /v1/pools/{pool}/unmanaged' : 'GET /v1/pools/{pool}/unmanaged/{name}');
    const pool = this.checks.pool(poolName);
    const unmanaged = unmanagedOf(pool);
    return name === undefined ? unmanaged.list() : candidateOf(pool, unmanaged, name);
  }

  /** The answer to a PUT whose id exists: the same definition is a repeat, another is a conflict. */
  private async repeat(row: VolumeRow, requestKey: string, wait: boolean): Promise<PutOutcome<VolumeView>> {
    if (row.requestKey !== requestKey) {
      throw new DomainError('VOLUME_EXISTS', `volume ${row.id} exists with a different definition`, { volume: row.id });
    }
    const running = row.state === 'creating' ? await this.creations.join(row.id, row.operationId, wait) : undefined;
    if (running) return { status: 'started', view: await volumeView(row, this.pools), operation: running };
    return { status: 'exists', view: await this.viewOf(row.id) };
  }

  /** The source `ref` names, when `access` may clone from it; another tenant's is absent (404). */
  private resolveSource(ref: SourceRef, access: Access): ResolvedSource {
    if ('volume' in ref) {
      const row = this.catalog.getVolume(ref.volume);
      if (!row || !access.usesSource(row)) throw this.checks.notFound(ref.volume);
      this.checks.requireAvailable(row);
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
    const imageVolume = this.checks.volumeRow(image.volumeId);
    this.checks.requireAvailable(imageVolume);
    return { ref, kind: 'image', id: image.id, pool: imageVolume.pool, object: imageVolume.id, sizeBytes: imageVolume.sizeBytes };
  }

  /** The view of a volume this request made or found (already judged visible). */
  private async viewOf(id: string): Promise<VolumeView> {
    return volumeView(this.checks.volumeRow(id), this.pools);
  }
}

/** The pool's adoption, or UNSUPPORTED_FOR_POOL (naming `field` of the request when one asked for it). */
function unmanagedOf(pool: Pool, field?: string): UnmanagedObjects {
  if (!pool.unmanaged) throw new DomainError('UNSUPPORTED_FOR_POOL', `pool ${pool.name} (${pool.backend}) adopts nothing`, { pool: pool.name, ...(field ? { field } : {}) });
  return pool.unmanaged;
}

/** The candidate `name`, adoptable or not, or UNMANAGED_NOT_FOUND. */
async function candidateOf(pool: Pool, unmanaged: UnmanagedObjects, name: string): Promise<UnmanagedObject> {
  const candidate = await unmanaged.get(name);
  if (!candidate) throw new DomainError('UNMANAGED_NOT_FOUND', `pool ${pool.name} holds no ${name} that the agent did not make`, { pool: pool.name, unmanaged: name });
  return candidate;
}

function refused(pool: Pool, name: string, reason: string): DomainError {
  return new DomainError('UNMANAGED_REFUSED', `${name} in pool ${pool.name} cannot be adopted: ${reason}`, { pool: pool.name, unmanaged: name, reason });
}
