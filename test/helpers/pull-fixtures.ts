// What the VM lane's pull tests share (test/vm/guest/thin-remote-pull.ts,
// lvm-cross-pool.ts): a 16 MiB source with twelve runs of data and holes
// between them, written into a file or a device, a read-only nbds:// export of
// it, and the wait for a pull held at its failpoint.
import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';

import type { AgentProcess } from './agent.js';

const KiB = 1024;
const MiB = 1024 * KiB;

export const PULL_SIZE = 16 * MiB;
/** The block (thin) or chunk (lvm) size the runs are aligned to: the unit in which a pull into a pool provisions. */
export const PULL_BLOCK = 64 * KiB;
/**
 * Twelve runs of 256 KiB, block-aligned, holes between them: twelve pieces
 * of a pull, more than its 8 reads in flight, so a pull held at its first
 * write still has reads to make.
 */
export const PULL_RUNS: Array<[number, number]> = Array.from({ length: 12 }, (_, i) => [i * MiB + (i % 4) * PULL_BLOCK, 256 * KiB]);
export const PULL_DATA_BYTES = PULL_RUNS.reduce((sum, [, length]) => sum + length, 0);
/** Written as zeros in a file volume: data to SEEK_DATA, nothing a thin device should provision. */
export const PULL_ZERO_RUN: [number, number] = [13 * MiB, MiB];

/** Writes random bytes over `runs` of `file` (and zeros over `zeros`), then fsyncs. */
export async function writeRuns(file: string, runs: Array<[number, number]>, zeros?: [number, number]): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    for (const [offset, length] of runs) await handle.write(randomBytes(length), 0, length, offset);
    if (zeros) await handle.write(Buffer.alloc(zeros[1]), 0, zeros[1], zeros[0]);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Waits for a failpoint's hold file: the pull reached `pull.copying` and waits there. */
export async function untilPullHeld(file: string): Promise<void> {
  for (let i = 0; i < 3000 && !existsSync(file); i++) await new Promise((resolve) => setTimeout(resolve, 20));
  if (!existsSync(file)) throw new Error(`the pull never reached pull.copying (${file})`);
}

/** A read-only NBD export of `volume` and its nbds:// URI on the agent's TCP address (127.0.0.1:`port`). */
export async function exportOverTls(agent: AgentProcess, volume: string, port: number): Promise<{ id: string; uri: string }> {
  const made = await agent.request('POST', `/v1/volumes/${volume}/exports`, { protocol: 'nbd', readOnly: true });
  if (made.status !== 201) throw new Error(`export of ${volume}: ${made.status} ${made.text}`);
  const uri = (made.body.uris as string[]).find((u) => u.startsWith('nbds://'))!;
  if (uri !== `nbds://127.0.0.1:${port}/${made.body.id}`) throw new Error(`export of ${volume}: ${uri}`);
  return { id: made.body.id, uri };
}
