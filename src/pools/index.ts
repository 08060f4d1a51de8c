// The one factory that turns a pool's configuration into its backend
// (docs/design.md "House style" 9: one backend per file behind one interface).
import { FilePool } from './file-pool.js';
import type { Pool } from './pool.js';
import type { PoolConfig } from './pool-config.js';
import type { ThinLedger } from './thin/ledger.js';
import { ThinPool } from './thin/thin-pool.js';

export type { Backend, CloneOutcome, CloneRequest, ObjectInfo, Pool, PoolCapabilities, PoolCapacity } from './pool.js';
export { isObjectName, OBJECT_NAME } from './pool.js';
export { FilePool } from './file-pool.js';
export { ThinPool } from './thin/thin-pool.js';
export type { ThinLedger } from './thin/ledger.js';

export type { FilePoolConfig, ImageCacheConfig, PoolConfig, ThinPoolConfig } from './pool-config.js';

/** What backends need besides their own config. */
export interface PoolContext {
  /** Where thin pools keep thin ids and transaction ids (the catalog). */
  thinLedger?: ThinLedger;
  warn?: (fields: Record<string, unknown>, message: string) => void;
}

/** Makes the backend for `config`; the caller still has to `open()` it. */
export function createPool(config: PoolConfig, context: PoolContext = {}): Pool {
  switch (config.backend) {
    case 'file':
      return new FilePool({ name: config.name, path: config.path });
    case 'thin': {
      if (!context.thinLedger) throw new Error(`pool '${config.name}': a thin pool needs the catalog's ledger`);
      const { name, dataDevice, metadataDevice, blockSizeBytes, lowWaterPercent, minFreePercent, errorIfNoSpace, deviceDir } = config;
      return new ThinPool({
        name, dataDevice, metadataDevice, blockSizeBytes, lowWaterPercent, minFreePercent, errorIfNoSpace, deviceDir,
        ledger: context.thinLedger, ...(context.warn ? { warn: context.warn } : {}),
      });
    }
  }
}
