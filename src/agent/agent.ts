// The domain layer's front: one Agent owns the catalog, the pools, the locks
// and the operations, and is what the transport calls. It never sees HTTP.
import { createRequire } from 'node:module';

import { Catalog } from '../catalog/catalog.js';
import type { Pool, PoolCapabilities, PoolCapacity } from '../pools/pool.js';
import type { Backend } from '../pools/pool.js';
import { LockTable } from './locks.js';
import { Operations } from './operations.js';
import type { CheckReport } from './reconcile.js';
import { reconcile } from './reconcile.js';
import { Volumes } from './volumes.js';

const { version: AGENT_VERSION } = createRequire(import.meta.url)('../../../package.json') as { version: string };

export interface PoolView {
  name: string;
  backend: Backend;
  capabilities: PoolCapabilities;
  capacity: PoolCapacity;
}

export interface AgentOptions {
  catalogPath: string;
  /** Opened pools, in configuration order (the first is the default). */
  pools: Pool[];
  /** How long delete and resize wait for readers of their volume (`[agent] lock_wait_ms`). */
  lockWaitMs: number;
}

export class Agent {
  readonly volumes: Volumes;
  readonly operations: Operations;
  readonly locks = new LockTable();
  readonly pools: ReadonlyMap<string, Pool>;

  private constructor(readonly catalog: Catalog, options: AgentOptions) {
    this.pools = new Map(options.pools.map((pool) => [pool.name, pool]));
    this.operations = new Operations(catalog);
    this.volumes = new Volumes(catalog, this.pools, this.locks, this.operations, options.lockWaitMs);
  }

  /**
   * Opens the catalog over already-opened pools and reconciles what a previous
   * run left half-done, before any request is served. Returns the start-up report.
   */
  static async open(options: AgentOptions): Promise<{ agent: Agent; startup: CheckReport }> {
    const catalog = Catalog.open(options.catalogPath);
    try {
      const agent = new Agent(catalog, options);
      const startup = await reconcile(catalog, agent.pools, { mode: 'startup' });
      return { agent, startup };
    } catch (error) {
      catalog.close();
      throw error;
    }
  }

  version(): { version: string; api: 1 } {
    return { version: AGENT_VERSION, api: 1 };
  }

  async listPools(): Promise<PoolView[]> {
    return Promise.all([...this.pools.values()].map(async (pool) => ({
      name: pool.name,
      backend: pool.backend,
      capabilities: pool.capabilities(),
      capacity: await pool.capacity(),
    })));
  }

  /** `volagent check`: what differs now; with `repair`, settled. Live work is left alone. */
  check(repair: boolean): Promise<CheckReport> {
    return reconcile(this.catalog, this.pools, {
      mode: repair ? 'repair' : 'check',
      isLive: (object) => this.volumes.isLive(object),
      isOperationLive: (id) => this.operations.isRunning(id),
    });
  }

  /** Cancels running operations (each cleans up its partial object), then closes the catalog. */
  async close(reason = 'the agent is stopping'): Promise<void> {
    await this.operations.cancelAll(reason);
    this.catalog.close();
  }
}
