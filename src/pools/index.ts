// The one factory that turns a pool's configuration into its backend
// (STYLE.md 9: one backend per file behind one interface).
import { FilePool } from './file-pool.js';
import type { Pool } from './pool.js';
import type { PoolConfig } from './pool-config.js';

export type { Backend, CloneOutcome, CloneRequest, ObjectInfo, Pool, PoolCapabilities, PoolCapacity } from './pool.js';
export { isObjectName, OBJECT_NAME } from './pool.js';
export { FilePool } from './file-pool.js';

export type { FilePoolConfig, ImageCacheConfig, PoolConfig, ThinPoolConfig } from './pool-config.js';

/** Makes the backend for `config`; the caller still has to `open()` it. */
export function createPool(config: PoolConfig): Pool {
  switch (config.backend) {
    case 'file':
      return new FilePool({ name: config.name, path: config.path });
    case 'thin':
      throw new Error(`pool '${config.name}': the thin backend is not implemented yet`);
  }
}
