// The reliability contract's invariants (docs/design.md "Reliability contract",
// docs/reliability.md), checked against a running agent after a restart:
// `GET /v1/check` clean, no row in a transitional state, no operation left
// running, every file pool's objects exactly the catalog's, and the loop
// devices bound to pool objects exactly the block exports'.
import { readdir } from 'node:fs/promises';
import path from 'node:path';

import BetterSqlite3 from 'better-sqlite3';

import { boundLoopDevices } from '../../src/devices/loop-device.js';
import type { AgentProcess } from './agent.js';

export interface VolumeRecord { id: string; pool: string; kind: string; state: string; sizeBytes: number; readOnly: boolean }
export interface ImageRecord { id: string; volumeId: string; state: string; mode: string }
export interface ExportRecord { id: string; volumeId: string; protocol: string; state: string; device: string | null }

export interface CatalogRows {
  volumes: VolumeRecord[];
  /** `volume@snapshot`, with its state. */
  snapshots: Array<{ object: string; state: string }>;
  images: ImageRecord[];
  exports: ExportRecord[];
  operations: Array<{ id: string; state: string }>;
}

/** Every row that matters to the invariants, read directly (WAL lets a reader beside the agent). */
export function catalogRows(file: string): CatalogRows {
  const db = new BetterSqlite3(file, { readonly: true, fileMustExist: true });
  try {
    return {
      volumes: (db.prepare('SELECT id, pool, kind, state, size_bytes AS sizeBytes, read_only AS readOnly FROM volumes ORDER BY id').all() as Array<Omit<VolumeRecord, 'readOnly'> & { readOnly: number }>)
        .map((row) => ({ ...row, readOnly: row.readOnly === 1 })),
      snapshots: db.prepare("SELECT volume_id || '@' || id AS object, state FROM snapshots ORDER BY volume_id, id").all() as CatalogRows['snapshots'],
      images: db.prepare('SELECT id, volume_id AS volumeId, state, mode FROM images ORDER BY id').all() as ImageRecord[],
      exports: db.prepare('SELECT id, volume_id AS volumeId, protocol, state, device FROM exports ORDER BY id').all() as ExportRecord[],
      operations: db.prepare('SELECT id, state FROM operations ORDER BY id').all() as CatalogRows['operations'],
    };
  } finally {
    db.close();
  }
}

/** A broken invariant, said in words a failing test prints. */
export class InvariantError extends Error {
  override name = 'InvariantError';
}

function sameSet(what: string, actual: Iterable<string>, expected: Iterable<string>): void {
  const a = [...new Set(actual)].sort();
  const e = [...new Set(expected)].sort();
  const missing = e.filter((x) => !a.includes(x));
  const extra = a.filter((x) => !e.includes(x));
  if (missing.length || extra.length) throw new InvariantError(`${what}: missing ${JSON.stringify(missing)}, extra ${JSON.stringify(extra)}`);
}

/**
 * Checks the invariants that hold whatever was cut off; throws an
 * InvariantError naming the first that does not. Returns the rows read.
 */
export async function checkInvariants(agent: AgentProcess, filePools: ReadonlyMap<string, string>): Promise<CatalogRows> {
  const check = await agent.request('GET', '/v1/check');
  if (check.status !== 200 || check.body.clean !== true || check.body.differences.length !== 0) {
    throw new InvariantError(`volagent check is not clean: ${check.status} ${check.text}`);
  }
  const rows = catalogRows(agent.catalogPath);
  const transitional = [
    ...rows.volumes.filter((r) => r.state !== 'available').map((r) => `volume ${r.id} ${r.state}`),
    ...rows.snapshots.filter((r) => r.state !== 'available').map((r) => `snapshot ${r.object} ${r.state}`),
    ...rows.images.filter((r) => r.state !== 'available').map((r) => `image ${r.id} ${r.state}`),
    ...rows.exports.filter((r) => r.state !== 'available').map((r) => `export ${r.id} ${r.state}`),
    ...rows.operations.filter((r) => r.state === 'running').map((r) => `operation ${r.id} running`),
  ];
  if (transitional.length) throw new InvariantError(`rows not in a terminal state: ${transitional.join(', ')}`);
  // An image names one Image-Volume of kind image; an Image-Volume belongs to one image.
  const imageVolumes = rows.volumes.filter((v) => v.kind === 'image').map((v) => v.id);
  sameSet('Image-Volumes against the images naming them', imageVolumes, rows.images.map((i) => i.volumeId));
  if (new Set(rows.images.map((i) => i.volumeId)).size !== rows.images.length) throw new InvariantError('two images name one Image-Volume');
  const objectsDirs = new Map<string, string>();
  for (const [pool, poolPath] of filePools) {
    const objectsDir = path.join(poolPath, 'objects');
    objectsDirs.set(objectsDir, pool);
    const expected = [
      ...rows.volumes.filter((r) => r.pool === pool).map((r) => `${r.id}.raw`),
      ...rows.snapshots.filter((r) => rows.volumes.find((v) => v.id === r.object.split('@')[0])?.pool === pool).map((r) => `${r.object}.raw`),
    ];
    sameSet(`pool ${pool}'s objects against the catalog`, await readdir(objectsDir), expected);
  }
  const bound = (await boundLoopDevices()).filter((loop) => objectsDirs.has(path.dirname(loop.backingFile)));
  const recorded = rows.exports.filter((r) => r.protocol === 'block' && rows.volumes.some((v) => v.id === r.volumeId && filePools.has(v.pool)));
  sameSet('loop devices bound to pool objects against the block exports', bound.map((l) => `${l.device} ${path.basename(l.backingFile)}`),
    recorded.map((r) => `${r.device} ${r.volumeId}.raw`));
  return rows;
}
