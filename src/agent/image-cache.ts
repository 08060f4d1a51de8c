// The image-volume cache of each pool (Cinder's image volume cache): images
// uploaded with cache=true are its entries, limited by `image_cache =
// {max_bytes, max_count}`. Admitting a new entry evicts the least recently
// used entries (a clone from an entry uses it) until the new one fits;
// entries something is reading (a clone, a download; later an export) are
// skipped, and when what is left cannot make room the new entry is refused
// (IMAGE_CACHE_FULL, 507), as is one larger than max_bytes. Entry size is the
// Image-Volume's size. Admissions of one pool are serialized so two uploads
// cannot both take the last room.
import { ApiError } from '../api/errors.js';
import type { Catalog, ImageRow } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';
import type { ImageCacheConfig } from '../pools/pool-config.js';
import { toApiError } from './faults.js';
import type { LockTable } from './locks.js';

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
}

interface Counters {
  hits: number;
  misses: number;
  evictions: number;
}

export class ImageCache {
  private readonly counters = new Map<string, Counters>();

  constructor(
    private readonly catalog: Catalog,
    private readonly writes: CatalogWrites,
    private readonly locks: LockTable,
    /** Pools with a cache, by name. */
    private readonly limits: Map<string, ImageCacheConfig>,
    /** Removes an unused entry's image and Image-Volume, before returning. */
    private readonly evict: (entry: ImageRow) => Promise<void>,
  ) {}

  /** A pool added by a config reload gets its cache. */
  addPool(pool: string, limits: ImageCacheConfig): void {
    this.limits.set(pool, limits);
  }

  /** The pool's limits; UNSUPPORTED_FOR_POOL when it has no cache. */
  limitsOf(pool: string): ImageCacheConfig {
    const limits = this.limits.get(pool);
    if (!limits) throw new ApiError('UNSUPPORTED_FOR_POOL', `pool ${pool} has no image cache (image_cache in its configuration)`, { pool });
    return limits;
  }

  /** Refuses an entry that could never fit, before anything is made. */
  checkFits(pool: string, sizeBytes: number): void {
    const { maxBytes } = this.limitsOf(pool);
    if (maxBytes !== undefined && sizeBytes > maxBytes) throw this.tooLarge(pool, sizeBytes);
  }

  /** IMAGE_CACHE_FULL for an image over max_bytes (its size unknown when a chunked upload passed the limit). */
  tooLarge(pool: string, sizeBytes: number | undefined): ApiError {
    const { maxBytes } = this.limitsOf(pool);
    return new ApiError('IMAGE_CACHE_FULL', `the image${sizeBytes !== undefined ? ` (${sizeBytes} bytes)` : ''} is larger than pool ${pool}'s image cache (max_bytes ${maxBytes})`, {
      pool, maxBytes, ...(sizeBytes !== undefined ? { sizeBytes } : {}),
    });
  }

  /**
   * Makes room for a new entry of `sizeBytes` in `pool`, then runs `commit`
   * (which makes the entry available), all under the pool's cache lock.
   */
  async admit(pool: string, sizeBytes: number, commit: () => Promise<void>): Promise<void> {
    this.checkFits(pool, sizeBytes);
    const { maxBytes = Infinity, maxCount = Infinity } = this.limitsOf(pool);
    let release;
    try {
      release = await this.locks.acquire(`image-cache/${pool}`, 'exclusive', 'admit a cache entry', Infinity);
    } catch (error) {
      throw toApiError(error);
    }
    try {
      const entries = this.catalog.cacheEntries(pool);
      let count = entries.length;
      let bytes = entries.reduce((sum, entry) => sum + this.sizeOf(entry), 0);
      const victims: ImageRow[] = [];
      for (const entry of entries) {
        if (count + 1 <= maxCount && bytes + sizeBytes <= maxBytes) break;
        if (this.locks.isHeld(entry.volumeId)) continue; // in use: not evicted
        victims.push(entry);
        count--;
        bytes -= this.sizeOf(entry);
      }
      if (count + 1 > maxCount || bytes + sizeBytes > maxBytes) {
        throw new ApiError('IMAGE_CACHE_FULL', `pool ${pool}'s image cache has no room: the entries that would make room are in use`, {
          pool, sizeBytes, entries: count, bytes, ...(Number.isFinite(maxBytes) ? { maxBytes } : {}), ...(Number.isFinite(maxCount) ? { maxCount } : {}),
        });
      }
      for (const victim of victims) {
        await this.evict(victim);
        this.count(pool).evictions++;
      }
      await commit();
      this.count(pool).misses++;
    } finally {
      release();
    }
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
      counters = { hits: 0, misses: 0, evictions: 0 };
      this.counters.set(pool, counters);
    }
    return counters;
  }
}
