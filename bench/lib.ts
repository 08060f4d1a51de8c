// What the benchmarks share: timing and percentiles, test data on loop
// filesystems, one HTTP call on the control socket, a volagentd of their own,
// RSS sampling, cleanup on SIGINT/SIGTERM and the libuv pool size.
import type { ChildProcess } from 'node:child_process';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { open, readFile, rename } from 'node:fs/promises';
import type { Agent as HttpAgent } from 'node:http';
import { request as httpRequest } from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';

import { native } from '../src/native/binding.js';
import type { AgentSpec, PoolSpec } from '../test/helpers/agent.js';
import { replyOf, VOLAGENTD, writeAgentConfig } from '../test/helpers/agent.js';

const execFileAsync = promisify(execFile);
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
/** The agent runs its clones on a libuv pool of 16 (bin/volagentd.js); in-process floors get the same. */
export const THREADPOOL = '16';

export const now = (): bigint => process.hrtime.bigint();
export const msSince = (start: bigint): number => Number(process.hrtime.bigint() - start) / 1e6;
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export interface Latency { n: number; p50: number; p99: number; max: number; mean: number }

export function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

export function latency(samples: number[]): Latency {
  const sorted = [...samples].sort((a, b) => a - b);
  const sum = sorted.reduce((a, b) => a + b, 0);
  return { n: sorted.length, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), max: sorted[sorted.length - 1] ?? NaN, mean: sum / Math.max(1, sorted.length) };
}

/** Runs `one` n times with `concurrency` in flight: each call's figure, and calls per second overall. */
export async function timedConcurrent(n: number, concurrency: number, one: (i: number) => Promise<number>): Promise<{ samples: number[]; perSecond: number }> {
  const samples: number[] = [];
  let next = 0;
  const start = now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < n) samples.push(await one(next++));
  }));
  return { samples, perSecond: n / (msSince(start) / 1000) };
}

/** Writes the first `bytes` of a device or file with 0x5a, in MiB, and fsyncs it. */
export async function writeHead(node: string, bytes: number): Promise<void> {
  const handle = await open(node, 'r+');
  try {
    const chunk = Buffer.alloc(MiB, 0x5a);
    for (let at = 0; at < bytes; at += MiB) await handle.write(chunk, 0, MiB, at);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes `runs` runs of random data spread over a file of `sizeBytes` (1 MiB aligned), then fsyncs. */
export async function writeRuns(file: string, sizeBytes: number, runs: number, runBytes: number): Promise<void> {
  const stride = Math.floor(sizeBytes / runs / MiB) * MiB;
  const handle = await open(file, 'r+');
  try {
    for (let i = 0; i < runs; i++) {
      const bytes = randomBytes(runBytes);
      await handle.write(bytes, 0, runBytes, i * stride);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export async function syncFs(mountPoint: string): Promise<void> {
  await execFileAsync('sync', ['-f', mountPoint]);
}

/** Drops one file's page cache (dd's nocache: POSIX_FADV_DONTNEED), so the copy reads from the device. */
export async function dropFileCache(file: string): Promise<void> {
  await execFileAsync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
}

export async function fsyncDirectory(dir: string): Promise<void> {
  const d = await open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    await native.fsync(d.fd, dir);
  } finally {
    await d.close();
  }
}


export interface Reply { status: number; body: any; text: string; ms: number }

export function call(socketPath: string, agent: HttpAgent | false, method: string, urlPath: string, body?: unknown, timeoutMs = 120_000): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string | number> = payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) };
    const start = now();
    const req = httpRequest({ socketPath, method, path: urlPath, headers, agent }, (res) => {
      replyOf(res).then(({ status, body: parsed, text }) => resolve({ status, body: parsed, text, ms: msSince(start) }), reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${urlPath}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

export function expectStatus(reply: Reply, expected: number, what: string): void {
  if (reply.status !== expected) throw new Error(`${what}: expected ${expected}, got ${reply.status} ${reply.text.trim()}`);
}

export interface RunningAgent {
  pid: number;
  socket: string;
  child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

/** What launchBenchAgent may add to an agent's config: its NBD addresses and TLS, and the spawn of its process (a network namespace's). */
export type BenchAgentConfig = Pick<AgentSpec, 'nbdListen' | 'nbdTls' | 'nbdPlaintextTcp' | 'spawn'>;

/**
 * Starts volagentd on `pools` (config, catalog and socket in `dir`) as
 * spawnAgent does, plus node options: `nodeArgs` and
 * VOLAGENT_BENCH_AGENT_NODE_ARGS (e.g. `--cpu-prof --cpu-prof-dir=DIR`).
 * Resolves once it answers GET /v1/version.
 */
export async function launchBenchAgent(dir: string, pools: PoolSpec[], options: { nodeArgs?: string[]; env?: NodeJS.ProcessEnv; startTimeoutMs?: number; config?: BenchAgentConfig } = {}): Promise<RunningAgent> {
  const configFile = await writeAgentConfig({ dir, pools, ...options.config });
  const socket = path.join(dir, 'control.sock');
  const nodeArgs = [...(process.env.VOLAGENT_BENCH_AGENT_NODE_ARGS ?? '').split(/\s+/).filter(Boolean), ...(options.nodeArgs ?? [])];
  const spawnWith = options.config?.spawn ?? spawn;
  const child = spawnWith(process.execPath, [...nodeArgs, VOLAGENTD, '--config', configFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, VOLAGENT_LOG_LEVEL: 'warn', ...options.env },
  });
  let output = '';
  const keep = (d: Buffer): void => { output = (output + d.toString()).slice(-16_384); };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let running = true;
  const exited = new Promise<void>((resolve) => child.once('exit', () => { running = false; resolve(); }));
  const stop = async (): Promise<void> => {
    if (!running) return;
    child.kill('SIGTERM');
    const timeout = sleep(15_000).then(() => 'timeout' as const);
    if ((await Promise.race([exited, timeout])) === 'timeout' && running) {
      child.kill('SIGKILL');
      await exited;
    }
  };
  const agent = { pid: child.pid!, socket, child, output: () => output, stop };
  const startTimeoutMs = options.startTimeoutMs ?? 20_000;
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    if (!running) throw new Error(`volagentd exited during start-up: ${output}`);
    try {
      const reply = await call(socket, false, 'GET', '/v1/version', undefined, 2000);
      if (reply.status === 200) return agent;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`volagentd did not answer within ${startTimeoutMs / 1000} s: ${output}`);
    }
    await sleep(50);
  }
}

/** Peak VmRSS of a process, sampled every 25 ms. */
export class RssSampler {
  peakBytes = 0;
  samples = 0;
  private timer: NodeJS.Timeout | undefined;
  private reading = false;

  constructor(private readonly pid: number) {}

  start(): void {
    this.timer = setInterval(() => {
      if (this.reading) return;
      this.reading = true;
      void this.sample().finally(() => { this.reading = false; });
    }, 25);
  }

  async sample(): Promise<void> {
    const kb = await this.field('VmRSS');
    if (kb !== undefined) {
      this.samples += 1;
      this.peakBytes = Math.max(this.peakBytes, kb * 1024);
    }
  }

  /** VmHWM: the kernel's own peak RSS of the process since it started. */
  async highWaterBytes(): Promise<number | undefined> {
    const kb = await this.field('VmHWM');
    return kb === undefined ? undefined : kb * 1024;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private async field(name: string): Promise<number | undefined> {
    try {
      const status = await readFile(`/proc/${this.pid}/status`, 'utf8');
      const match = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status);
      return match ? Number(match[1]) : undefined;
    } catch {
      return undefined; // the process has gone
    }
  }
}

export const onSignalCleanup: Array<() => Promise<void>> = [];

/** Runs the cleanups registered so far, newest first; `label` prefixes a failure's line. */
async function runCleanups(label: string): Promise<void> {
  for (const fn of onSignalCleanup.splice(0).reverse()) await fn().catch((error: unknown) => console.error(`${label}: cleanup: ${(error as Error).message}`));
}

/** Re-runs this module in a child whose libuv pool is as large as the agent's, so the floor is not held to 4 threads. */
async function rerunWithThreadpool(moduleUrl: string, args: string[]): Promise<number> {
  const code = `const m = await import(${JSON.stringify(moduleUrl)}); process.exitCode = await m.main(${JSON.stringify(args)});`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: 'inherit', env: { ...process.env, UV_THREADPOOL_SIZE: THREADPOOL } });
  const forward = (signal: NodeJS.Signals): void => { child.kill(signal); };
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  try {
    return await new Promise<number>((resolve) => child.once('exit', (status, signal) => resolve(status ?? (signal ? 1 : 0))));
  } finally {
    process.off('SIGINT', forward);
    process.off('SIGTERM', forward);
  }
}

export const f1 = (x: number): string => (Number.isFinite(x) ? (x < 10 ? x.toFixed(2) : x.toFixed(1)) : '-');

/**
 * One goal a benchmark checks, as its JSON line's `verdicts` carry it and
 * `npm run bench -- all` tabulates it.
 */
export interface Verdict {
  measure: string;
  /** NaN when the run could not measure it (null in the JSON line); such a figure meets no goal. */
  figure: number;
  /** 'x' for a ratio, else the figure's unit ('ms', 'MiB'). */
  unit: string;
  /** The bound as text, e.g. '<= 2x', '< 120 MiB'. */
  goal: string;
  met: boolean;
}

/** A figure with its unit: '1.78x', '95.3 MiB'; '-' when not measured. */
export function withUnit(figure: number | null, unit: string): string {
  if (figure === null || !Number.isFinite(figure)) return '-';
  const digits = f1(figure);
  return unit === 'x' ? `${digits}x` : `${digits} ${unit}`;
}

function verdictOf(measure: string, figure: number, unit: string, relation: '<=' | '<' | '>=', bound: number, met: boolean): Verdict {
  return { measure, figure, unit, goal: `${relation} ${bound}${unit === 'x' ? 'x' : ` ${unit}`}`, met };
}

/** Met when `figure` <= `bound`. */
export const atMost = (measure: string, figure: number, unit: string, bound: number): Verdict => verdictOf(measure, figure, unit, '<=', bound, figure <= bound);
/** Met when `figure` < `bound`. */
export const below = (measure: string, figure: number, unit: string, bound: number): Verdict => verdictOf(measure, figure, unit, '<', bound, figure < bound);
/** Met when `figure` >= `bound`. */
export const atLeast = (measure: string, figure: number, unit: string, bound: number): Verdict => verdictOf(measure, figure, unit, '>=', bound, figure >= bound);

export const metText = (met: boolean): string => (met ? 'met' : 'NOT met');

/** A verdict's goal and outcome for a bench's own lines: 'goal <= 2x: met'. */
export const goalNote = (verdict: Verdict): string => `goal ${verdict.goal}: ${metText(verdict.met)}`;

/** Milliseconds of each step of a floor clone. */
export interface FloorSteps {
  open: number;
  ficlone: number;
  fsync: number;
  rename: number;
  dirFsync: number;
}

/**
 * The raw FICLONE floor of one durable clone, through the addon, with no
 * HTTP and no catalog: open a temporary O_CREAT|O_EXCL in `objects`, FICLONE
 * from `srcFd`, fsync, close, rename to `<name>.raw`, fsync the directory.
 */
export async function floorClone(objects: string, srcFd: number, srcPath: string, name: string): Promise<{ ms: number; steps: FloorSteps }> {
  const temp = path.join(objects, `.floor-${name}`);
  const final = path.join(objects, `${name}.raw`);
  const t0 = now();
  const h = await open(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o644);
  const t1 = now();
  let t2: bigint;
  let t3: bigint;
  try {
    await native.ficlone(h.fd, srcFd, srcPath, temp);
    t2 = now();
    await native.fsync(h.fd, temp);
    t3 = now();
  } finally {
    await h.close();
  }
  const t4 = now();
  await rename(temp, final);
  const t5 = now();
  await fsyncDirectory(objects);
  const ms = (from: bigint, to: bigint): number => Number(to - from) / 1e6;
  return { ms: msSince(t0), steps: { open: ms(t0, t1), ficlone: ms(t1, t2), fsync: ms(t2, t3), rename: ms(t4, t5), dirFsync: msSince(t5) } };
}

export interface BenchRun {
  quick: boolean;
  /** Where the agent's last output lines come from, for the report of a failure. */
  agentOutput: () => string;
}

/**
 * The frame of a benchmark's main(): the root check, a re-run with the
 * agent's libuv pool size, cleanup on SIGINT/SIGTERM (exit 130) and at the
 * end, and a failure's report with the agent's last output lines.
 */
export async function runBench(label: string, needs: string, moduleUrl: string, args: string[], body: (run: BenchRun) => Promise<number>): Promise<number> {
  if (process.getuid?.() !== 0) {
    console.error(`${label}: needs root (${needs})`);
    return 1;
  }
  if (process.env.UV_THREADPOOL_SIZE !== THREADPOOL) return rerunWithThreadpool(moduleUrl, args);
  let signalled = false;
  const onSignal = (): void => {
    if (signalled) return;
    signalled = true;
    console.error(`${label}: interrupted; cleaning up`);
    void runCleanups(label).finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const run: BenchRun = { quick: args.includes('--quick'), agentOutput: () => '' };
  try {
    return await body(run);
  } catch (error) {
    if (signalled) return 130; // the work failed because the cleanup pulled things away
    console.error(`${label}: ${(error as Error).stack ?? error}`);
    const output = run.agentOutput().trim();
    if (output) console.error(`volagentd output (last lines):\n${output.split('\n').slice(-20).join('\n')}`);
    return 1;
  } finally {
    await runCleanups(label);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
