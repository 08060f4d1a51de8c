// The backends, and the one factory that turns a pool's configuration into its
// backend (docs/design.md "House style" 9: one backend per file behind one
// interface). A new backend is its own files and one line in BACKENDS.
import type { PoolBackend, PoolContext } from './backend.js';
import { fileBackend } from './file-backend.js';
import type { Pool } from './pool.js';
import type { PoolConfig } from './pool-config.js';
import { lvmBackend } from './lvm/backend.js';
import { thinBackend } from './thin/backend.js';

export type { PoolBackend, PoolContext, ServiceAccess } from './backend.js';
export type { CloneOutcome, CloneRequest, ObjectInfo, ObjectKind, Pool, PoolCapabilities, PoolCapacity } from './pool.js';
export { isObjectName, OBJECT_NAME } from './pool.js';
export { FilePool } from './file-pool.js';
export { ThinPool } from './thin/thin-pool.js';
export type { ThinLedger } from './thin/ledger.js';
export type { FilePoolConfig } from './file-backend.js';
export type { ThinPoolConfig } from './thin/backend.js';
export type { ConfigTable, ImageCacheConfig, PoolConfig } from './pool-config.js';

const BACKENDS: readonly PoolBackend[] = [
  fileBackend,
  thinBackend,
  lvmBackend,
];

/** The backend `backend = NAME` names; undefined for a name no backend has. */
export function backendNamed(name: string): PoolBackend | undefined {
  return BACKENDS.find((backend) => backend.name === name);
}

/** Every backend's name, for the config's error message. */
export function backendNames(): string[] {
  return BACKENDS.map((backend) => backend.name);
}

/** The backend of a config the config reader made (its backend exists). */
export function backendOf(config: PoolConfig): PoolBackend {
  const backend = backendNamed(config.backend);
  if (!backend) throw new Error(`pool '${config.name}': no backend named "${config.backend}"`);
  return backend;
}

/** Makes the backend for `config`; the caller still has to `open()` it. */
export function createPool(config: PoolConfig, context: PoolContext = {}): Pool {
  return backendOf(config).create(config, context);
}
