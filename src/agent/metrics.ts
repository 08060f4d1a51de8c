// The agent's Prometheus metrics (GET /metrics, text format 0.0.4, built with
// prom-client). Events are counted where they happen (requests by the API
// server, clones by Volumes); states are read when scraped (pool capacity
// and thin fill, the image caches, exports and NBD connections, operations
// by state), so a scrape always shows the agent as it is. Process metrics
// (RSS, CPU, event-loop lag, open fds) come from prom-client's defaults.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { Pool, PoolCapacity } from '../pools/pool.js';
import type { ImageCacheView } from './image-cache.js';

/** What the scrape-time gauges read. */
export interface MetricsSource {
  pools(): Iterable<Pool>;
  imageCache(pool: string): ImageCacheView | undefined;
  /** Exports by protocol, with their open NBD connections. */
  exports(): Array<{ protocol: string; connections: number }>;
  operationsByState(): Record<string, number>;
}

const REQUEST_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const CLONE_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600];
const OPERATION_STATES = ['running', 'succeeded', 'failed', 'cancelled'];

interface ScrapeState {
  capacities: Map<string, PoolCapacity>;
  exports: Array<{ protocol: string; connections: number }>;
}

export class AgentMetrics {
  readonly registry = new Registry();
  private scrape: Promise<ScrapeState> | undefined;
  private readonly requests: Counter<'method' | 'route' | 'status'>;
  private readonly requestSeconds: Histogram<'method' | 'route' | 'status'>;
  private readonly cloneSeconds: Histogram<'method'>;
  private readonly bytesCopied: Counter<'method'>;

  constructor(source: MetricsSource) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'volagent_' });
    this.requests = new Counter({ name: 'volagent_http_requests_total', help: 'Control API requests answered, by route pattern and status.', labelNames: ['method', 'route', 'status'], registers });
    this.requestSeconds = new Histogram({
      name: 'volagent_http_request_duration_seconds', help: 'Control API request latency, by route pattern and status.',
      labelNames: ['method', 'route', 'status'], buckets: REQUEST_BUCKETS, registers,
    });
    this.cloneSeconds = new Histogram({
      name: 'volagent_clone_duration_seconds', help: 'Clones and snapshots from start to the data in place, by the method the kernel allowed (reflink, copy_file_range, read_write, thin_snapshot).',
      labelNames: ['method'], buckets: CLONE_BUCKETS, registers,
    });
    this.bytesCopied = new Counter({ name: 'volagent_clone_copied_bytes_total', help: 'Bytes clones copied (0 for reflinks and thin snapshots), by method.', labelNames: ['method'], registers });

    // One read of the pools' capacity and of the exports per scrape, shared by the gauges below.
    const scraped = (): Promise<ScrapeState> => this.scraped(source);
    new Gauge({
      name: 'volagent_pool_bytes', help: 'Pool capacity: total, used and free bytes.', labelNames: ['pool', 'kind'], registers,
      async collect() {
        this.reset();
        for (const [pool, capacity] of (await scraped()).capacities) {
          this.set({ pool, kind: 'total' }, capacity.totalBytes);
          this.set({ pool, kind: 'used' }, capacity.usedBytes);
          this.set({ pool, kind: 'free' }, capacity.freeBytes);
        }
      },
    });
    new Gauge({
      name: 'volagent_thin_pool_used_percent', help: 'Thin pools: data and metadata space in use, in percent.', labelNames: ['pool', 'space'], registers,
      async collect() {
        this.reset();
        for (const [pool, capacity] of (await scraped()).capacities) {
          if (capacity.dataPercent !== undefined) this.set({ pool, space: 'data' }, capacity.dataPercent);
          if (capacity.metadataPercent !== undefined) this.set({ pool, space: 'metadata' }, capacity.metadataPercent);
        }
      },
    });
    const cacheCounter = (name: string, help: string, field: 'hits' | 'misses' | 'evictions' | 'notCached'): void => {
      new Counter({
        name, help, labelNames: ['pool'], registers,
        collect() {
          this.reset();
          for (const pool of source.pools()) {
            const view = source.imageCache(pool.name);
            if (view) this.inc({ pool: pool.name }, view[field]);
          }
        },
      });
    };
    cacheCounter('volagent_image_cache_hits_total', 'Volumes created from an image-cache entry.', 'hits');
    cacheCounter('volagent_image_cache_misses_total', 'Image-cache entries filled by an upload (nothing to clone from).', 'misses');
    cacheCounter('volagent_image_cache_evictions_total', 'Image-cache entries removed to make room.', 'evictions');
    cacheCounter('volagent_image_cache_not_cached_total', 'Uploads meant as image-cache entries kept as plain images: no room could be made (entries in use) or the cache was busy.', 'notCached');
    new Gauge({
      name: 'volagent_image_cache_entries', help: 'Image-cache entries and their bytes.', labelNames: ['pool', 'unit'], registers,
      collect() {
        this.reset();
        for (const pool of source.pools()) {
          const view = source.imageCache(pool.name);
          if (!view) continue;
          this.set({ pool: pool.name, unit: 'entries' }, view.entries);
          this.set({ pool: pool.name, unit: 'bytes' }, view.bytes);
        }
      },
    });
    new Gauge({
      name: 'volagent_exports', help: 'Exports, by protocol.', labelNames: ['protocol'], registers,
      async collect() {
        const { exports } = await scraped();
        for (const protocol of ['nbd', 'block']) this.set({ protocol }, exports.filter((e) => e.protocol === protocol).length);
      },
    });
    new Gauge({
      name: 'volagent_nbd_connections', help: 'Open NBD connections to exports.', registers,
      async collect() {
        this.set((await scraped()).exports.reduce((sum, e) => sum + e.connections, 0));
      },
    });
    new Gauge({
      name: 'volagent_operations', help: 'Long operations (copy clones and snapshots) in the catalog, by state.', labelNames: ['state'], registers,
      collect() {
        const counts = source.operationsByState();
        for (const state of OPERATION_STATES) this.set({ state }, counts[state] ?? 0);
      },
    });
  }

  observeRequest(method: string, route: string, status: number, seconds: number): void {
    const labels = { method, route, status: String(status) };
    this.requests.inc(labels);
    this.requestSeconds.observe(labels, seconds);
  }

  observeClone(method: string, seconds: number, bytesCopied: number): void {
    this.cloneSeconds.observe({ method }, seconds);
    this.bytesCopied.inc({ method }, bytesCopied);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  async text(): Promise<string> {
    try {
      return await this.registry.metrics();
    } finally {
      this.scrape = undefined;
    }
  }

  /** The state the gauges of the scrape in progress read, read once. */
  private scraped(source: MetricsSource): Promise<ScrapeState> {
    this.scrape ??= (async () => {
      const capacities = new Map<string, PoolCapacity>();
      for (const pool of source.pools()) {
        const capacity = await pool.capacity().catch(() => undefined);
        if (capacity) capacities.set(pool.name, capacity);
      }
      return { capacities, exports: source.exports() };
    })();
    return this.scrape;
  }
}
