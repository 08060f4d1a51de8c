// The file backend's config and constructor: a directory on XFS, btrfs or
// any other filesystem (src/pools/file-pool.ts).
import { mkdir } from 'node:fs/promises';

import type { PoolBackend } from './backend.js';
import { FilePool } from './file-pool.js';
import type { PoolConfig } from './pool-config.js';

export interface FilePoolConfig extends PoolConfig {
  backend: 'file';
  /** The pool's directory; it must exist. */
  path: string;
}

export const fileBackend: PoolBackend<FilePoolConfig> = {
  name: 'file',
  usesLedger: false,
  readConfig: (table, common) => ({ ...common, backend: 'file', path: table.path('path') }),
  create: (config) => new FilePool({ name: config.name, path: config.path }),
  location: (config) => config.path,
  serviceAccess: (config) => ({ readWritePaths: [config.path], devices: [] }),
  prepareDevelopment: async (config) => { await mkdir(config.path, { recursive: true }); },
};
