// Control-API benchmark (needs root): a real volagentd with an XFS loop pool
// `fast` (reflink) and an ext4 loop pool `slow` (copy fallback), talked to over
// its unix socket with keep-alive HTTP, against a floor measured in the same run.
//  1. Clone round trip (PUT /v1/volumes/{id} {source: {volume}}) of a 10 GiB
//     source with real extents, at concurrency 1 and 8: p50, p99, clones/s.
//     Floor: this process, through the addon, in a loop: open a temporary
//     O_CREAT|O_EXCL in the same objects directory, FICLONE, fsync, close,
//     rename, fsync the directory (no HTTP, no catalog). Also shown: the pool
//     layer in-process (FilePool.clone: what the agent does per clone, minus
//     HTTP and catalog). The three sides alternate round by round; every
//     round's files are deleted (untimed) and the filesystem synced before the
//     next. Goals: p50 <= 2x the floor's; clones/s at c=8 >= 1.0x the floor's;
//     the agent's main-thread CPU per clone at c=8 <= 0.5 ms.
//  2. Peak RSS of the agent (/proc/<pid>/status VmRSS sampled every 25 ms,
//     and VmHWM): goal < 120 MiB.
//  3. Event-loop delay while a 4 GiB copy-fallback clone (1 GiB of data) runs
//     beside reflink clones at concurrency 8. Goal: p99 < 20 ms. The agent
//     exports no event-loop figure, so it is measured three ways: from outside
//     with GET /v1/version back to back (each round trip timed) and paced
//     (one per 5 ms slot, timed from the slot, so stalls are time-weighted);
//     and inside, by a monitorEventLoopDelay histogram preloaded into the
//     agent (node --import of a file this bench writes; no agent code
//     changed). For attribution the probes also run idle, beside the reflink
//     clones alone and beside the copy alone. Also printed, to tell where the
//     agent's time goes: CPU per clone (agent process, its main thread, this
//     process), a SQLite commit on the catalog's filesystem, the floor's steps.
// VOLAGENT_BENCH_AGENT_NODE_ARGS adds node options for the agent only
// (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`).
// Prints a table and one JSON line. Exit code 0 whether goals are met or not.
// `--quick`: a 1 GiB source, a 1 GiB copy source, far fewer clones.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { Agent as HttpAgent } from 'node:http';
import path from 'node:path';
import type { IntervalHistogram } from 'node:perf_hooks';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

import BetterSqlite3 from 'better-sqlite3';

import { FilePool } from '../src/pools/file-pool.js';
import { extentCount } from '../test/helpers/files.js';
import type { PoolSpec } from '../test/helpers/agent.js';
import type { LoopFs } from '../test/helpers/loop-fs.js';
import type { FloorSteps, Latency, RunningAgent, Verdict } from './lib.js';
import {
  atLeast, atMost, below, call, dropFileCache, expectStatus, f1, floorClone, fsyncDirectory, GiB, latency, launchBenchAgent, metText, MiB, msSince, now,
  onSignalCleanup, RssSampler, runBench, sleep, syncFs, writeRuns,
} from './lib.js';
import { makeLoopFs, TEST_ROOT } from '../test/helpers/loop-fs.js';

const execFileAsync = promisify(execFile);
const TENANT = 't';
/** Spacing of the paced event-loop probes. */
const PROBE_INTERVAL_MS = 5;

interface Plan {
  sourceBytes: number;
  sourceRuns: number;
  sourceRunBytes: number;
  copyBytes: number;
  copyRuns: number;
  copyRunBytes: number;
  clonesC1: number;
  clonesC8: number;
  rounds: number;
  warmup: number;
  idleProbes: number;
  /** Reflink clones at c=8 beside the probe, without the copy. */
  probeClones: number;
}

const FULL: Plan = {
  sourceBytes: 10 * GiB, sourceRuns: 256, sourceRunBytes: MiB,
  copyBytes: 4 * GiB, copyRuns: 256, copyRunBytes: 4 * MiB,
  clonesC1: 200, clonesC8: 400, rounds: 4, warmup: 10, idleProbes: 500, probeClones: 400,
};
const QUICK: Plan = {
  sourceBytes: GiB, sourceRuns: 64, sourceRunBytes: MiB,
  copyBytes: GiB, copyRuns: 64, copyRunBytes: 4 * MiB,
  clonesC1: 20, clonesC8: 40, rounds: 2, warmup: 3, idleProbes: 100, probeClones: 40,
};

// --- small utilities ---


/** Event-loop delay histograms sample every RESOLUTION ms and record the whole interval: the delay is the excess. */
const RESOLUTION_MS = 5;

function histogramMs(h: IntervalHistogram): { p50: number; p99: number; max: number } {
  const excess = (ns: number): number => Math.max(0, ns / 1e6 - RESOLUTION_MS);
  return { p50: excess(h.percentile(50)), p99: excess(h.percentile(99)), max: excess(h.max) };
}

/** Latency of one-row write transactions in a scratch SQLite database set up as the catalog is (WAL, synchronous=FULL). */
function sqliteCommitLatency(dir: string, commits: number): Latency {
  const file = path.join(dir, 'commit-probe.db');
  const db = new BetterSqlite3(file);
  const samples: number[] = [];
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    const payload = 'x'.repeat(300);
    for (let i = 0; i < commits; i++) {
      const t0 = now();
      db.transaction(() => insert.run(payload)).immediate();
      samples.push(msSince(t0));
    }
  } finally {
    db.close();
  }
  return latency(samples);
}

// --- HTTP over the unix socket ---


// --- the agent process ---


/**
 * Preloaded into the agent (node --import): an event-loop delay
 * histogram that SIGUSR2 dumps to a file and resets. No agent code changes.
 */
const PRELOAD = `// written by bench/api.ts
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { renameSync, writeFileSync } from 'node:fs';
const out = process.env.VOLAGENT_BENCH_ELD_FILE;
if (out) {
  const h = monitorEventLoopDelay({ resolution: ${RESOLUTION_MS} });
  h.enable();
  let seq = 0;
  process.on('SIGUSR2', () => {
    seq += 1;
    const ms = (ns) => Math.max(0, ns / 1e6 - ${RESOLUTION_MS});
    writeFileSync(out + '.tmp', JSON.stringify({ seq, p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max), count: h.count }));
    renameSync(out + '.tmp', out);
    h.reset();
  });
}
`;

async function launchAgent(dir: string, pools: PoolSpec[]): Promise<RunningAgent & { eldFile: string }> {
  const preload = path.join(dir, 'eld-preload.mjs');
  const eldFile = path.join(dir, 'eld.json');
  await writeFile(preload, PRELOAD);
  const agent = await launchBenchAgent(dir, pools, { nodeArgs: [`--import=${pathToFileURL(preload).href}`], env: { VOLAGENT_BENCH_ELD_FILE: eldFile } });
  return { ...agent, eldFile };
}


/** The agent's in-process event-loop delay since the previous call (SIGUSR2 to the preload). */
async function agentLoopDelay(agent: RunningAgent & { eldFile: string }, state: { seq: number }): Promise<{ p50: number; p99: number; max: number } | null> {
  state.seq += 1;
  try {
    process.kill(agent.pid, 'SIGUSR2');
  } catch {
    return null;
  }
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    try {
      const dump = JSON.parse(await readFile(agent.eldFile, 'utf8')) as { seq: number; p50: number; p99: number; max: number };
      if (dump.seq === state.seq) return { p50: dump.p50, p99: dump.p99, max: dump.max };
      if (dump.seq > state.seq) state.seq = dump.seq;
    } catch {
      // not written yet
    }
    await sleep(10);
  }
  return null;
}

// --- rounds ---

interface Round { latencies: number[]; wallMs: number; count: number }

/** `count` calls of `one` by `concurrency` workers; the first failure stops the others and is thrown. */
async function runWorkers(count: number, concurrency: number, one: (i: number) => Promise<number>): Promise<Round> {
  const latencies: number[] = [];
  let next = 0;
  let failed = false;
  const start = now();
  const results = await Promise.allSettled(Array.from({ length: concurrency }, async () => {
    for (;;) {
      const i = next++;
      if (i >= count || failed) return;
      try {
        latencies.push(await one(i));
      } catch (error) {
        failed = true;
        throw error;
      }
    }
  }));
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) throw failure.reason;
  return { latencies, wallMs: msSince(start), count };
}

interface Side {
  name: string;
  /** The agent process, whose CPU time is charged to this side's rounds. */
  agentPid?: number;
  /** Makes clone `name`, returns its latency in ms. */
  clone(name: string): Promise<number>;
  /** Removes clones, untimed. */
  remove(names: string[], concurrency: number): Promise<void>;
}

interface SideResult {
  latency: Latency;
  clonesPerSecond: number;
  clones: number;
  wallMs: number;
  /** CPU time (user + system) per clone of the agent process, its main thread, and this process, during the timed clones. */
  agentCpuMsPerClone: number;
  agentMainThreadCpuMsPerClone: number;
  benchCpuMsPerClone: number;
}

interface TimedRound extends Round { agentCpuMs: number; agentMainCpuMs: number; benchCpuMs: number }

/** utime + stime of a process (all threads), or of its main thread (the event loop) only, in ms (USER_HZ is 100 on Linux). */
async function processCpuMs(pid: number, mainThreadOnly = false): Promise<number> {
  const stat = await readFile(mainThreadOnly ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10; // fields 14 and 15 of stat(5)
}

function ownCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

function summarize(rounds: TimedRound[]): SideResult {
  const clones = rounds.reduce((a, r) => a + r.count, 0);
  const wallMs = rounds.reduce((a, r) => a + r.wallMs, 0);
  return {
    latency: latency(rounds.flatMap((r) => r.latencies)), clonesPerSecond: clones / (wallMs / 1000), clones, wallMs,
    agentCpuMsPerClone: rounds.reduce((a, r) => a + r.agentCpuMs, 0) / clones,
    agentMainThreadCpuMsPerClone: rounds.reduce((a, r) => a + r.agentMainCpuMs, 0) / clones,
    benchCpuMsPerClone: rounds.reduce((a, r) => a + r.benchCpuMs, 0) / clones,
  };
}

/** Runs every side for `total` clones at `concurrency`, in `rounds` rounds, the sides' order rotating per round. */
async function compare(sides: Side[], total: number, concurrency: number, rounds: number, mountPoint: string, label: string): Promise<Record<string, SideResult>> {
  const perSide: Record<string, TimedRound[]> = Object.fromEntries(sides.map((s) => [s.name, []]));
  const perRound = Math.ceil(total / rounds);
  for (let r = 0; r < rounds; r++) {
    const order = sides.map((_, i) => sides[(i + r) % sides.length]!);
    for (const side of order) {
      const names = Array.from({ length: perRound }, (_, i) => `${label}-${side.name}-r${r}-${i}`);
      const agentCpu = side.agentPid === undefined ? 0 : await processCpuMs(side.agentPid);
      const agentMainCpu = side.agentPid === undefined ? 0 : await processCpuMs(side.agentPid, true);
      const benchCpu = ownCpuMs();
      const round = await runWorkers(perRound, concurrency, (i) => side.clone(names[i]!));
      const benchCpuMs = ownCpuMs() - benchCpu;
      const agentCpuMs = side.agentPid === undefined ? 0 : (await processCpuMs(side.agentPid)) - agentCpu;
      const agentMainCpuMs = side.agentPid === undefined ? 0 : (await processCpuMs(side.agentPid, true)) - agentMainCpu;
      perSide[side.name]!.push({ ...round, agentCpuMs, agentMainCpuMs, benchCpuMs });
      await side.remove(names, concurrency);
      await syncFs(mountPoint);
    }
  }
  return Object.fromEntries(Object.entries(perSide).map(([name, rs]) => [name, summarize(rs)]));
}

// --- the main run ---

/** Cleanup to run on SIGINT/SIGTERM too (finally blocks do not run on a signal). */


export function main(args: string[]): Promise<number> {
  return runBench('bench api', 'it makes XFS and ext4 loop filesystems', import.meta.url, args, async (run) => {
    const { quick } = run;
    const plan = quick ? QUICK : FULL;
    const agentDir = path.join(TEST_ROOT, `api-agent-${process.pid}-${randomBytes(3).toString('hex')}`);
    const started = now();
    const loadBefore = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
    console.log(`bench api${quick ? ' --quick' : ''}: making loop filesystems`);
    const xfs: LoopFs = await makeLoopFs('xfs', 16 * GiB);
    onSignalCleanup.push(() => xfs.cleanup());
    const ext4: LoopFs = await makeLoopFs('ext4', 8 * GiB);
    onSignalCleanup.push(() => ext4.cleanup());
    // A fresh ext4 zeroes its inode tables in the background (lazy_itable_init), which would compete
    // with the copy; an ext4 in service has long finished that.
    await execFileAsync('mount', ['-o', 'remount,noinit_itable', ext4.mountPoint]);
    const fastPath = path.join(xfs.mountPoint, 'pool');
    const slowPath = path.join(ext4.mountPoint, 'pool');
    await mkdir(fastPath);
    await mkdir(slowPath);
    // The catalog and socket live on the host's own filesystem, as /var/lib/volagent would.
    await mkdir(agentDir, { recursive: true });
    onSignalCleanup.push(() => rm(agentDir, { recursive: true, force: true }));

    const agent = await launchAgent(agentDir, [{ name: 'fast', path: fastPath }, { name: 'slow', path: slowPath }]);
    onSignalCleanup.push(() => agent.stop());
    run.agentOutput = agent.output;
    const rss = new RssSampler(agent.pid);
    rss.start();
    onSignalCleanup.push(async () => rss.stop());
    await rss.sample();
    const startRss = rss.peakBytes;
    const sock = agent.socket;
    const eldState = { seq: 0 };

    // Sources.
    console.log(`bench api: writing the sources (${plan.sourceBytes / GiB} GiB on xfs, ${plan.copyBytes / GiB} GiB on ext4)`);
    expectStatus(await call(sock, false, 'PUT', '/v1/volumes/src', { tenant: TENANT, pool: 'fast', sizeBytes: plan.sourceBytes }), 201, 'create src');
    const objects = path.join(fastPath, 'objects');
    const srcFile = path.join(objects, 'src.raw');
    await writeRuns(srcFile, plan.sourceBytes, plan.sourceRuns, plan.sourceRunBytes);
    const srcExtents = await extentCount(srcFile);
    expectStatus(await call(sock, false, 'PUT', '/v1/volumes/slowsrc', { tenant: TENANT, pool: 'slow', sizeBytes: plan.copyBytes }), 201, 'create slowsrc');
    const slowFile = path.join(slowPath, 'objects', 'slowsrc.raw');
    await writeRuns(slowFile, plan.copyBytes, plan.copyRuns, plan.copyRunBytes);
    const copyDataBytes = plan.copyRuns * plan.copyRunBytes;
    await syncFs(xfs.mountPoint);
    await syncFs(ext4.mountPoint);
    const commit = sqliteCommitLatency(agentDir, quick ? 50 : 200);

    // The three sides.
    const srcHandle = await open(srcFile, 'r');
    onSignalCleanup.push(() => srcHandle.close().catch(() => undefined));
    const floorSteps = { ficlone: [] as number[], fsync: [] as number[], rename: [] as number[], dirFsync: [] as number[], open: [] as number[] };
    let recordSteps = false;
    const floor: Side = {
      name: 'floor',
      async clone(name) {
        const { ms, steps } = await floorClone(objects, srcHandle.fd, srcFile, name);
        if (recordSteps) for (const step of Object.keys(floorSteps) as Array<keyof FloorSteps>) floorSteps[step].push(steps[step]);
        return ms;
      },
      async remove(names) {
        for (const name of names) await unlink(path.join(objects, `${name}.raw`));
        await fsyncDirectory(objects);
      },
    };
    // FilePool in this process on the same directory: the agent's per-clone file work without HTTP or catalog.
    const pool = new FilePool({ name: 'fast', path: fastPath });
    await pool.open();
    onSignalCleanup.push(() => pool.close()); // before the unmount: it holds the pool's directory open
    const poolSide: Side = {
      name: 'pool',
      async clone(name) {
        const t0 = now();
        const outcome = await pool.clone('src', name);
        if (outcome.method !== 'reflink') throw new Error(`pool.clone ${name}: method ${outcome.method}, not reflink`);
        return msSince(t0);
      },
      async remove(names) {
        for (const name of names) await pool.remove(name);
      },
    };
    let httpAgent: HttpAgent | undefined;
    const agentSide: Side = {
      name: 'agent',
      agentPid: agent.pid,
      async clone(name) {
        const reply = await call(sock, httpAgent ?? false, 'PUT', `/v1/volumes/${name}`, { tenant: TENANT, source: { volume: 'src' } });
        expectStatus(reply, 201, `clone ${name}`);
        if (reply.body?.cloneMethod !== 'reflink') throw new Error(`clone ${name}: cloneMethod ${reply.body?.cloneMethod}, not reflink`);
        return reply.ms;
      },
      async remove(names, concurrency) {
        await runWorkers(names.length, concurrency, async (i) => {
          expectStatus(await call(sock, httpAgent ?? false, 'DELETE', `/v1/volumes/${names[i]}`), 204, `delete ${names[i]}`);
          return 0;
        });
      },
    };
    const withHttpAgent = async <T>(concurrency: number, fn: () => Promise<T>): Promise<T> => {
      httpAgent = new HttpAgent({ keepAlive: true, maxSockets: concurrency });
      try {
        return await fn();
      } finally {
        httpAgent.destroy();
        httpAgent = undefined;
      }
    };
    const sides = [floor, poolSide, agentSide];

    console.log(`bench api: warm-up, then ${plan.clonesC1} clones per side at c=1 and ${plan.clonesC8} at c=8`);
    await withHttpAgent(1, () => compare(sides, plan.warmup * plan.rounds, 1, plan.rounds, xfs.mountPoint, 'warm'));
    recordSteps = true;
    const c1 = await withHttpAgent(1, () => compare(sides, plan.clonesC1, 1, plan.rounds, xfs.mountPoint, 'c1'));
    recordSteps = false;
    const c8 = await withHttpAgent(8, () => compare(sides, plan.clonesC8, 8, plan.rounds, xfs.mountPoint, 'c8'));
    await srcHandle.close();
    await pool.close();

    // Event-loop probes, each stream on a connection of its own.
    console.log('bench api: event-loop probes (idle, beside reflink clones, beside the copy, beside both)');
    const ownDelay = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
    type Hist = { p50: number; p99: number; max: number };
    interface ProbePhase {
      /** Round trips of back-to-back probes (each sent as soon as the previous one is answered); null when not run. */
      backToBack: Latency | null;
      /** Paced probes, one per PROBE_INTERVAL_MS slot, timed from the slot's start (a stall counts for every slot it delays). */
      paced: Latency | null;
      benchLoop: Hist;
      agentLoop: Hist | null;
    }
    const probeConnection = async (): Promise<HttpAgent> => {
      const probeAgent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
      expectStatus(await call(sock, probeAgent, 'GET', '/v1/version'), 200, 'GET /v1/version'); // connect before timing
      return probeAgent;
    };
    const backToBackProbing = async (until: () => boolean, minimum: number): Promise<number[]> => {
      const probeAgent = await probeConnection();
      const samples: number[] = [];
      try {
        while (!until() || samples.length < minimum) {
          const reply = await call(sock, probeAgent, 'GET', '/v1/version');
          expectStatus(reply, 200, 'GET /v1/version');
          samples.push(reply.ms);
        }
      } finally {
        probeAgent.destroy();
      }
      return samples;
    };
    /**
     * GET /v1/version due at fixed slots of PROBE_INTERVAL_MS; each slot's
     * latency runs from the slot's start to the answer, so slots that came due
     * while a probe was stuck count too (time-weighted, no coordinated omission).
     */
    const pacedProbing = async (until: () => boolean, minimum: number): Promise<number[]> => {
      const probeAgent = await probeConnection();
      const samples: number[] = [];
      const origin = now();
      let slot = 0;
      try {
        while (!until() || samples.length < minimum) {
          const due = slot * PROBE_INTERVAL_MS;
          const wait = due - msSince(origin);
          if (wait > 0) await sleep(wait);
          const reply = await call(sock, probeAgent, 'GET', '/v1/version');
          expectStatus(reply, 200, 'GET /v1/version');
          const answeredAt = msSince(origin);
          for (; slot * PROBE_INTERVAL_MS <= answeredAt; slot++) samples.push(answeredAt - Math.max(slot * PROBE_INTERVAL_MS, due));
        }
      } finally {
        probeAgent.destroy();
      }
      return samples;
    };
    /** Runs `work` with one probe stream beside it (never both: back-to-back probes load both processes). */
    const phase = async (mode: 'backToBack' | 'paced', work: (done: () => boolean) => Promise<void>, minimumProbes = 0): Promise<ProbePhase> => {
      await agentLoopDelay(agent, eldState); // resets the agent's histogram
      ownDelay.reset();
      ownDelay.enable();
      let finished = false;
      const workDone = work(() => finished).finally(() => { finished = true; });
      const probe = mode === 'backToBack' ? backToBackProbing : pacedProbing;
      const [samples] = await Promise.all([probe(() => finished, minimumProbes), workDone]);
      ownDelay.disable();
      return {
        backToBack: mode === 'backToBack' ? latency(samples) : null,
        paced: mode === 'paced' ? latency(samples) : null,
        benchLoop: histogramMs(ownDelay),
        agentLoop: await agentLoopDelay(agent, eldState),
      };
    };
    /** Reflink clones at c=8 until `stop()` or `limit` clones, each deleted again at once (untimed). */
    const reflinkLoad = async (stop: () => boolean, limit: number, label: string, latencies: number[]): Promise<void> => {
      const load = new HttpAgent({ keepAlive: true, maxSockets: 8 });
      let next = 0;
      try {
        await Promise.all(Array.from({ length: 8 }, async () => {
          while (!stop() && next < limit) {
            const id = `${label}-${next++}`;
            const reply = await call(sock, load, 'PUT', `/v1/volumes/${id}`, { tenant: TENANT, source: { volume: 'src' } });
            expectStatus(reply, 201, `clone ${id}`);
            latencies.push(reply.ms);
            expectStatus(await call(sock, load, 'DELETE', `/v1/volumes/${id}`), 204, `delete ${id}`);
          }
        }));
      } finally {
        load.destroy();
      }
    };
    interface CopyRun { ms: number; state: string; method: string | undefined }
    /** A copy-fallback clone of `slowsrc` (its page cache dropped first): PUT (202), then wait for the operation. */
    const copyClone = async (id: string): Promise<CopyRun> => {
      const start = now();
      const put = await call(sock, false, 'PUT', `/v1/volumes/${id}`, { tenant: TENANT, source: { volume: 'slowsrc' } });
      expectStatus(put, 202, `copy clone ${id}`);
      const opId = put.body?.operation?.id as string;
      const ended = await call(sock, false, 'GET', `/v1/operations/${opId}?wait=true`, undefined, 900_000);
      const ms = msSince(start);
      expectStatus(ended, 200, `wait ${opId}`);
      const volume = await call(sock, false, 'GET', `/v1/volumes/${id}`);
      return { ms, state: ended.body?.state as string, method: volume.body?.cloneMethod as string | undefined };
    };
    const afterCopy = async (id: string, run: CopyRun): Promise<void> => {
      if (run.state === 'succeeded') expectStatus(await call(sock, false, 'DELETE', `/v1/volumes/${id}`), 204, `delete ${id}`);
      await syncFs(ext4.mountPoint);
      await syncFs(xfs.mountPoint);
    };
    interface Beside { phase: ProbePhase; copy: CopyRun; clones: Latency }
    const copyBesideClones = async (mode: 'backToBack' | 'paced'): Promise<Beside> => {
      const id = `copy-beside-${mode}`;
      const latencies: number[] = [];
      let copy: CopyRun | undefined;
      await dropFileCache(slowFile);
      const result = await phase(mode, async () => {
        let copying = true;
        const copied = copyClone(id).then((r) => { copy = r; }).finally(() => { copying = false; });
        await Promise.all([copied, reflinkLoad(() => !copying, Number.POSITIVE_INFINITY, `beside-${mode}`, latencies)]);
      });
      await afterCopy(id, copy!);
      return { phase: result, copy: copy!, clones: latency(latencies) };
    };

    // An untimed copy first: the ext4 image is sparse, so the first copy also allocates the image's blocks on the host.
    const warmCopy = await copyClone('copy-warm');
    await afterCopy('copy-warm', warmCopy);
    if (warmCopy.state !== 'succeeded') throw new Error(`copy-fallback clone copy-warm ended ${warmCopy.state}`);
    const idleBackToBack = await phase('backToBack', async () => undefined, plan.idleProbes);
    const idlePaced = await phase('paced', async () => undefined, plan.idleProbes);
    const reflinkAloneLatencies: number[] = [];
    const reflinkAlone = await phase('paced', (done) => reflinkLoad(done, plan.probeClones, 'probe', reflinkAloneLatencies));
    await syncFs(xfs.mountPoint);
    let copyAlone: CopyRun | undefined;
    await dropFileCache(slowFile);
    const copyAlonePhase = await phase('paced', async () => { copyAlone = await copyClone('copy-alone'); });
    await afterCopy('copy-alone', copyAlone!);
    const besideB2b = await copyBesideClones('backToBack');
    const besidePaced = await copyBesideClones('paced');
    for (const [name, run] of [['alone', copyAlone!], ['beside (back-to-back probes)', besideB2b.copy], ['beside (paced probes)', besidePaced.copy]] as const) {
      if (run.state !== 'succeeded') throw new Error(`copy-fallback clone ${name} ended ${run.state}`);
    }

    await rss.sample();
    rss.stop();
    const hwm = await rss.highWaterBytes();
    const peakRss = Math.max(rss.peakBytes, hwm ?? 0);
    const totalSeconds = msSince(started) / 1000;
    const loadAfter = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');

    // Goals.
    const inAgentRuns = [besideB2b.phase.agentLoop?.p99, besidePaced.phase.agentLoop?.p99].filter((x): x is number => x !== undefined);
    const inAgent = inAgentRuns.length > 0 ? Math.max(...inAgentRuns) : undefined;
    const backToBack = besideB2b.phase.backToBack!.p99;
    const paced = besidePaced.phase.paced!.p99;
    const p50Goal = (c: number, r: Record<string, SideResult>): Verdict => atMost(`clone p50 c=${c} agent/floor`, r.agent!.latency.p50 / r.floor!.latency.p50, 'x', 2);
    const p50C1 = p50Goal(1, c1);
    const p50C8 = p50Goal(8, c8);
    const throughputC8 = atLeast('clones/s c=8 agent/floor', c8.agent!.clonesPerSecond / c8.floor!.clonesPerSecond, 'x', 1);
    const mainThreadCpuC8 = atMost('agent main-thread CPU per clone c=8', c8.agent!.agentMainThreadCpuMsPerClone, 'ms', 0.5);
    const rssGoal = below('agent peak RSS', peakRss / MiB, 'MiB', 120);
    const loopBackToBack = below('loop delay p99 beside copy: GET back to back', backToBack, 'ms', 20);
    const loopPaced = below('loop delay p99 beside copy: GET paced', paced, 'ms', 20);
    const loopInAgent = below('loop delay p99 beside copy: in agent', inAgent ?? NaN, 'ms', 20);
    const verdicts = [p50C1, p50C8, throughputC8, mainThreadCpuC8, rssGoal, loopBackToBack, loopPaced, loopInAgent];

    // Report.
    const rows: string[][] = [];
    const latencyRows = (c: number, r: Record<string, SideResult>, p50: Verdict, throughput?: Verdict): void => {
      const a = r.agent!;
      const p = r.pool!;
      const f = r.floor!;
      rows.push([`clone p50 c=${c} (ms)`, f1(a.latency.p50), f1(p.latency.p50), f1(f.latency.p50), p50.figure.toFixed(2), p50.goal, metText(p50.met)]);
      rows.push([`clone p99 c=${c} (ms)`, f1(a.latency.p99), f1(p.latency.p99), f1(f.latency.p99), (a.latency.p99 / f.latency.p99).toFixed(2), '', '']);
      rows.push([`clones/s c=${c}`, a.clonesPerSecond.toFixed(1), p.clonesPerSecond.toFixed(1), f.clonesPerSecond.toFixed(1), (a.clonesPerSecond / f.clonesPerSecond).toFixed(2),
        throughput?.goal ?? '', throughput ? metText(throughput.met) : '']);
    };
    latencyRows(1, c1, p50C1);
    latencyRows(8, c8, p50C8, throughputC8);
    rows.push(['agent main-thread CPU per clone c=8 (ms)', f1(mainThreadCpuC8.figure), '', '', '', mainThreadCpuC8.goal, metText(mainThreadCpuC8.met)]);
    rows.push(['agent peak RSS (MiB)', (peakRss / MiB).toFixed(1), '', '', '', rssGoal.goal, metText(rssGoal.met)]);
    rows.push(['loop delay p99 beside copy: GET b2b (ms) [1]', f1(backToBack), '', '', '', loopBackToBack.goal, metText(loopBackToBack.met)]);
    rows.push(['loop delay p99 beside copy: GET paced (ms) [2]', f1(paced), '', '', '', loopPaced.goal, metText(loopPaced.met)]);
    rows.push(['loop delay p99 beside copy: in agent (ms) [3]', inAgent === undefined ? 'n/a' : f1(inAgent), '', '', '', loopInAgent.goal, inAgent === undefined ? '-' : metText(loopInAgent.met)]);
    const header = ['measure', 'agent', 'pool.clone', 'floor', 'agent/floor', 'goal', 'result'];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
    const copyLabel = `${plan.copyBytes / GiB} GiB copy-fallback clone (${copyDataBytes / GiB} GiB data) on ext4`;
    console.log(`\nclone round trip on XFS (${plan.sourceBytes / GiB} GiB source, ${srcExtents} extents); ${plan.clonesC1} clones per side at c=1, `
      + `${plan.clonesC8} at c=8, in ${plan.rounds} rounds, sides alternating`);
    console.log('agent = PUT /v1/volumes/{id} over the socket (keep-alive); pool.clone = FilePool.clone in this process (no HTTP, no catalog);');
    console.log('floor = addon in this process: open O_EXCL, FICLONE, fsync, close, rename, directory fsync');
    console.log(line(header));
    console.log(line(widths.map((w) => '-'.repeat(w))));
    for (const r of rows) console.log(line(r));
    console.log(`beside copy = while a ${copyLabel} runs beside reflink clones at c=8 (each probe method in a run of its own).`);
    console.log('[1] GET /v1/version round trips, back to back: an upper bound of the delay each probe met, but the p99 weights samples,');
    console.log('    not time (thousands of fast probes between two stalls dilute them), and the probing itself loads both processes.');
    console.log(`[2] GET /v1/version due every ${PROBE_INTERVAL_MS} ms, each timed from when it was due (a stall counts for every probe it delays):`);
    console.log('    time-weighted, bounds what a request arriving at a random moment waits (plus HTTP handling and this process\'s delay).');
    console.log(`[3] monitorEventLoopDelay inside the agent (preloaded by this bench with node --import; ${RESOLUTION_MS} ms resolution, excess shown);`);
    console.log('    the higher of the two beside-copy runs.');

    const cols = ['probes running ...', 'n', 'p50', 'p99', 'max', 'agent p99', 'agent max', 'bench p99', ''];
    const cw = [40, 7, 7, 7, 8, 10, 10, 10, 3];
    const cl = (cells: string[]): string => cells.map((c, i) => (i === 0 ? `  ${c.padEnd(cw[i]!)}` : c.padStart(cw[i]!))).join('');
    console.log('\nevent-loop probes, ms (GET /v1/version latency; agent = in-agent histogram; bench = this process\'s own loop delay)');
    console.log(cl(cols));
    const ph = (name: string, p: ProbePhase, extra = ''): void => {
      const l = (p.backToBack ?? p.paced)!;
      console.log(cl([name, String(l.n), f1(l.p50), f1(l.p99), f1(l.max),
        p.agentLoop ? f1(p.agentLoop.p99) : 'n/a', p.agentLoop ? f1(p.agentLoop.max) : 'n/a', f1(p.benchLoop.p99), '']) + extra);
    };
    const cloneNote = (l: Latency): string => `${l.n} clones p50 ${f1(l.p50)} p99 ${f1(l.p99)} ms`;
    const ra = latency(reflinkAloneLatencies);
    ph('b2b:   idle', idleBackToBack);
    ph('paced: idle', idlePaced);
    ph('paced: beside reflink clones c=8', reflinkAlone, cloneNote(ra));
    ph('paced: beside the copy alone', copyAlonePhase, `copy ${(copyAlone!.ms / 1000).toFixed(1)} s`);
    ph('b2b:   beside copy + reflink clones c=8', besideB2b.phase, `copy ${(besideB2b.copy.ms / 1000).toFixed(1)} s; ${cloneNote(besideB2b.clones)}`);
    ph('paced: beside copy + reflink clones c=8', besidePaced.phase, `copy ${(besidePaced.copy.ms / 1000).toFixed(1)} s; ${cloneNote(besidePaced.clones)}`);
    const mibs = (ms: number): string => ((copyDataBytes / MiB) / (ms / 1000)).toFixed(0);
    console.log(`\ncopy fallback (${copyAlone!.method}), PUT to operation end (data fsync'd), data MiB/s: alone ${(copyAlone!.ms / 1000).toFixed(2)} s (${mibs(copyAlone!.ms)}), `
      + `beside reflink clones ${(besideB2b.copy.ms / 1000).toFixed(2)} s (${mibs(besideB2b.copy.ms)}) and ${(besidePaced.copy.ms / 1000).toFixed(2)} s (${mibs(besidePaced.copy.ms)}); `
      + `untimed first copy ${(warmCopy.ms / 1000).toFixed(2)} s`);
    const cpuLine = (r: SideResult): string => `agent process ${f1(r.agentCpuMsPerClone)} (main thread ${f1(r.agentMainThreadCpuMsPerClone)}), bench process ${f1(r.benchCpuMsPerClone)}`;
    console.log(`CPU ms per clone (user+sys, syscalls included), agent side: c=1 ${cpuLine(c1.agent!)}; c=8 ${cpuLine(c8.agent!)}`);
    console.log(`  in this process: pool.clone c=1 ${f1(c1.pool!.benchCpuMsPerClone)}, c=8 ${f1(c8.pool!.benchCpuMsPerClone)}; floor c=1 ${f1(c1.floor!.benchCpuMsPerClone)}, c=8 ${f1(c8.floor!.benchCpuMsPerClone)}`);
    console.log(`catalog-like commit (SQLite WAL, synchronous=FULL, catalog's filesystem, agent idle), ms: p50 ${f1(commit.p50)}, p99 ${f1(commit.p99)}`);
    const stepLine = Object.entries(floorSteps).map(([k, v]) => `${k} ${f1(latency(v).p50)}`).join(', ');
    console.log(`floor steps at c=1, p50 ms: ${stepLine}`);
    console.log(`agent RSS: ${(startRss / MiB).toFixed(1)} MiB after start, peak sampled ${(rss.peakBytes / MiB).toFixed(1)} MiB (${rss.samples} samples), `
      + `VmHWM ${hwm === undefined ? 'n/a' : (hwm / MiB).toFixed(1)} MiB`);
    console.log(`total ${totalSeconds.toFixed(0)} s; load average before ${loadBefore}, after ${loadAfter} (other work on the host skews every figure)`);

    const json = {
      bench: 'api', quick, plan,
      source: { sizeBytes: plan.sourceBytes, extents: srcExtents },
      c1, c8,
      goals: {
        p50RatioC1: p50C1.figure,
        p50RatioC8: p50C8.figure,
        throughputRatioC8: throughputC8.figure,
        peakRssBytes: peakRss,
        loopDelayP99BackToBackMs: backToBack,
        loopDelayP99PacedMs: paced,
        loopDelayP99InAgentMs: inAgent ?? null,
        agentMainThreadCpuMsPerCloneC8: mainThreadCpuC8.figure,
        met: {
          p50C1: p50C1.met,
          p50C8: p50C8.met,
          throughputC8: throughputC8.met,
          mainThreadCpuC8: mainThreadCpuC8.met,
          rss: rssGoal.met,
          loopDelayBackToBack: loopBackToBack.met,
          loopDelayPaced: loopPaced.met,
          loopDelayInAgent: inAgent === undefined ? null : loopInAgent.met,
        },
      },
      verdicts,
      catalogCommitMs: commit,
      floorStepsP50Ms: Object.fromEntries(Object.entries(floorSteps).map(([k, v]) => [k, latency(v).p50])),
      rss: { startBytes: startRss, peakSampledBytes: rss.peakBytes, samples: rss.samples, vmHwmBytes: hwm ?? null },
      probes: {
        idleBackToBack, idlePaced,
        reflinkAlone: { ...reflinkAlone, clones: ra },
        copyAlone: copyAlonePhase,
        copyBesideReflinksBackToBack: { ...besideB2b.phase, clones: besideB2b.clones },
        copyBesideReflinksPaced: { ...besidePaced.phase, clones: besidePaced.clones },
      },
      copy: { sizeBytes: plan.copyBytes, dataBytes: copyDataBytes, method: copyAlone!.method, aloneMs: copyAlone!.ms, besideMs: [besideB2b.copy.ms, besidePaced.copy.ms], firstUntimedMs: warmCopy.ms },
      totalSeconds, loadAverage: { before: loadBefore, after: loadAfter },
    };
    console.log(JSON.stringify(json));
    return 0;
  });
}
