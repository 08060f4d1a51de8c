// An agent's thin pool as the kernel and the catalog say it is (VM lane):
// the thin devices active, the thin ids its metadata holds, its status line,
// and the catalog's thin rows. The crash tests hold one against the other.
import { spawnSync } from 'node:child_process';

import BetterSqlite3 from 'better-sqlite3';

import { native } from '../../src/native/binding.js';
import { parseThinPoolStatus } from '../../src/devices/dm-thin.js';

/** The pool's device-mapper name, as the agent makes it. */
export function poolDmName(pool: string): string {
  return `volagent-${pool}-pool`;
}

/** Thin ids of the pool's active thin devices (`volagent-<pool>-<thin id>`), sorted. */
export async function activeThinIds(pool: string): Promise<number[]> {
  const ours = new RegExp(`^volagent-${pool}-(\\d+)$`);
  return (await native.dmListDevices()).map((d) => ours.exec(d.name)?.[1]).filter((id): id is string => id !== undefined).map(Number).sort((a, b) => a - b);
}

/** Thin ids the pool's metadata holds, read by thin_dump from a metadata snapshot of the live pool. */
export async function poolThinIds(pool: string, metadataDevice: string): Promise<number[]> {
  await native.dmMessage(poolDmName(pool), 0, 'reserve_metadata_snap');
  try {
    const dump = spawnSync('thin_dump', ['--metadata-snap', metadataDevice], { encoding: 'utf8' });
    if (dump.status !== 0) throw new Error(`thin_dump failed: ${dump.stderr}`);
    return [...dump.stdout.matchAll(/<device dev_id="(\d+)"/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
  } finally {
    await native.dmMessage(poolDmName(pool), 0, 'release_metadata_snap');
  }
}

/**
 * Each thin device's mapping (thin id -> origin block -> data block) as the
 * pool's metadata holds it, read by thin_dump from a metadata snapshot of the
 * live pool (reserving it commits every write completed before the call).
 */
export async function poolMappings(pool: string, metadataDevice: string): Promise<Map<number, Map<number, number>>> {
  await native.dmMessage(poolDmName(pool), 0, 'reserve_metadata_snap');
  try {
    const dump = spawnSync('thin_dump', ['--metadata-snap', metadataDevice], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    if (dump.status !== 0) throw new Error(`thin_dump failed: ${dump.stderr}`);
    const devices = new Map<number, Map<number, number>>();
    let current: Map<number, number> | undefined;
    for (const line of dump.stdout.split('\n')) {
      const device = /<device dev_id="(\d+)"/.exec(line);
      if (device) devices.set(Number(device[1]), current = new Map());
      const single = /<single_mapping origin_block="(\d+)" data_block="(\d+)"/.exec(line);
      if (single) current!.set(Number(single[1]), Number(single[2]));
      const range = /<range_mapping origin_begin="(\d+)" data_begin="(\d+)" length="(\d+)"/.exec(line);
      if (range) for (let i = 0; i < Number(range[3]); i++) current!.set(Number(range[1]) + i, Number(range[2]) + i);
    }
    return devices;
  } finally {
    await native.dmMessage(poolDmName(pool), 0, 'release_metadata_snap');
  }
}

export async function poolStatus(pool: string): Promise<ReturnType<typeof parseThinPoolStatus>> {
  const [target] = await native.dmTable(poolDmName(pool));
  return parseThinPoolStatus(target!.params);
}

/** Removes every device the agent made for the pool: its thin devices, then the pool. */
export async function removeAgentDevices(pool: string): Promise<void> {
  for (const id of (await activeThinIds(pool)).reverse()) await native.dmRemove(`volagent-${pool}-${id}`);
  await native.dmRemove(poolDmName(pool)).catch(() => undefined);
}

export interface ThinRows {
  pool: { transaction_id: number; next_thin_id: number; pending: string | null; phase: string } | undefined;
  devices: { name: string; thin_id: number; size_bytes: number; read_only: number }[];
  volumes: { id: string; state: string; size_bytes: number }[];
}

/** The catalog's record of the pool (read directly; WAL lets a reader beside the agent). */
export function readThinRows(catalogPath: string, pool: string): ThinRows {
  const db = new BetterSqlite3(catalogPath, { readonly: true, fileMustExist: true });
  try {
    const hasTable = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'thin_pools'`).get();
    return {
      pool: hasTable ? db.prepare('SELECT transaction_id, next_thin_id, pending, phase FROM thin_pools WHERE pool = ?').get(pool) as ThinRows['pool'] : undefined,
      devices: hasTable ? db.prepare('SELECT name, thin_id, size_bytes, read_only FROM thin_devices WHERE pool = ? ORDER BY thin_id').all(pool) as ThinRows['devices'] : [],
      volumes: db.prepare('SELECT id, state, size_bytes FROM volumes ORDER BY id').all() as ThinRows['volumes'],
    };
  } finally {
    db.close();
  }
}
