// What the kernel says of an agent's thin pool (VM lane): the thin devices
// active, the thin ids its metadata holds, and its status line. The crash
// tests hold these against the catalog.
import { spawnSync } from 'node:child_process';

import { native } from '../../src/native/binding.js';
import { parseThinPoolStatus } from '../../src/pools/thin/dm-thin.js';

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

export async function poolStatus(pool: string): Promise<ReturnType<typeof parseThinPoolStatus>> {
  const [target] = await native.dmTable(poolDmName(pool));
  return parseThinPoolStatus(target!.params);
}
