// lvm-backend clone benchmark (needs root and the VM lane: qemu, Debian's
// kernel; and lvm2). Everything runs in one VM (test/helpers/vm.ts) with
// three virtio disks: vda holds a volume group `vgbench` with a thin pool of
// 2 GiB (64 KiB chunks) for the `lvm` pool; vdb (data) and vdc (metadata)
// are a `thin` pool of the same data size and block size. One volagentd
// serves both pools. The guest runs no udev: lvm2 makes its own nodes
// (DM_DISABLE_UDEV=1, for the agent's lvm2 calls and the ones by hand alike).
// On an origin of 1 GiB with 16 MiB written, for each level of LVs already
// in the VG (--levels, default 0,500: filler thin snapshots are made by hand
// until the VG holds at least that many LVs; the clones of earlier levels count):
//  1. volagentd, lvm pool: PUT /v1/volumes/{id} {source: {volume: origin}}
//     round trips (the source, target and thin pool read from device-mapper;
//     lvcreate -s -kn with the tags), N sequential, then N with 8 in flight;
//  2. `lvcreate -s -kn -n NAME vgbench/origin` by hand (a thin snapshot,
//     activated like the agent's), N sequential, then N with 8 processes in flight;
//  1 and 2 in turns (one clone each, sequential; rounds of 16, in flight), so
//  that both meet as many LVs in the VG, which lvm2's work grows with;
// and once, at the first level: 3. volagentd, thin pool, the same round trips.
// Goal: the lvm backend's p50 within 1.5x of lvcreate -s by hand's (sequential
// and at 8 in flight). Under TCG absolute times mean little: the ratios are
// the result. Prints a table and one JSON line; exit 0 whether the goal is met or not.
// `--quick`: N = 20 and levels 0,100.
import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { Agent as HttpAgent } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

import { runInVm, scratchDisks, vmLaneAvailable } from '../test/helpers/vm.js';
import type { Latency } from './lib.js';
import { atMost, call, expectStatus, f1, GiB, goalNote, latency, launchBenchAgent, MiB, msSince, now, runBench, timedConcurrent, writeHead } from './lib.js';

const execFileAsync = promisify(execFile);
const LVM_POOL = 'lvm0';
const THIN_POOL = 'thin0';
const VG = 'vgbench';
const DEVICE_DIR = '/dev/volagent-bench';
const CONCURRENCY = 8;
const DATA_BYTES = 2 * GiB;
const ORIGIN_BYTES = GiB;
const WRITTEN_BYTES = 16 * MiB;
const LVM_ENV = { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1', DM_DISABLE_UDEV: '1' };

interface Side { sequential: Latency; concurrent: Latency; concurrentPerSecond: number }

interface Level {
  /** LVs in the VG when the level's clones began. */
  lvsBefore: number;
  agent: Side;
  lvcreate: Side;
}

interface GuestResult {
  n: number;
  levels: Level[];
  thin: Side;
}

async function sides(n: number, one: (id: string) => Promise<number>, label: string): Promise<Side> {
  const sequential: number[] = [];
  for (let i = 0; i < n; i++) sequential.push(await one(`${label}s${i}`));
  const concurrent = await timedConcurrent(n, CONCURRENCY, (i) => one(`${label}c${i}`));
  return { sequential: latency(sequential), concurrent: latency(concurrent.samples), concurrentPerSecond: concurrent.perSecond };
}

/**
 * Two sides measured in turns, since every clone adds an LV and lvm2's work
 * grows with the LVs in the VG: sequential clones alternate one by one, and
 * the clones in flight go in rounds of 2 x CONCURRENCY per side, alternating.
 * Either side then meets the same numbers of LVs, on average.
 */
async function pairedSides(n: number, a: (id: string) => Promise<number>, b: (id: string) => Promise<number>, label: string): Promise<[Side, Side]> {
  const sequential: [number[], number[]] = [[], []];
  for (let i = 0; i < n; i++) {
    sequential[0].push(await a(`${label}as${i}`));
    sequential[1].push(await b(`${label}bs${i}`));
  }
  const concurrent: [number[], number[]] = [[], []];
  const elapsedMs = [0, 0];
  const round = 2 * CONCURRENCY;
  for (let done = 0; done < n; done += round) {
    const count = Math.min(round, n - done);
    for (const [side, one] of [a, b].entries()) {
      const tag = side === 0 ? 'a' : 'b';
      const timed = await timedConcurrent(count, CONCURRENCY, (i) => one(`${label}${tag}c${done + i}`));
      concurrent[side]!.push(...timed.samples);
      elapsedMs[side]! += (count / timed.perSecond) * 1000;
    }
  }
  const side = (i: 0 | 1): Side => ({ sequential: latency(sequential[i]), concurrent: latency(concurrent[i]), concurrentPerSecond: n / (elapsedMs[i]! / 1000) });
  return [side(0), side(1)];
}

async function lvm(args: string[]): Promise<string> {
  return (await execFileAsync('lvm', args, { env: LVM_ENV, maxBuffer: 64 * MiB })).stdout;
}

async function lvCount(): Promise<number> {
  return Number((await lvm(['vgs', '--noheadings', '-o', 'lv_count', VG])).trim());
}

/** The guest side: every measurement, written to $VOLAGENT_VM_OUT/lvm-bench.json. */
async function guest(quick: boolean, levels: number[]): Promise<number> {
  const n = quick ? 20 : 100;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'lvm-bench-'));
  await lvm(['pvcreate', '-q', '/dev/vda']);
  await lvm(['vgcreate', '-q', VG, '/dev/vda']);
  await lvm(['lvcreate', '-q', '--type', 'thin-pool', '-L', `${DATA_BYTES / MiB}m`, '--poolmetadatasize', '64m', '-c', '64k', '-Zy', '-n', 'pool', VG]);
  await lvm(['lvcreate', '-q', '-V', `${ORIGIN_BYTES / MiB}m`, '-T', `${VG}/pool`, '-n', 'origin']);
  await writeHead(`/dev/${VG}/origin`, WRITTEN_BYTES);
  const agent = await launchBenchAgent(dir, [
    { name: LVM_POOL, backend: 'lvm', vg: VG, thinPool: 'pool', minFree: '0%' },
    { name: THIN_POOL, backend: 'thin', dataDevice: '/dev/vdb', metadataDevice: '/dev/vdc', deviceDir: DEVICE_DIR, blockSize: '64KiB', minFree: '0%' },
  ], { startTimeoutMs: 180_000, env: LVM_ENV });
  const keepAlive = new HttpAgent({ keepAlive: true, maxSockets: CONCURRENCY });
  const result: GuestResult = { n, levels: [], thin: undefined as unknown as Side };
  try {
    const cloneIn = (pool: string, origin: string) => async (id: string): Promise<number> => {
      const reply = await call(agent.socket, keepAlive, 'PUT', `/v1/volumes/${id}`, { tenant: 't', pool, source: { volume: origin } });
      expectStatus(reply, 201, `clone ${id}`);
      return reply.ms;
    };
    for (const [pool, origin] of [[LVM_POOL, 'lorigin'], [THIN_POOL, 'torigin']] as const) {
      expectStatus(await call(agent.socket, keepAlive, 'PUT', `/v1/volumes/${origin}`, { tenant: 't', pool, sizeBytes: ORIGIN_BYTES }), 201, origin);
    }
    await writeHead(`/dev/${VG}/va.${LVM_POOL}.lorigin`, WRITTEN_BYTES);
    await writeHead(path.join(DEVICE_DIR, THIN_POOL, 'torigin'), WRITTEN_BYTES);
    result.thin = await sides(n, cloneIn(THIN_POOL, 'torigin'), 'thin');
    let filler = 0;
    for (const [index, target] of levels.entries()) {
      while (await lvCount() < target) {
        // Fillers as an operator's snapshots would be: inactive (activation skip), untagged.
        await lvm(['lvcreate', '-q', '-s', '-n', `filler${filler++}`, `${VG}/origin`]);
      }
      const lvsBefore = await lvCount();
      const [agentSide, byHand] = await pairedSides(n, cloneIn(LVM_POOL, 'lorigin'), async (name) => {
        const start = now();
        await lvm(['lvcreate', '-q', '-s', '-kn', '-n', `h${name}`, `${VG}/origin`]);
        return msSince(start);
      }, `l${index}`);
      result.levels.push({ lvsBefore, agent: agentSide, lvcreate: byHand });
    }
  } finally {
    keepAlive.destroy();
    await agent.stop();
  }
  await writeFile(path.join(process.env.VOLAGENT_VM_OUT ?? dir, 'lvm-bench.json'), JSON.stringify(result));
  return 0;
}

function report(result: GuestResult, quick: boolean): void {
  const row = (label: string, l: Latency, perSecond: number): string =>
    `${label.padEnd(40)} ${f1(l.p50).padStart(8)} ${f1(l.p99).padStart(8)} ${f1(l.mean).padStart(8)} ${f1(perSecond).padStart(10)}`;
  const seqRate = (l: Latency): number => 1000 / l.mean;
  console.log(`clone latency in the VM (TCG), ms; N = ${result.n} per row`);
  console.log(`${''.padEnd(40)} ${'p50'.padStart(8)} ${'p99'.padStart(8)} ${'mean'.padStart(8)} ${'clones/s'.padStart(10)}`);
  console.log(row('volagentd thin pool, sequential', result.thin.sequential, seqRate(result.thin.sequential)));
  console.log(row(`volagentd thin pool, ${CONCURRENCY} in flight`, result.thin.concurrent, result.thin.concurrentPerSecond));
  const ratios = result.levels.map((level) => {
    const tag = `(${level.lvsBefore} LVs)`;
    console.log(row(`volagentd lvm pool, sequential ${tag}`, level.agent.sequential, seqRate(level.agent.sequential)));
    console.log(row(`volagentd lvm pool, ${CONCURRENCY} in flight ${tag}`, level.agent.concurrent, level.agent.concurrentPerSecond));
    console.log(row(`lvcreate -s, sequential ${tag}`, level.lvcreate.sequential, seqRate(level.lvcreate.sequential)));
    console.log(row(`lvcreate -s, ${CONCURRENCY} in flight ${tag}`, level.lvcreate.concurrent, level.lvcreate.concurrentPerSecond));
    return {
      lvsBefore: level.lvsBefore,
      sequential: level.agent.sequential.p50 / level.lvcreate.sequential.p50,
      concurrent: level.lvcreate.concurrentPerSecond / level.agent.concurrentPerSecond,
    };
  });
  const verdicts = ratios.flatMap((r) => {
    const sequential = atMost(`p50 vs lvcreate -s, sequential (${r.lvsBefore} LVs)`, r.sequential, 'x', 1.5);
    const concurrent = atMost(`time per clone vs lvcreate -s, ${CONCURRENCY} in flight (${r.lvsBefore} LVs)`, r.concurrent, 'x', 1.5);
    console.log(`${r.lvsBefore} LVs: lvm backend vs lvcreate -s: ${f1(r.sequential)}x the p50 (sequential; ${goalNote(sequential)}), `
      + `${f1(r.concurrent)}x the time per clone at ${CONCURRENCY} in flight (${goalNote(concurrent)})`);
    return [sequential, concurrent];
  });
  console.log(JSON.stringify({ bench: 'lvm', quick, ...result, ratios, verdicts }));
}

export function main(args: string[]): Promise<number> {
  const quick = args.includes('--quick');
  const levelsArg = args.find((a) => a.startsWith('--levels='))?.slice('--levels='.length);
  const levels = levelsArg ? levelsArg.split(',').map(Number) : quick ? [0, 100] : [0, 500];
  if (levels.some((l) => !Number.isSafeInteger(l) || l < 0)) return Promise.resolve(2);
  if (args.includes('--guest')) return guest(quick, levels);
  return runBench('lvm', 'qemu for the VM lane, and lvm2', import.meta.url, args, async () => {
    const lane = vmLaneAvailable();
    if (!lane.ok) throw new Error(`the VM lane is unavailable: ${lane.reason}`);
    await execFileAsync('lvm', ['version']).catch(() => { throw new Error('lvm2 is not installed (apt-get install lvm2)'); });
    const cleanups: Array<() => Promise<void>> = [];
    try {
      const dataMiB = DATA_BYTES / MiB;
      const disks = await scratchDisks((fn) => cleanups.push(fn), 'lvm-bench', [dataMiB + 256, dataMiB, 64]);
      const script = `node ${path.relative(process.cwd(), new URL(import.meta.url).pathname)} --guest${quick ? ' --quick' : ''} --levels=${levels.join(',')}`;
      const result = await runInVm({ script, disks, memoryMiB: 1536, timeoutMs: 5_400_000, env: { UV_THREADPOOL_SIZE: '16', DM_DISABLE_UDEV: '1' } });
      const file = result.files['lvm-bench.json'];
      if (result.exitCode !== 0 || !file) throw new Error(`the guest failed (exit ${result.exitCode}): ${result.stderr.slice(-4000)}${result.stdout.slice(-2000)}`);
      report(JSON.parse(file.toString()) as GuestResult, quick);
      return 0;
    } finally {
      for (const cleanup of cleanups) await cleanup();
    }
  });
}

// Run directly in the guest (`node dist/bench/lvm.js --guest`), not through scripts/bench.mjs.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) process.exitCode = await main(process.argv.slice(2));
