// What a backend brings besides its Pool class: its config keys, its
// constructor and what the service unit must let it reach. The daemon, the
// config reader and `install-service` go through this and never name a
// backend (docs/design.md "Pools").
import type { Pool } from './pool.js';
import type { ConfigTable, PoolConfig } from './pool-config.js';
import type { ThinLedger } from './thin/ledger.js';

/** What backends need besides their own config. */
export interface PoolContext {
  /** Where a backend that keeps state in the catalog keeps it (thin pools: thin ids and transaction ids). */
  ledger?: ThinLedger;
  warn?: (fields: Record<string, unknown>, message: string) => void;
}

/** What the systemd unit must allow for a pool (ProtectSystem=strict allows nothing site-specific). */
export interface ServiceAccess {
  /** ReadWritePaths=: directories and files the pool writes; a leading '-' (systemd's) ignores one that is missing. */
  readWritePaths: string[];
  /** DeviceAllow= ... rw: block devices the pool opens. */
  devices: string[];
  /** DeviceAllow= ... rw: device groups of /proc/devices, globs allowed (`block-*`), for devices not known by path. */
  deviceGroups?: string[];
}

export interface PoolBackend<C extends PoolConfig = PoolConfig> {
  /** `backend = "..."` in a `[[pools]]` table. */
  readonly name: string;
  /**
   * Reads the backend's own keys of a `[[pools]]` table into its config;
   * `common` holds the keys every pool has (name, backend, max_image_bytes,
   * image_cache), read already.
   */
  readConfig(table: ConfigTable, common: PoolConfig): C;
  /** The pool for `config`; the caller still has to `open()` it. */
  create(config: C, context: PoolContext): Pool;
  /** Where the pool keeps its objects, for start-up errors: "pool NAME at WHERE: ...". */
  location?(config: C): string;
  serviceAccess(config: C): ServiceAccess;
  /** The backend keeps state in the catalog (PoolContext.ledger): the catalog opens before its pools. */
  readonly usesLedger: boolean;
  /** For the embedded development default (`npm start`): makes what the pool needs on first start. */
  prepareDevelopment?(config: C): Promise<void>;
}
