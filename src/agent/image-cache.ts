// The image-volume cache of each pool (Cinder's image volume cache): images
// uploaded with cache=true are its entries, limited by `image_cache =
// {max_bytes, max_count}`. Admitting a new entry evicts the least recently
// used entries (a clone from an entry uses it) until the new one fits. An
// entry is evicted only when the cache holds its Image-Volume's lock outright
// (no clone or download reads it, none can start) and it has no export; the
// others are skipped. When what is left cannot make room, or the cache is
// busy past `lock_wait_ms`, the upload still succeeds: the image is kept as a
// plain image, not an entry (`cached: false`, `notCached` in the answer,
// `volagent_image_cache_not_cached_total`). Only an image larger than
// max_bytes is refused (IMAGE_CACHE_FULL). Entry size is the
// Image-Volume's size. Admissions of one pool are serialized so two uploads
// cannot both take the last room.
import type { Catalog, ImageRow } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';
import type { ImageCacheConfig } from '../pools/pool-config.js';
import { DomainError } from './errors.js';
import { toDomainError } from './faults.js';
import type { LockTable, Release } from './locks.js';
import { LockBusyError } from './locks.js';

export interface ImageCacheView {
  maxBytes?: number;
  maxCount?: number;
  entries: number;
  bytes: number;
  /** Volumes created from a cache entry. */
  hits: number;
  /** Entries filled by an upload with cache=true (the API tier found none to clone). */
  misses: number;
  /** Entries removed to make room for new ones. */
  evictions: number;
  /** Uploads meant as entries that were kept as plain images: no room could be made. */
  notCached: number;
}

interface Counters {
  hits: number;
  misses: number;
  evictions: number;
  notCached: number;
}

/** How an upload meant for the cache was admitted. */
export type Admission = { cached: true } | { cached: false; reason: string };

export class ImageCache {
  private readonly counters = new Map<string, Counters>();

  constructor(
    private readonly catalog: Catalog,
    private readonly writes: CatalogWrites,
    private readonly locks: LockTable,
    /** Pools with a cache, by name. */
    private readonly limits: Map<string, ImageCacheConfig>,
    /** Removes an unused entry's image and Image-Volume, before returning; `hold` is the Image-Volume's exclusive lock, held by the cache. */
    private readonly evict: (entry: ImageRow, hold: Release) => Promise<void>,
    /** How long an admission waits for the pool's cache lock (`[agent] lock_wait_ms`). */
    private readonly lockWaitMs: number,
  ) {}

  /** A pool added by a config reload gets its cache. */
  addPool(pool: string, limits: ImageCacheConfig): void {
    this.limits.set(pool, limits);
  }

  /** The pool's limits; UNSUPPORTED_FOR_POOL when it has no cache. */
  limitsOf(pool: string): ImageCacheConfig {
    const limits = this.limits.get(pool);
    if (!limits) throw new DomainError('UNSUPPORTED_FOR_POOL', `pool ${pool} has no image cache (image_cache in its configuration)`, { pool });
    return limits;
  }

  /** Refuses an entry that could never fit, before anything is made. */
  checkFits(pool: string, sizeBytes: number): void {
    const { maxBytes } = this.limitsOf(pool);
    if (maxBytes !== undefined && sizeBytes > maxBytes) throw this.tooLarge(pool, sizeBytes);
  }

  /** IMAGE_CACHE_FULL for an image over max_bytes (its size unknown when a chunked upload passed the limit). */
  tooLarge(pool: string, sizeBytes: number | undefined): DomainError {
    const { maxBytes } = this.limitsOf(pool);
    return new DomainError('IMAGE_CACHE_FULL', `the image${sizeBytes !== undefined ? ` (${sizeBytes} bytes)` : ''} is larger than pool ${pool}'s image cache (max_bytes ${maxBytes})`, {
      pool, maxBytes, ...(sizeBytes !== undefined ? { sizeBytes } : {}),
    });
  }

  /**
   * Makes room for a new entry of `sizeBytes` in `pool`, then runs `commit`
   * (which makes the image available: an entry when `cached`, else a plain
   * image), all under the pool's cache lock. Only `commit`'s own failure is
   * the upload's: no room is `cached: false`, never an error.
   */
  async admit(pool: string, sizeBytes: number, commit: (cached: boolean) => Promise<void>): Promise<Admission> {
    this.checkFits(pool, sizeBytes);
    const { maxBytes = Infinity, maxCount = Infinity } = this.limitsOf(pool);
    let release: Release;
    try {
      release = await this.locks.acquire(`image-cache/${pool}`, 'exclusive', 'admit a cache entry', this.lockWaitMs);
    } catch (error) {
      if (!(error instanceof LockBusyError)) throw toDomainError(error);
      return this.keepUncached(pool, commit, `pool ${pool}'s image cache was busy admitting another entry for ${this.lockWaitMs} ms`);
    }
    const holds: Release[] = [];
    try {
      const entries = this.catalog.cacheEntries(pool);
      let count = entries.length;
      let bytes = entries.reduce((sum, entry) => sum + this.sizeOf(entry), 0);
      const victims: Array<{ entry: ImageRow; hold: Release }> = [];
      let skipped = 0;
      for (const entry of entries) {
        if (count + 1 <= maxCount && bytes + sizeBytes <= maxBytes) break;
        const hold = await this.holdUnused(entry);
        if (!hold) {
          skipped++;
          continue;
        }
        holds.push(hold);
        victims.push({ entry, hold });
        count--;
        bytes -= this.sizeOf(entry);
      }
      if (count + 1 > maxCount || bytes + sizeBytes > maxBytes) {
        return await this.keepUncached(pool, commit, `pool ${pool}'s image cache has no room: ${skipped} entr${skipped === 1 ? 'y is' : 'ies are'} in use (read, exported or changing) and the rest would not make room`);
      }
      for (const { entry, hold } of victims) {
        holds.splice(holds.indexOf(hold), 1); // the eviction releases it
        try {
          await this.evict(entry, hold);
        } catch (error) {
          return await this.keepUncached(pool, commit, `evicting entry ${entry.id} failed: ${(error as Error).message}`);
        }
        this.count(pool).evictions++;
      }
      await commit(true);
      this.count(pool).misses++;
      return { cached: true };
    } finally {
      for (const hold of holds) hold();
      release();
    }
  }

  /** The Image-Volume's exclusive lock when nothing uses the entry (no reader, no export, no registration or delete); else undefined. */
  private async holdUnused(entry: ImageRow): Promise<Release | undefined> {
    if (this.locks.isHeld(`image/${entry.id}`)) return undefined;
    const hold = await this.locks.acquire(entry.volumeId, 'exclusive', `evict image ${entry.id}`, 0).catch(() => undefined);
    if (!hold) return undefined;
    // Checked under the lock: an export is made under a shared lock of the volume, so none can start now.
    if (this.catalog.exportsOfVolume(entry.volumeId).length > 0 || this.catalog.getImage(entry.id)?.state !== 'available') {
      hold();
      return undefined;
    }
    return hold;
  }

  private async keepUncached(pool: string, commit: (cached: boolean) => Promise<void>, reason: string): Promise<Admission> {
    await commit(false);
    this.count(pool).notCached++;
    return { cached: false, reason };
  }

  /** A volume was made from image `image`: a hit when it is an entry, which becomes the most recently used. */
  recordUse(image: ImageRow): void {
    if (!image.cached || !this.limits.has(image.pool)) return;
    this.count(image.pool).hits++;
    this.writes.touchImage(image.id).catch(() => undefined); // order only: a lost touch makes an entry look older
  }

  view(pool: string): ImageCacheView | undefined {
    const limits = this.limits.get(pool);
    if (!limits) return undefined;
    const entries = this.catalog.cacheEntries(pool);
    return {
      ...limits,
      entries: entries.length,
      bytes: entries.reduce((sum, entry) => sum + this.sizeOf(entry), 0),
      ...this.count(pool),
    };
  }

  private sizeOf(entry: ImageRow): number {
    return this.catalog.getVolume(entry.volumeId)?.sizeBytes ?? 0;
  }

  private count(pool: string): Counters {
    let counters = this.counters.get(pool);
    if (!counters) {
      counters = { hits: 0, misses: 0, evictions: 0, notCached: 0 };
      this.counters.set(pool, counters);
    }
    return counters;
  }
}
