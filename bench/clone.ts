// Clone-engine benchmark on loop filesystems made here (needs root):
//  1. XFS reflink of a 10 GiB file and of a 1 GiB file with 100 000 extents:
//     the engine vs the raw FICLONE ioctl in a tight loop (the floor) vs
//     `cp --reflink=always`. Goal: engine <= 1.3x the floor.
//  2. ext4 copy of a 4 GiB file holding 1 GiB of data: the engine vs
//     `cp --reflink=never --sparse=always`, each timed until `sync -f` has put
//     the copy on the device (page-cache-only timings mostly measure
//     writeback of the previous run). Goals: throughput >= 1.0x cp's,
//     bytes written to the device <= 1.05x the data.
//  3. Peak RSS of this process while the engine copies: goal < 150 MiB.
// Prints a table and one JSON line.
import { execFile } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { open, readFile, unlink } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

import { cloneFile } from '../src/clone/clone-file.js';
import { native } from '../src/native/binding.js';
import { extentCount, makeSparseFile, spreadLayout } from '../test/helpers/files.js';
import type { LoopFs } from '../test/helpers/loop-fs.js';
import { makeLoopFs, sweepLeftovers } from '../test/helpers/loop-fs.js';
import { atLeast, atMost, below, GiB, goalNote, metText, MiB } from './lib.js';

const execFileAsync = promisify(execFile);

interface Stats { median: number; p90: number; min: number; runs: number }

function stats(samplesMs: number[]): Stats {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return { median: at(0.5), p90: at(0.9), min: sorted[0]!, runs: sorted.length };
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

/** Peak RSS sampled every 5 ms while `fn` runs (the copies run off the JS thread, so the loop is free to sample). */
let peakRss = 0;
async function sampled<T>(fn: () => Promise<T>): Promise<T> {
  const timer = setInterval(() => { peakRss = Math.max(peakRss, process.memoryUsage.rss()); }, 5);
  try {
    return await fn();
  } finally {
    clearInterval(timer);
    peakRss = Math.max(peakRss, process.memoryUsage.rss());
  }
}

async function rawFiclone(src: string, dst: string): Promise<void> {
  const s = await open(src, 'r');
  try {
    const d = await open(dst, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o644);
    try {
      await native.ficlone(d.fd, s.fd, src, dst);
    } finally {
      await d.close();
    }
  } finally {
    await s.close();
  }
}

interface ReflinkCase { name: string; sizeBytes: number; extents: number; engine: Stats; floor: Stats; cp: Stats; ratio: number }

async function reflinkCase(fs: LoopFs, name: string, src: string, runs: number): Promise<ReflinkCase> {
  const dst = path.join(fs.mountPoint, 'clone');
  const engine: number[] = [];
  const floor: number[] = [];
  const cp: number[] = [];
  // Interleave the three so cache and log state affect them alike.
  for (let i = 0; i < runs; i++) {
    floor.push(await timed(() => rawFiclone(src, dst)));
    await unlink(dst);
    engine.push(await sampled(() => timed(() => cloneFile(src, dst))));
    await unlink(dst);
    cp.push(await timed(() => execFileAsync('cp', ['--reflink=always', src, dst])));
    await unlink(dst);
  }
  const e = stats(engine);
  const f = stats(floor);
  const size = (await open(src, 'r').then(async (h) => { const st = await h.stat(); await h.close(); return st.size; }));
  return { name, sizeBytes: size, extents: await extentCount(src), engine: e, floor: f, cp: stats(cp), ratio: e.median / f.median };
}

async function deviceWrittenBytes(device: string): Promise<number> {
  const stat = await readFile(`/sys/block/${path.basename(device)}/stat`, 'utf8');
  return Number(stat.trim().split(/\s+/)[6]) * 512; // field 7: sectors written
}

interface CopyCase { engineMs: Stats; cpMs: Stats; dataBytes: number; engineMiBs: number; cpMiBs: number; throughputRatio: number; engineWritten: number; cpWritten: number; writeAmplification: number; method: string }

async function copyCase(fs: LoopFs, runs: number): Promise<CopyCase> {
  const src = path.join(fs.mountPoint, 'image');
  const layout = spreadLayout(4 * GiB, 256, 4 * MiB);
  const dataBytes = 256 * 4 * MiB;
  await makeSparseFile(src, layout);
  const dst = path.join(fs.mountPoint, 'copy');
  const engine: number[] = [];
  const cp: number[] = [];
  let engineWritten = 0;
  let cpWritten = 0;
  let method = '';
  const flush = (): Promise<unknown> => execFileAsync('sync', ['-f', fs.mountPoint]);
  for (let i = 0; i < runs; i++) {
    await flush();
    let before = await deviceWrittenBytes(fs.device);
    cp.push(await timed(async () => { await execFileAsync('cp', ['--reflink=never', '--sparse=always', src, dst]); await flush(); }));
    cpWritten = (await deviceWrittenBytes(fs.device)) - before;
    await unlink(dst);
    await flush();
    before = await deviceWrittenBytes(fs.device);
    engine.push(await sampled(() => timed(async () => { method = (await cloneFile(src, dst)).method; await flush(); })));
    engineWritten = (await deviceWrittenBytes(fs.device)) - before;
    await unlink(dst);
  }
  const e = stats(engine);
  const c = stats(cp);
  const mibs = (ms: number): number => (4 * GiB / MiB) / (ms / 1000);
  return {
    engineMs: e, cpMs: c, dataBytes, method,
    engineMiBs: mibs(e.median), cpMiBs: mibs(c.median), throughputRatio: c.median / e.median,
    engineWritten, cpWritten, writeAmplification: engineWritten / dataBytes,
  };
}

async function writeContiguous(file: string, sizeBytes: number): Promise<void> {
  await execFileAsync('xfs_io', ['-f', '-c', `falloc 0 ${sizeBytes}`, '-c', `pwrite -q -b 16m -S 0xcd 0 ${sizeBytes}`, '-c', 'fsync', file],
    { timeout: 600_000 });
}

/** 100 000 data extents of 4 KiB spread over 1 GiB, never adjacent, so each stays its own extent. */
async function writeFragmented(file: string): Promise<void> {
  const count = 100_000;
  const h = await open(file, 'wx');
  try {
    await h.truncate(GiB);
    const block = Buffer.alloc(4096, 0xab);
    for (let i = 0; i < count; i++) await h.write(block, 0, 4096, Math.floor((i * GiB) / count / 4096) * 4096);
    await h.sync();
  } finally {
    await h.close();
  }
}

const fmt = (ms: number): string => (ms < 10 ? ms.toFixed(3) : ms.toFixed(1));

export async function main(args: string[]): Promise<number> {
  if (process.getuid?.() !== 0) {
    console.error('bench clone: needs root (it makes XFS and ext4 loop filesystems)');
    return 1;
  }
  const quick = args.includes('--quick');
  await sweepLeftovers();
  const made: LoopFs[] = [];
  try {
    const xfs = await makeLoopFs('xfs', 24 * GiB);
    made.push(xfs);
    const big = path.join(xfs.mountPoint, 'big');
    await writeContiguous(big, quick ? GiB : 10 * GiB);
    const fragmented = path.join(xfs.mountPoint, 'fragmented');
    await writeFragmented(fragmented);
    const reflinks = [
      await reflinkCase(xfs, quick ? 'xfs 1 GiB contiguous' : 'xfs 10 GiB contiguous', big, quick ? 5 : 30),
      await reflinkCase(xfs, 'xfs 1 GiB, 100 000 extents', fragmented, quick ? 3 : 10),
    ];
    await xfs.cleanup();
    made.pop();
    const ext4 = await makeLoopFs('ext4', 8 * GiB);
    made.push(ext4);
    const copy = await copyCase(ext4, quick ? 2 : 5);
    const reflinkVerdicts = reflinks.map((r) => atMost(`reflink engine/floor, ${r.name}`, r.ratio, 'x', 1.3));
    const throughput = atLeast('ext4 copy throughput engine/cp', copy.throughputRatio, 'x', 1);
    const written = atMost('ext4 copy bytes written/data', copy.writeAmplification, 'x', 1.05);
    const rss = below('peak RSS while the engine copied', peakRss / MiB, 'MiB', 150);

    console.log('\nreflink (median ms; floor = raw FICLONE ioctl: open dst, ioctl, close)');
    console.log(`case                          extents   engine    floor  cp --reflink  engine/floor  goal ${reflinkVerdicts[0]!.goal}`);
    reflinks.forEach((r, i) => {
      console.log(`${r.name.padEnd(28)} ${String(r.extents).padStart(8)} ${fmt(r.engine.median).padStart(8)} ${fmt(r.floor.median).padStart(8)} `
        + `${fmt(r.cp.median).padStart(13)} ${r.ratio.toFixed(2).padStart(13)}  ${metText(reflinkVerdicts[i]!.met)}`);
    });
    console.log('\next4 copy of a 4 GiB file holding 1 GiB of data, timed until synced to the device (median of runs)');
    console.log(`engine (${copy.method}): ${fmt(copy.engineMs.median)} ms, ${copy.engineMiBs.toFixed(0)} MiB/s logical; `
      + `cp --reflink=never --sparse=always: ${fmt(copy.cpMs.median)} ms, ${copy.cpMiBs.toFixed(0)} MiB/s`);
    console.log(`throughput engine/cp: ${copy.throughputRatio.toFixed(2)} (${goalNote(throughput)})`);
    console.log(`bytes written to the device: engine ${(copy.engineWritten / MiB).toFixed(1)} MiB, cp ${(copy.cpWritten / MiB).toFixed(1)} MiB, `
      + `data ${(copy.dataBytes / MiB).toFixed(0)} MiB; engine/data ${copy.writeAmplification.toFixed(3)} (${goalNote(written)})`);
    console.log(`peak RSS while the engine copied: ${(peakRss / MiB).toFixed(1)} MiB (${goalNote(rss)})`);
    const verdicts = [...reflinkVerdicts, throughput, written, rss];
    console.log(JSON.stringify({ bench: 'clone', quick, reflinks, copy, peakRssBytes: peakRss, verdicts }));
    return 0;
  } finally {
    for (const fs of made.reverse()) await fs.cleanup();
  }
}
