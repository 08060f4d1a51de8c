// Volume-backed images (Cinder's "Image-Volume"): an image is a name for a
// read-only volume of kind `image`, its location `cinder://<volumeId>`.
//
//   clone: the registered volume is cloned into a new Image-Volume (Cinder's
//          upload-to-image); the volume stays writable.
//   adopt: the volume itself becomes the Image-Volume and read-only.
//
// Order (STYLE.md 10): the image row is written `creating` before the pool is
// touched; the Image-Volume is made (its own intent row first, in Volumes);
// then the image becomes `available`. A failure rolls back in reverse and
// leaves nothing; a crash in between is settled by reconcile at start-up.
// Deleting marks the image `deleting` (no new clone can start from it) and
// removes its Image-Volume once the clones reading it have finished.
import { randomUUID } from 'node:crypto';

import { ApiError } from '../api/errors.js';
import type { Catalog, ImageMode, ImageRow, ImageVisibility } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';
import { toApiError } from './faults.js';
import type { LockTable } from './locks.js';
import type { Volumes } from './volumes.js';

export interface RegisterImageRequest {
  id: string;
  /** The volume to register. */
  volume: string;
  mode: Exclude<ImageMode, 'upload'>;
  /** The caller's tenant: it must own the volume, and owns the image. */
  tenant: string;
  visibility: ImageVisibility;
  /** Put the Image-Volume in the internal tenant. */
  internal: boolean;
}

export interface ImageView {
  imageId: string;
  volumeId: string;
  location: string;
  pool: string;
  tenant: string;
  visibility: ImageVisibility;
  internal: boolean;
  mode: ImageMode;
  sourceVolume?: string;
  sizeBytes: number;
  state: ImageRow['state'];
  createdAt: string;
  error?: string;
}

export interface ImageFilter {
  /** Only images this tenant may use: public ones and its own. */
  visibleTo?: string;
}

export class Images {
  /** Background removals of deleted images' Image-Volumes, by image id; awaited by close(). */
  private readonly removals = new Map<string, Promise<void>>();

  constructor(
    private readonly catalog: Catalog,
    private readonly writes: CatalogWrites,
    private readonly volumes: Volumes,
    private readonly locks: LockTable,
    private readonly internalTenant: string,
    private readonly lockWaitMs: number,
  ) {}

  list(filter: ImageFilter = {}): ImageView[] {
    return this.catalog.listImages()
      .filter((row) => filter.visibleTo === undefined || row.visibility === 'public' || row.tenant === filter.visibleTo)
      .map((row) => this.view(row));
  }

  get(id: string): ImageView {
    return this.view(this.imageRow(id));
  }

  /** `created` (201) or `exists` (200, the same definition was registered before). */
  async register(request: RegisterImageRequest): Promise<{ status: 'created' | 'exists'; view: ImageView }> {
    const requestKey = JSON.stringify([request.volume, request.mode, request.tenant, request.visibility, request.internal]);
    // One registration per image id at a time in this process: a concurrent repeat waits and then sees the outcome.
    const release = await this.lock(`image/${request.id}`, 'exclusive', `register image ${request.id}`);
    try {
      const existing = this.catalog.getImage(request.id);
      if (existing) return { status: 'exists', view: this.repeat(existing, requestKey) };
      const volume = this.catalog.getVolume(request.volume);
      if (!volume) throw new ApiError('VOLUME_NOT_FOUND', `volume ${request.volume} does not exist`, { volume: request.volume });
      if (volume.tenant !== request.tenant) {
        throw new ApiError('SOURCE_NOT_VISIBLE', `volume ${volume.id} belongs to another tenant`, { volume: volume.id });
      }
      const imageOfVolume = this.catalog.imageOfVolume(volume.id);
      if (volume.kind === 'image' || imageOfVolume) {
        throw new ApiError('VOLUME_IS_IMAGE', `volume ${volume.id} is already an Image-Volume${imageOfVolume ? ` (image ${imageOfVolume.id})` : ''}`, {
          volume: volume.id, ...(imageOfVolume ? { image: imageOfVolume.id } : {}),
        });
      }
      if (volume.state !== 'available') {
        throw new ApiError('VOLUME_BUSY', `volume ${volume.id} is ${volume.state}`, { volume: volume.id, state: volume.state });
      }
      const imageVolumeId = request.mode === 'adopt' ? volume.id : `iv-${randomUUID()}`;
      const imageVolumeTenant = request.internal ? this.internalTenant : request.tenant;
      const intent = await this.writes.insertImageCreating({
        id: request.id, volumeId: imageVolumeId, pool: volume.pool, tenant: request.tenant, visibility: request.visibility,
        internal: request.internal, mode: request.mode, sourceVolume: volume.id, requestKey,
      });
      if (!intent.inserted) return { status: 'exists', view: this.repeat(intent.row, requestKey) };
      try {
        if (request.mode === 'clone') {
          await this.volumes.createImageVolume(imageVolumeId, imageVolumeTenant, volume.id, request.tenant);
          await this.writes.transitionImage(request.id, 'creating', 'available');
        } else {
          await this.volumes.adoptAsImageVolume(volume.id, request.id, imageVolumeTenant);
        }
      } catch (error) {
        await this.rollBack(intent.row);
        throw toApiError(error, { image: request.id });
      }
      return { status: 'created', view: this.get(request.id) };
    } finally {
      release();
    }
  }

  /**
   * Absent is done. The image stops being a clone source at once; its
   * Image-Volume goes when the clones reading it have finished (in the
   * background: the answer does not wait for them).
   */
  async delete(id: string): Promise<void> {
    const release = await this.lock(`image/${id}`, 'exclusive', `delete image ${id}`);
    try {
      const row = this.catalog.getImage(id);
      if (!row) return;
      if (row.state === 'creating') throw new ApiError('VOLUME_BUSY', `image ${id} is being registered`, { image: id });
      if (row.state !== 'deleting') await this.writes.transitionImage(id, row.state, 'deleting');
      if (!this.removals.has(id)) this.startRemoval(id, row.volumeId);
    } finally {
      release();
    }
  }

  /** Waits for background removals (agent shutdown, after operations were cancelled). */
  async close(): Promise<void> {
    await Promise.all([...this.removals.values()]);
  }

  /** True for `image/<id>` while this process registers or removes that image: reconcile leaves it alone. */
  isLive(key: string): boolean {
    return key.startsWith('image/') && this.removals.has(key.slice('image/'.length));
  }

  private startRemoval(id: string, volumeId: string): void {
    const removal: Promise<void> = (async () => {
      try {
        await this.volumes.deleteImageVolume(volumeId);
        await this.writes.removeImage(id);
      } catch (error) {
        await this.writes.transitionImage(id, 'deleting', 'error', { error: `removing Image-Volume ${volumeId}: ${(error as Error).message}` })
          .catch(() => undefined);
      }
    })().finally(() => this.removals.delete(id));
    this.removals.set(id, removal);
  }

  /** Undoes a registration that failed before its image became available. */
  private async rollBack(row: ImageRow): Promise<void> {
    if (row.mode === 'clone') await this.volumes.deleteImageVolume(row.volumeId).catch(() => undefined);
    await this.writes.discardCreatingImage(row.id);
  }

  private repeat(row: ImageRow, requestKey: string): ImageView {
    if (row.requestKey !== requestKey) {
      throw new ApiError('IMAGE_EXISTS', `image ${row.id} exists with a different definition`, { image: row.id });
    }
    return this.view(row);
  }

  private imageRow(id: string): ImageRow {
    const row = this.catalog.getImage(id);
    if (!row) throw new ApiError('IMAGE_NOT_FOUND', `image ${id} does not exist`, { image: id });
    return row;
  }

  private async lock(key: string, mode: 'shared' | 'exclusive', holder: string): Promise<() => void> {
    try {
      return await this.locks.acquire(key, mode, holder, this.lockWaitMs);
    } catch (error) {
      throw toApiError(error);
    }
  }

  private view(row: ImageRow): ImageView {
    const volume = this.catalog.getVolume(row.volumeId);
    return {
      imageId: row.id,
      volumeId: row.volumeId,
      location: `cinder://${row.volumeId}`,
      pool: row.pool,
      tenant: row.tenant,
      visibility: row.visibility,
      internal: row.internal,
      mode: row.mode,
      ...(row.sourceVolume ? { sourceVolume: row.sourceVolume } : {}),
      sizeBytes: volume?.sizeBytes ?? 0,
      state: row.state,
      createdAt: row.createdAt,
      ...(row.error ? { error: row.error } : {}),
    };
  }
}
