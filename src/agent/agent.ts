// The domain layer's front: one Agent owns the catalog, the pools, the locks
// and the operations, and is what the transport calls. It never sees HTTP.
// The catalog is read on this thread and written on the catalog writer
// thread (src/catalog/writer.ts), so no commit's fsync stalls a request.
import { createRequire } from 'node:module';

import { Catalog } from '../catalog/catalog.js';
import { CatalogWriter } from '../catalog/writer.js';
import type { CatalogWrites } from '../catalog/writes.js';
import { inlineWrites } from '../catalog/writes.js';
import type { Pool, PoolCapabilities, PoolCapacity, PoolHealth } from '../pools/pool.js';
import type { Principal } from './access.js';
import { Access } from './access.js';
import type { ImageCacheView } from './image-cache.js';
import type { PoolImagePolicy } from './images.js';
import { ImageVolumes } from './image-volumes.js';
import { Images } from './images.js';
import { LockTable } from './locks.js';
import { AgentMetrics } from './metrics.js';
import { Creations } from './creations.js';
import { Operations } from './operations.js';
import type { ListenAddress } from '../exports/nbd/listen-address.js';
import { Exports } from './exports.js';
import type { CheckReport } from './reconcile.js';
import { checkReport, reconcile } from './reconcile.js';
import type { RemoteSourcesOptions } from './remote-sources.js';
import { RemoteSources } from './remote-sources.js';
import { Snapshots } from './snapshots.js';
import type { CloneEvents } from './volume-checks.js';
import { VolumeChecks } from './volume-checks.js';
import { Volumes } from './volumes.js';

const { version: AGENT_VERSION } = createRequire(import.meta.url)('../../../package.json') as { version: string };

export interface PoolView {
  name: string;
  backend: string;
  capabilities: PoolCapabilities;
  capacity: PoolCapacity;
  /** The kernel side's state (thin pools). */
  health?: PoolHealth;
  /** Present when the pool has an image-volume cache. */
  imageCache?: ImageCacheView;
}

export interface AgentOptions {
  catalogPath: string;
  /** The catalog at catalogPath, when the caller opened it already (thin pools read it while opening); the agent closes it. */
  catalog?: Catalog;
  /** Opened pools, in configuration order (the first is the default); the agent closes them. */
  pools: Pool[];
  /** How long delete and resize wait for readers of their volume (`[agent] lock_wait_ms`). */
  lockWaitMs: number;
  /** Ended operations the catalog keeps (`[agent] keep_finished_operations`; the catalog's default when absent). */
  keepFinishedOperations?: number;
  /** Tenant of internal Image-Volumes (`[agent] internal_tenant`). */
  internalTenant: string;
  /** Image limits per pool name (`max_image_bytes`, `image_cache`). */
  imagePolicies?: ReadonlyMap<string, PoolImagePolicy>;
  /** `[nbd].listen`, for export URIs; `boundPorts` gets the ports chosen for `tcp:host:0`. */
  nbdListen?: ListenAddress[];
  boundPorts?: Map<number, number>;
  /** TCP addresses require TLS: their export URIs are `nbds://`. */
  nbdTls?: boolean;
  /** How volumes are pulled from peer agents (credentials, plain TCP allowed); default: unix-socket peers only. */
  remote?: RemoteSourcesOptions;
}

export class Agent {
  readonly volumes: Volumes;
  readonly snapshots: Snapshots;
  readonly images: Images;
  readonly exports: Exports;
  readonly operations: Operations;
  readonly locks = new LockTable();
  readonly metrics: AgentMetrics;
  /** The agent's own view (metrics, status, start-up): everything. */
  readonly system: Access;
  private readonly poolMap: Map<string, Pool>;
  private readonly internalTenant: string;
  /** Creations running in this process: reconcile leaves their objects alone. */
  private readonly creations: Creations;

  private constructor(readonly catalog: Catalog, private readonly writer: CatalogWriter, options: AgentOptions) {
    this.poolMap = new Map(options.pools.map((pool) => [pool.name, pool]));
    this.internalTenant = options.internalTenant;
    this.system = Access.system(options.internalTenant);
    this.operations = new Operations(catalog, this.writes);
    this.exports = new Exports(catalog, this.writes, this.pools, this.locks, {
      nbdListen: options.nbdListen ?? [], ...(options.boundPorts ? { boundPorts: options.boundPorts } : {}), writeDrainWaitMs: options.lockWaitMs,
      ...(options.nbdTls ? { nbdTls: true } : {}),
    });
    this.metrics = new AgentMetrics({
      pools: () => this.pools.values(),
      imageCache: (pool) => this.images.cacheView(pool),
      exports: () => this.exports.list(this.system),
      operationsByState: () => this.catalog.countOperationsByState(),
    });
    // Clones are told to the metrics and, when made from an image, to the image cache (Images, made below).
    const events: CloneEvents = {
      cloned: (method, seconds, bytesCopied) => this.metrics.observeClone(method, seconds, bytesCopied),
      imageCloned: (imageId) => this.images.recordClone(imageId),
    };
    const checks = new VolumeChecks(catalog, this.pools, this.locks, this.operations, this.exports, options.lockWaitMs);
    this.creations = new Creations(this.operations);
    this.volumes = new Volumes(catalog, this.writes, writer.deferredWrites, this.pools, checks, this.creations, events, new RemoteSources(options.remote ?? { plaintextTcp: false }));
    this.snapshots = new Snapshots(catalog, this.writes, this.pools, checks, this.creations, events);
    const imageVolumes = new ImageVolumes(this.writes, this.volumes, checks, this.creations);
    this.images = new Images(catalog, this.writes, imageVolumes, checks, this.operations, this.locks, {
      internalTenant: options.internalTenant,
      lockWaitMs: options.lockWaitMs,
      ...(options.imagePolicies ? { policies: options.imagePolicies } : {}),
    });
  }

  get writes(): CatalogWrites {
    return this.writer.writes;
  }

  /**
   * Opens the catalog over already-opened pools and reconciles what a previous
   * run left half-done, before any request is served. Returns the start-up report.
   */
  static async open(options: AgentOptions): Promise<{ agent: Agent; startup: CheckReport }> {
    const keep = options.keepFinishedOperations !== undefined ? { keepFinishedOperations: options.keepFinishedOperations } : {};
    const catalog = options.catalog ?? Catalog.open(options.catalogPath, keep);
    try {
      const pools = new Map(options.pools.map((pool) => [pool.name, pool]));
      // Nothing is served yet: start-up writes go on this thread.
      const startup = await reconcile(catalog, inlineWrites(catalog), pools, { mode: 'startup' });
      const writer = await CatalogWriter.start(options.catalogPath, keep);
      return { agent: new Agent(catalog, writer, options), startup };
    } catch (error) {
      catalog.close();
      await Promise.all(options.pools.map((pool) => pool.close()));
      throw error;
    }
  }

  /** The configured pools, by name (Volumes, Images and Exports read this one map). */
  get pools(): ReadonlyMap<string, Pool> {
    return this.poolMap;
  }

  /**
   * Serves an opened pool from now on (a config reload added it), with its
   * image policy. A name the catalog already has rows for is refused: those
   * rows were made under another config and need the start-up reconcile.
   */
  addPool(pool: Pool, policy: PoolImagePolicy = {}): void {
    if (this.poolMap.has(pool.name)) throw new Error(`pool ${pool.name} is already served`);
    if (this.catalog.listVolumes({ pool: pool.name }).length > 0) {
      throw new Error(`the catalog has volumes in a pool named ${pool.name} from an earlier config; restart the agent so start-up reconciles them`);
    }
    this.poolMap.set(pool.name, pool);
    this.images.addPolicy(pool.name, policy);
  }

  /** What a request by `principal`, scoped to `scope` (`?tenant=`) when given, may see and do (docs/api.md "Access"). */
  access(principal: Principal, scope?: string): Access {
    return Access.of(principal, this.internalTenant, scope);
  }

  version(): { version: string; api: 1 } {
    return { version: AGENT_VERSION, api: 1 };
  }

  async listPools(): Promise<PoolView[]> {
    return Promise.all([...this.pools.values()].map(async (pool) => {
      const imageCache = this.images.cacheView(pool.name);
      const health = await pool.health?.();
      return {
        name: pool.name,
        backend: pool.backend,
        capabilities: pool.capabilities(),
        capacity: await pool.capacity(),
        ...(health ? { health } : {}),
        ...(imageCache ? { imageCache } : {}),
      };
    }));
  }

  /** `volagent check`: what differs now; with `repair`, settled. Live work is left alone. */
  async check(repair: boolean): Promise<CheckReport> {
    const report = await reconcile(this.catalog, this.writes, this.pools, {
      mode: repair ? 'repair' : 'check',
      isLive: (object) => this.creations.isRunning(object) || this.locks.isHeld(object) || this.images.isLive(object),
      isOperationLive: (id) => this.operations.isRunning(id),
    });
    return checkReport([...report.differences, ...(await this.exports.check(repair))]);
  }

  /** Cancels running operations (each cleans up its partial object), then closes the catalog and the pools. */
  async close(reason = 'the agent is stopping'): Promise<void> {
    await this.operations.cancelAll(reason);
    await this.exports.close();
    await this.images.close();
    await this.writer.close();
    this.catalog.close();
    await Promise.all([...this.pools.values()].map((pool) => pool.close()));
  }
}
