// Volume-backed images (Cinder's "Image-Volume"): an image is a name for a
// read-only volume of kind `image`, its location `cinder://<volumeId>`.
//
//   clone: the registered volume is cloned into a new Image-Volume (Cinder's
//          upload-to-image); the volume stays writable.
//   adopt: the volume itself becomes the Image-Volume and read-only.
//
// Order (docs/design.md "House style" 10): the image row is written
// `creating` before the pool is touched; the Image-Volume is made (its own
// intent row first, in Volumes); then the image becomes `available`. A
// failure rolls back in reverse and leaves nothing; a crash in between is settled by reconcile at start-up.
// Deleting marks the image `deleting` (no new clone can start from it) and
// removes its Image-Volume once the clones reading it have finished.
//
// Upload (`PUT /v1/images/{id}/data`) streams the body into a new read-only
// Image-Volume (sparse; the pool writes no all-zero block); the image becomes
// available only once the pool has made every byte durable. Download opens
// the Image-Volume under a shared lock, so a delete or an eviction waits for it.
import { randomUUID } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';

import type { Catalog, ImageMode, ImageRow, ImageVisibility } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';
import { isSystemError } from '../native/system-error.js';
import type { Access } from './access.js';
import type { ImageCacheConfig } from '../pools/pool-config.js';
import { DomainError } from './errors.js';
import { toDomainError } from './faults.js';
import type { Admission, ImageCacheView } from './image-cache.js';
import { ImageCache } from './image-cache.js';
import type { LockTable, Release } from './locks.js';
import type { Operations } from './operations.js';
import type { ImageVolumes } from './image-volumes.js';
import type { VolumeChecks } from './volume-checks.js';
import type { PutOutcome } from './volume-views.js';

/** What a pool's configuration says about images in it. */
export interface PoolImagePolicy {
  /** Largest upload accepted (`max_image_bytes`); larger is PAYLOAD_TOO_LARGE. */
  maxImageBytes?: number;
  imageCache?: ImageCacheConfig;
}

export interface ImagesOptions {
  /** Tenant of internal Image-Volumes, and of cache entries' (as Cinder's cache). */
  internalTenant: string;
  lockWaitMs: number;
  policies?: ReadonlyMap<string, PoolImagePolicy>;
}

export interface UploadImageRequest {
  id: string;
  /** Default: the first pool. */
  pool?: string;
  /** The owner named in the request (see Access.owner). */
  tenant?: string;
  visibility: ImageVisibility;
  /** Make the image an entry of the pool's image-volume cache. */
  cache: boolean;
  /** Declared length (Content-Length); undefined when chunked. */
  contentLength?: number;
  /**
   * The bytes; called once the request passed every check that needs no
   * byte. Bytes that stop before their end throw UPLOAD_INCOMPLETE (a
   * DomainError, passed through as it is).
   */
  data: () => AsyncIterable<Uint8Array>;
}

/** An open Image-Volume for a download; `close` releases it (and the lock that keeps it from deletion). */
export interface ImageData {
  sizeBytes: number;
  handle: FileHandle;
  close(): Promise<void>;
}

export interface RegisterImageRequest {
  id: string;
  /** When the pool copies: answer once the Image-Volume is made, rather than with its operation. */
  wait?: boolean;
  /** The volume to register. */
  volume: string;
  mode: Exclude<ImageMode, 'upload'>;
  /** The image's owner named in the request (see Access.owner). */
  tenant?: string;
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
  /** An entry of its pool's image-volume cache. */
  cached: boolean;
  /** In the answer to an upload with cache=true that was kept as a plain image: why no room was made for it. */
  notCached?: string;
  sizeBytes: number;
  state: ImageRow['state'];
  createdAt: string;
  error?: string;
}

export class Images {
  /** Background removals of deleted images' Image-Volumes, by image id; awaited by close(). */
  private readonly removals = new Map<string, Promise<void>>();
  /** Registrations whose Image-Volume is being copied by an operation, by image id; awaited by close(). */
  private readonly registrations = new Map<string, Promise<void>>();
  readonly cache: ImageCache;
  private readonly internalTenant: string;
  private readonly lockWaitMs: number;
  private readonly policies: Map<string, PoolImagePolicy>;

  constructor(
    private readonly catalog: Catalog,
    private readonly writes: CatalogWrites,
    private readonly imageVolumes: ImageVolumes,
    private readonly checks: VolumeChecks,
    private readonly operations: Operations,
    private readonly locks: LockTable,
    options: ImagesOptions,
  ) {
    this.internalTenant = options.internalTenant;
    this.lockWaitMs = options.lockWaitMs;
    this.policies = new Map(options.policies ?? []);
    const cacheLimits = new Map([...this.policies].flatMap(([pool, policy]) => (policy.imageCache ? [[pool, policy.imageCache] as const] : [])));
    this.cache = new ImageCache(catalog, writes, locks, cacheLimits, (entry, hold) => this.evict(entry, hold), options.lockWaitMs);
  }

  /** A volume was made from image `imageId` (CloneEvents.imageCloned): the image cache counts the hit. */
  recordClone(imageId: string): void {
    const image = this.catalog.getImage(imageId);
    if (image) this.cache.recordUse(image);
  }

  /** A pool added by a config reload: its upload limit and image cache. */
  addPolicy(pool: string, policy: PoolImagePolicy): void {
    this.policies.set(pool, policy);
    if (policy.imageCache) this.cache.addPool(pool, policy.imageCache);
  }

  /** The cache's figures for `pool`; undefined when it has none. */
  cacheView(pool: string): ImageCacheView | undefined {
    return this.cache.view(pool);
  }

  /** The images `access` sees: with a scope, its own and the public ones. */
  list(access: Access): ImageView[] {
    return this.catalog.listImages().filter((row) => access.seesImage(row)).map((row) => this.view(row));
  }

  get(id: string, access: Access): ImageView {
    return this.view(this.imageRow(id, access));
  }

  /**
   * `created` (201), `exists` (200, the same definition was registered
   * before), or `started` (202): the pool copies and the caller did not wait;
   * the image becomes available when the operation ends (and is rolled back
   * when it fails).
   */
  async register(request: RegisterImageRequest, access: Access): Promise<PutOutcome<ImageView>> {
    const tenant = access.owner(request.tenant);
    if (request.internal) access.checkInternal(`internal: true`);
    const requestKey = JSON.stringify([request.volume, request.mode, tenant, request.visibility, request.internal]);
    // One registration per image id at a time in this process: a concurrent repeat waits and then sees the outcome.
    const release = await this.lock(`image/${request.id}`, 'exclusive', `register image ${request.id}`);
    try {
      const existing = this.catalog.getImage(request.id);
      if (existing) return await this.repeatRegistration(existing, requestKey, request.wait ?? false);
      const volume = this.catalog.getVolume(request.volume);
      if (!volume || !access.usesSource(volume)) throw new DomainError('VOLUME_NOT_FOUND', `volume ${request.volume} does not exist`, { volume: request.volume });
      const imageOfVolume = this.catalog.imageOfVolume(volume.id);
      if (volume.kind === 'image' || imageOfVolume) {
        throw new DomainError('VOLUME_IS_IMAGE', `volume ${volume.id} is already an Image-Volume${imageOfVolume ? ` (image ${imageOfVolume.id})` : ''}`, {
          volume: volume.id, ...(imageOfVolume ? { image: imageOfVolume.id } : {}),
        });
      }
      if (volume.state !== 'available') {
        throw new DomainError('VOLUME_BUSY', `volume ${volume.id} is ${volume.state}`, { volume: volume.id, state: volume.state });
      }
      if (request.mode === 'adopt') this.checks.checkNoWriters(volume.id); // again under the volume's lock, in ImageVolumes.adopt
      const imageVolumeId = request.mode === 'adopt' ? volume.id : `iv-${randomUUID()}`;
      const imageVolumeTenant = request.internal ? this.internalTenant : tenant;
      const intent = await this.writes.insertImageCreating({
        id: request.id, volumeId: imageVolumeId, pool: volume.pool, tenant, visibility: request.visibility,
        internal: request.internal, mode: request.mode, sourceVolume: volume.id, requestKey,
      });
      if (!intent.inserted) return await this.repeatRegistration(intent.row, requestKey, request.wait ?? false);
      try {
        if (request.mode === 'clone') {
          const made = await this.imageVolumes.create(imageVolumeId, imageVolumeTenant, volume.id, access, request.wait ?? false);
          if (made.status === 'started') {
            this.finishRegistration(intent.row);
            return { status: 'started', view: this.view(this.imageRow(request.id)), operation: made.operation };
          }
          await this.writes.transitionImage(request.id, 'creating', 'available');
        } else {
          await this.imageVolumes.adopt(volume.id, request.id, imageVolumeTenant);
        }
      } catch (error) {
        await this.rollBack(intent.row);
        throw toDomainError(error, { image: request.id });
      }
      return { status: 'created', view: this.view(this.imageRow(request.id)) };
    } finally {
      release();
    }
  }

  /**
   * A new image from uploaded bytes (201). An existing id is IMAGE_EXISTS:
   * an upload cannot be compared with the first, so it is never a repeat.
   * Checks that need no byte come first, so a refused upload is not read.
   */
  async upload(request: UploadImageRequest, access: Access): Promise<ImageView> {
    const tenant = access.owner(request.tenant);
    if (request.cache) access.checkInternal('cache=true');
    const pool = this.checks.pool(request.pool ?? this.checks.defaultPoolName()).name;
    if (this.catalog.getImage(request.id)) throw this.exists(request.id);
    const { maxImageBytes } = this.policies.get(pool) ?? {};
    const cacheMaxBytes = request.cache ? this.cache.limitsOf(pool).maxBytes : undefined;
    const declared = request.contentLength;
    if (declared === 0) throw this.empty();
    if (declared !== undefined) this.checks.checkSizeAlignment(this.checks.pool(pool), declared, 'Content-Length');
    if (declared !== undefined && maxImageBytes !== undefined && declared > maxImageBytes) throw this.tooLarge(pool, maxImageBytes, declared);
    if (declared !== undefined && request.cache) this.cache.checkFits(pool, declared);

    let admission: Admission | undefined;
    const volumeId = `iv-${randomUUID()}`;
    const requestKey = JSON.stringify(['upload', pool, tenant, request.visibility, request.cache]);
    const intent = await this.writes.insertImageCreating({
      id: request.id, volumeId, pool, tenant, visibility: request.visibility,
      internal: request.cache, mode: 'upload', cached: request.cache, requestKey,
    });
    if (!intent.inserted) throw this.exists(request.id);
    try {
      // The smaller limit decides what a too-long (chunked) body is told.
      const cacheDecides = cacheMaxBytes !== undefined && (maxImageBytes === undefined || cacheMaxBytes < maxImageBytes);
      const maxBytes = cacheDecides ? cacheMaxBytes : maxImageBytes;
      let received;
      try {
        received = await this.imageVolumes.receive(volumeId, request.cache ? this.internalTenant : tenant, pool, request.data(), {
          ...(maxBytes !== undefined ? { maxBytes } : {}), ...(declared !== undefined ? { expectedBytes: declared } : {}),
        });
      } catch (error) {
        if (!isSystemError(error, 'EFBIG') || maxBytes === undefined) throw error;
        throw cacheDecides ? this.cache.tooLarge(pool, undefined) : this.tooLarge(pool, maxBytes, undefined);
      }
      if (received.sizeBytes === 0) throw this.empty();
      const makeAvailable = async (cached = true): Promise<void> => {
        await this.writes.transitionImage(request.id, 'creating', 'available', cached ? {} : { cached: false });
      };
      if (request.cache) admission = await this.cache.admit(pool, received.sizeBytes, makeAvailable);
      else await makeAvailable();
    } catch (error) {
      await this.rollBack(intent.row);
      throw toDomainError(error, { image: request.id });
    }
    return { ...this.view(this.imageRow(request.id)), ...(admission?.cached === false ? { notCached: admission.reason } : {}) };
  }

  /**
   * Opens image `id`'s bytes for reading with `access` (the image must be
   * one it sees and may read). Holds a shared lock on the Image-Volume until closed.
   */
  async openData(id: string, access: Access): Promise<ImageData> {
    const row = this.readableImage(id, access);
    const release = await this.lock(row.volumeId, 'shared', `download image ${id}`);
    try {
      const current = this.readableImage(id, access); // it may have changed while we waited
      const volume = this.catalog.getVolume(current.volumeId);
      if (!volume || volume.state !== 'available') throw new DomainError('VOLUME_BUSY', `image ${id} is not readable now`, { image: id });
      const pool = this.checks.pool(volume.pool);
      const handle = await open(pool.objectPath(volume.id), 'r');
      // The pool's size, not fstat's: a block device (thin) has st_size 0.
      const sizeBytes = (await pool.stat(volume.id).catch(async (error: unknown) => {
        await handle.close();
        throw error;
      }))?.sizeBytes ?? volume.sizeBytes;
      let closed: Promise<void> | undefined;
      return {
        sizeBytes,
        handle,
        close: () => {
          closed ??= handle.close().finally(release);
          return closed;
        },
      };
    } catch (error) {
      release();
      throw toDomainError(error, { image: id });
    }
  }

  /**
   * Absent is done. The image stops being a clone source at once; its
   * Image-Volume goes when the clones reading it have finished (in the
   * background: the answer does not wait for them).
   */
  async delete(id: string, access: Access): Promise<void> {
    const release = await this.lock(`image/${id}`, 'exclusive', `delete image ${id}`);
    try {
      const row = this.catalog.getImage(id);
      if (!row) return;
      // A public image of another tenant is seen, not owned: absent to this caller's delete.
      if (!access.sees(row)) throw this.notFound(id);
      if (row.state === 'creating') throw new DomainError('VOLUME_BUSY', `image ${id} is being registered`, { image: id });
      // An exported Image-Volume would block the background removal: refused before anything changes.
      const exports = this.catalog.exportsOfVolume(row.volumeId);
      if (row.state !== 'deleting' && exports.length > 0) {
        throw new DomainError('VOLUME_BUSY', `image ${id}: its Image-Volume ${row.volumeId} is exported; unexport it first`, {
          image: id, volume: row.volumeId, exports: exports.map((e) => e.id),
        });
      }
      if (row.state !== 'deleting') await this.writes.transitionImage(id, row.state, 'deleting');
      if (!this.removals.has(id)) this.startRemoval(id, row.volumeId);
    } finally {
      release();
    }
  }

  /** Waits for background removals and registrations (agent shutdown, after operations were cancelled). */
  async close(): Promise<void> {
    await Promise.all([...this.removals.values(), ...this.registrations.values()]);
  }

  /** True for `image/<id>` while this process registers or removes that image: reconcile leaves it alone. */
  isLive(key: string): boolean {
    const id = key.slice('image/'.length);
    return key.startsWith('image/') && (this.removals.has(id) || this.registrations.has(id));
  }

  /** Makes a registration whose Image-Volume is being copied available when the copy ends, or rolls it back. */
  private finishRegistration(row: ImageRow): void {
    const finished: Promise<void> = this.imageVolumes.whenCreated(row.volumeId)
      .then(() => this.writes.transitionImage(row.id, 'creating', 'available').then(() => undefined))
      .catch(() => this.rollBack(row))
      .catch(() => undefined) // a failed rollback leaves a creating row: start-up reconcile settles it
      .finally(() => this.registrations.delete(row.id));
    this.registrations.set(row.id, finished);
  }

  /** A registration asked again: the same definition is answered as the first was (202 while its copy runs). */
  private async repeatRegistration(row: ImageRow, requestKey: string, wait: boolean): Promise<PutOutcome<ImageView>> {
    const view = this.repeat(row, requestKey);
    const registering = this.registrations.get(row.id);
    if (!registering) return { status: 'exists', view };
    const operationId = this.catalog.getVolume(row.volumeId)?.operationId;
    const operation = operationId ? this.operations.get(operationId) : undefined;
    if (!wait && operation) return { status: 'started', view, operation };
    await registering;
    const settled = this.catalog.getImage(row.id);
    if (!settled) throw new DomainError('IMAGE_NOT_FOUND', `the registration of image ${row.id} failed; it was rolled back`, { image: row.id });
    return { status: 'exists', view: this.view(settled) };
  }

  private startRemoval(id: string, volumeId: string): void {
    const removal: Promise<void> = (async () => {
      try {
        await this.imageVolumes.delete(volumeId);
        await this.writes.removeImage(id);
      } catch (error) {
        await this.writes.transitionImage(id, 'deleting', 'error', { error: `removing Image-Volume ${volumeId}: ${(error as Error).message}` })
          .catch(() => undefined);
      }
    })().finally(() => this.removals.delete(id));
    this.removals.set(id, removal);
  }

  /**
   * Evicts an unused cache entry whose Image-Volume's exclusive lock the
   * cache holds (`hold`, released here): no clone or download can start, so
   * it goes at once, before returning.
   */
  private async evict(entry: ImageRow, hold: Release): Promise<void> {
    try {
      await this.writes.transitionImage(entry.id, 'available', 'deleting');
    } catch (error) {
      hold();
      throw error;
    }
    await this.imageVolumes.delete(entry.volumeId, hold);
    await this.writes.removeImage(entry.id);
  }

  /** Undoes a registration or upload that failed before its image became available. */
  private async rollBack(row: ImageRow): Promise<void> {
    if (row.mode !== 'adopt' && this.catalog.getVolume(row.volumeId)) await this.imageVolumes.delete(row.volumeId).catch(() => undefined);
    await this.writes.discardCreatingImage(row.id);
  }

  private repeat(row: ImageRow, requestKey: string): ImageView {
    if (row.requestKey !== requestKey) throw this.exists(row.id);
    return this.view(row);
  }

  private exists(id: string): DomainError {
    return new DomainError('IMAGE_EXISTS', `image ${id} exists with a different definition (an upload never replaces an image)`, { image: id });
  }

  private empty(): DomainError {
    return new DomainError('INVALID_SIZE', 'an image needs at least one byte', { field: 'Content-Length' });
  }

  private tooLarge(pool: string, limitBytes: number, contentLength: number | undefined): DomainError {
    return new DomainError('PAYLOAD_TOO_LARGE', `images in pool ${pool} are at most ${limitBytes} bytes (max_image_bytes)`, {
      pool, limitBytes, ...(contentLength !== undefined ? { contentLength } : {}),
    });
  }

  /** An image that is available, that `access` sees and whose data it may read. */
  private readableImage(id: string, access: Access): ImageRow {
    const row = this.imageRow(id, access);
    if (row.state === 'deleting') throw this.notFound(id);
    access.checkImageData(row);
    if (row.state !== 'available') throw new DomainError('VOLUME_BUSY', `image ${id} is ${row.state}`, { image: id, state: row.state });
    return row;
  }

  /** Image `id`; absent, or not seen by `access` when given: IMAGE_NOT_FOUND. */
  private imageRow(id: string, access?: Access): ImageRow {
    const row = this.catalog.getImage(id);
    if (!row || (access && !access.seesImage(row))) throw this.notFound(id);
    return row;
  }

  private notFound(id: string): DomainError {
    return new DomainError('IMAGE_NOT_FOUND', `image ${id} does not exist`, { image: id });
  }

  private async lock(key: string, mode: 'shared' | 'exclusive', holder: string): Promise<() => void> {
    try {
      return await this.locks.acquire(key, mode, holder, this.lockWaitMs);
    } catch (error) {
      throw toDomainError(error);
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
      cached: row.cached,
      sizeBytes: volume?.sizeBytes ?? 0,
      state: row.state,
      createdAt: row.createdAt,
      ...(row.error ? { error: row.error } : {}),
    };
  }
}
