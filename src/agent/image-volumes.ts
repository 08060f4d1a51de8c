// Image-Volumes, as images.ts asks for them: a read-only clone of a volume
// (registration by clone, and the image-volume cache), a read-only volume
// received from an upload, a volume adopted in place, and the removal of
// one whose image is being deleted. Each is a volume row of kind `image`;
// clones and removals go through Volumes, so they keep its order and checks.
import type { CatalogWrites } from '../catalog/writes.js';
import type { ReceiveOutcome } from '../pools/pool.js';
import type { Access } from './access.js';
import type { Creations } from './creations.js';
import { DomainError } from './errors.js';
import type { Release } from './locks.js';
import type { VolumeChecks } from './volume-checks.js';
import type { PutOutcome, VolumeView } from './volume-views.js';
import { canonicalKey } from './volume-views.js';
import type { Volumes } from './volumes.js';

export class ImageVolumes {
  constructor(
    private readonly writes: CatalogWrites,
    private readonly volumes: Volumes,
    private readonly checks: VolumeChecks,
    private readonly creations: Creations,
  ) {}

  /**
   * An Image-Volume: a read-only clone of volume `source`, owned by `tenant`
   * (maybe the internal one), the source one `access` may use. When the
   * pool copies and `wait` is false, it answers with the running operation
   * (`started`); `whenCreated` then tells how the creation ended.
   */
  async create(id: string, tenant: string, source: string, access: Access, wait = true): Promise<PutOutcome<VolumeView>> {
    return this.volumes.clone({ id, tenant, wait }, { volume: source }, access, { kind: 'image', readOnly: true });
  }

  /** Resolves when the creation of `object` running in this process has ended (at once when none runs); rejects with its fault. */
  whenCreated(object: string): Promise<void> {
    return this.creations.settled(object);
  }

  /**
   * An Image-Volume `id` in pool `poolName`, owned by `tenant`, made from the
   * bytes of `data` (an upload): read-only, sparse, durable before it is
   * available. `expectedBytes` is the declared length (recorded on the intent
   * row); more than `maxBytes` is EFBIG. A failure leaves neither row nor object.
   */
  async receive(id: string, tenant: string, poolName: string, data: AsyncIterable<Uint8Array>,
    limits: { maxBytes?: number; expectedBytes?: number } = {}): Promise<ReceiveOutcome> {
    const pool = this.checks.pool(poolName);
    this.checks.checkObjectName(pool, id, { volume: id });
    const requestKey = `${canonicalKey({ pool: pool.name, tenant, sizeBytes: null, source: null })}/upload`;
    const inserted = await this.creations.recordIntent(id, this.writes.insertCreating({
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
    this.creations.start(id, limits.expectedBytes ?? 0, undefined, work, () => undefined);
    await this.creations.ended(id); // its fault as thrown (EFBIG tells which limit to the caller)
    return received!;
  }

  /**
   * Adoption of volume `id` as image `imageId`'s Image-Volume (in `tenant`):
   * the object becomes read-only, then the volume and the image change in
   * one commit; a failure makes the object writable again.
   */
  async adopt(id: string, imageId: string, tenant: string): Promise<void> {
    const release = await this.checks.lock(id, 'exclusive', `adopt ${id} as image ${imageId}`);
    try {
      this.checks.checkNoWriters(id);
      const pool = this.checks.pool(this.checks.volumeRow(id).pool);
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

  /**
   * Deletes the Image-Volume of an image being deleted, once nothing reads it
   * (no time limit: a background removal); with `held`, the caller holds its
   * exclusive lock already (an eviction), released here.
   */
  async delete(id: string, held?: Release): Promise<void> {
    return this.volumes.remove(id, Infinity, held);
  }
}
