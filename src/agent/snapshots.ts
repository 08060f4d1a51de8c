// Snapshots of volumes: read-only, point-in-time clones of a volume in its
// pool, idempotent by id. The order of every change is that of volumes.ts:
// locks, intent row, the pool, the outcome. A snapshot in a pool that copies
// runs as an operation (202 unless the client waits) with the volume's
// writes held for exactly the copy.
import type { Catalog, SnapshotRow } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';
import type { Pool } from '../pools/pool.js';
import type { Access } from './access.js';
import type { Creations } from './creations.js';
import { busyCreating, secondsSince, taskOptions } from './creations.js';
import { DomainError } from './errors.js';
import { toDomainError } from './faults.js';
import { snapshotObject } from './ids.js';
import type { TaskContext } from './operations.js';
import { newOperationId } from './operations.js';
import type { CloneEvents, VolumeChecks } from './volume-checks.js';
import type { PutOutcome, SnapshotView } from './volume-views.js';
import { snapshotView } from './volume-views.js';

export class Snapshots {
  constructor(
    /** Reads; every write goes through `writes`. */
    private readonly catalog: Catalog,
    private readonly writes: CatalogWrites,
    private readonly pools: ReadonlyMap<string, Pool>,
    private readonly checks: VolumeChecks,
    private readonly creations: Creations,
    private readonly events: CloneEvents,
  ) {}

  async list(volumeId: string, access: Access): Promise<SnapshotView[]> {
    const volume = this.checks.volumeRow(volumeId, access);
    return Promise.all(this.catalog.listSnapshots(volumeId).map((s) => snapshotView(s, volume, this.pools)));
  }

  async get(volumeId: string, id: string, access?: Access): Promise<SnapshotView> {
    const volume = this.checks.volumeRow(volumeId, access);
    const row = this.catalog.getSnapshot(volumeId, id);
    if (!row) throw new DomainError('SNAPSHOT_NOT_FOUND', `volume ${volumeId} has no snapshot ${id}`, { volume: volumeId, snapshot: id });
    return snapshotView(row, volume, this.pools);
  }

  async put(volumeId: string, id: string, wait: boolean, access: Access): Promise<PutOutcome<SnapshotView>> {
    const { checks } = this;
    const object = snapshotObject(volumeId, id);
    let volume = checks.volumeRow(volumeId, access);
    const existing = this.catalog.findSnapshot(id);
    if (existing) return this.repeat(existing, volumeId, wait);
    const image = this.catalog.imageOfVolume(volumeId);
    if (image) throw checks.isImage(volumeId, image.id); // immutable already: an image is cloned from, not snapshotted
    const pool = checks.pool(volume.pool);
    checks.checkObjectName(pool, object, { volume: volumeId, snapshot: id });
    const release = await checks.lock(volumeId, 'shared', `snapshot ${object}`);
    let handedOver = false;
    try {
      volume = checks.volumeRow(volumeId);
      checks.requireAvailable(volume);
      await checks.checkPoolObjects(pool, volumeId, pool, object, { volume: volumeId, snapshot: id });
      const copies = !pool.capabilities().constantTimeClone;
      if (copies) checks.exports.checkWritesHoldable(volumeId);
      const operationId = copies ? newOperationId() : undefined;
      const inserted = await this.creations.recordIntent(object, this.writes.insertSnapshotCreating({ volumeId, id, pool: pool.name, sizeBytes: volume.sizeBytes },
        operationId ? { id: operationId, kind: 'snapshot', targetId: object, totalBytes: volume.sizeBytes, tenant: volume.tenant } : undefined));
      if (!inserted.inserted) return await this.repeat(inserted.row, volumeId, wait);
      handedOver = true;
      const work = async (context?: TaskContext): Promise<void> => {
        try {
          const started = process.hrtime.bigint();
          const outcome = await checks.copyAtOneInstant(copies ? volumeId : undefined, () => pool.clone(volumeId, object, { readOnly: true, ...taskOptions(context) }));
          this.events.cloned(outcome.method, secondsSince(started), outcome.bytesCopied);
          await this.writes.transitionSnapshot(volumeId, id, 'creating', 'available', { cloneMethod: outcome.method });
        } catch (error) {
          await this.writes.discardCreatingSnapshot(volumeId, id);
          throw toDomainError(error, { volume: volumeId, snapshot: id });
        }
      };
      const started = this.creations.start(object, volume.sizeBytes, operationId, work, release);
      if (started && !wait) {
        return { status: 'started', view: await this.get(volumeId, id), operation: started };
      }
      await this.creations.settled(object);
      return { status: 'created', view: await this.get(volumeId, id) };
    } finally {
      if (!handedOver) release();
    }
  }

  async delete(volumeId: string, id: string, access: Access): Promise<void> {
    const { checks } = this;
    const volume = this.catalog.getVolume(volumeId);
    if (volume && !access.sees(volume)) throw checks.notFound(volumeId);
    const object = snapshotObject(volumeId, id);
    const first = this.catalog.getSnapshot(volumeId, id);
    if (!first) return;
    if (first.state === 'creating') throw busyCreating(object, first.operationId);
    const release = await checks.lock(object, 'exclusive', `delete ${object}`);
    try {
      const row = this.catalog.getSnapshot(volumeId, id);
      if (!row) return;
      if (row.state === 'creating') throw busyCreating(object, row.operationId);
      const pool = checks.pool(row.pool);
      if (await pool.inUse?.(object)) throw checks.heldOpen(object, { volume: volumeId, snapshot: id });
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

  /** The answer to a PUT whose id exists: on the same volume a repeat, on another a conflict. */
  private async repeat(row: SnapshotRow, volumeId: string, wait: boolean): Promise<PutOutcome<SnapshotView>> {
    if (row.volumeId !== volumeId) {
      throw new DomainError('SNAPSHOT_EXISTS', `snapshot ${row.id} exists on volume ${row.volumeId}`, { snapshot: row.id, volume: row.volumeId });
    }
    const object = snapshotObject(volumeId, row.id);
    const running = row.state === 'creating' ? await this.creations.join(object, row.operationId, wait) : undefined;
    if (running) return { status: 'started', view: await this.get(volumeId, row.id), operation: running };
    return { status: 'exists', view: await this.get(volumeId, row.id) };
  }
}
