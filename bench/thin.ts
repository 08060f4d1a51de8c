// Thin-pool clone benchmark (needs root and the VM lane: qemu, Debian's
// kernel; and lvm2). The host kernel has no device-mapper, so everything runs
// in one VM (test/helpers/vm.ts) with four virtio disks: vda (data) and vdb
// (metadata) for volagentd's thin pool, vdc for an LVM volume group holding a
// thin pool of the same data size and block size (64 KiB).
// In the guest, on an origin of 1 GiB with 16 MiB written:
//  1. volagentd: PUT /v1/volumes/{id} {source: {volume: origin}} round trips
//     (create_snap with the active origin suspended, the new device
//     activated, the catalog committed), N sequential, then N with 8 in flight.
//     For attribution, the pool layer alone: ThinPool.clone in this process
//     on the agent's catalog and pool, the agent stopped (the ledger's
//     commits, the pool messages, the activation; no HTTP, no volume rows).
//  2. The raw floor: the addon alone, no agent: suspend the origin,
//     `create_snap`, resume, in a loop (sequential: the kernel serializes
//     pool messages anyway, so 8 in flight cannot go faster). And the floor
//     of a clone usable at once, as the agent's is: the same, then the new
//     device activated (DM_DEV_CREATE, DM_TABLE_LOAD, resume) and its node made.
//  3. `lvcreate -s VG/origin` (a thin snapshot; lvm2 leaves it inactive:
//     activation skip), N sequential, then N with 8 processes in flight.
// Goals: agent >= 5x faster than lvcreate -s; agent p50 <= 2x the floor of a
// clone usable at once (the raw floor alone is printed for attribution).
// Under TCG (no KVM here) absolute times mean little: the ratios are the
// result. Prints a table and one JSON line; exit 0 whether goals are met or not.
// `--quick`: N = 20 instead of 100.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { Agent as HttpAgent } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

import { Catalog } from '../src/catalog/catalog.js';
import { CatalogPoolLedger } from '../src/catalog/pool-ledger.js';
import { native } from '../src/native/binding.js';
import { ThinPool } from '../src/pools/thin/thin-pool.js';
import type { DeviceNumber } from '../src/devices/dm-thin.js';
import { thinPoolMessage, thinTarget } from '../src/devices/dm-thin.js';
import { runInVm, scratchDisks, vmLaneAvailable } from '../test/helpers/vm.js';
import type { Latency } from './lib.js';
import { atLeast, atMost, call, expectStatus, f1, GiB, goalNote, latency, launchBenchAgent, MiB, msSince, now, runBench, timedConcurrent, writeHead } from './lib.js';

const execFileAsync = promisify(execFile);
const POOL = 'bench0';
const DEVICE_DIR = '/dev/volagent-bench';
const CONCURRENCY = 8;
const DATA_BYTES = 2 * GiB;
const ORIGIN_BYTES = GiB;
const WRITTEN_BYTES = 16 * MiB;
/** lvm2 without udev (the guest runs none): it makes its own nodes and waits for nothing. */
const LVM_CONFIG = 'activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } devices { obtain_device_list_from_udev = 0 } global { locking_dir = "/run/lock/lvm" }';

interface Side { sequential: Latency; concurrent: Latency; concurrentPerSecond: number }

interface GuestResult {
  n: number;
  agent: Side;
  poolLayer: { sequential: Latency; perCloneMs: Record<string, number> };
  raw: { sequential: Latency; perSecond: number };
  activated: { sequential: Latency; perSecond: number };
  lvcreate: Side;
}

/** Wraps the named async methods of `target` to add up their time; `restore` puts them back. */
function timeCalls(target: object, names: string[], totals: Record<string, number>): () => void {
  const methods = target as Record<string, (...args: unknown[]) => Promise<unknown>>;
  const originals = names.map((name) => [name, methods[name]!] as const);
  for (const [name, original] of originals) {
    methods[name] = async (...args: unknown[]) => {
      const start = now();
      try {
        return await original.apply(target, args);
      } finally {
        totals[name] = (totals[name] ?? 0) + msSince(start);
      }
    };
  }
  return () => { for (const [name, original] of originals) methods[name] = original; };
}

async function lvm(args: string[]): Promise<void> {
  await execFileAsync(args[0]!, ['--config', LVM_CONFIG, ...args.slice(1)], { env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' } });
}

/** The guest side: all three measurements, written to $VOLAGENT_VM_OUT/thin-bench.json. */
async function guest(quick: boolean): Promise<number> {
  const n = quick ? 20 : 100;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thin-bench-'));
  const agent = await launchBenchAgent(dir, [{
    name: POOL, backend: 'thin', dataDevice: '/dev/vda', metadataDevice: '/dev/vdb', deviceDir: DEVICE_DIR, blockSize: '64KiB', minFree: '0%',
  }], { startTimeoutMs: 180_000 });
  const keepAlive = new HttpAgent({ keepAlive: true, maxSockets: CONCURRENCY });
  let agentSide: Side;
  try {
    expectStatus(await call(agent.socket, keepAlive, 'PUT', '/v1/volumes/origin', { tenant: 't', sizeBytes: ORIGIN_BYTES }), 201, 'origin');
    await writeHead(path.join(DEVICE_DIR, POOL, 'origin'), WRITTEN_BYTES);
    const clone = async (id: string): Promise<number> => {
      const reply = await call(agent.socket, keepAlive, 'PUT', `/v1/volumes/${id}`, { tenant: 't', source: { volume: 'origin' } });
      expectStatus(reply, 201, `clone ${id}`);
      return reply.ms;
    };
    const sequential: number[] = [];
    for (let i = 0; i < n; i++) sequential.push(await clone(`seq-${i}`));
    const concurrent = await timedConcurrent(n, CONCURRENCY, (i) => clone(`conc-${i}`));
    agentSide = { sequential: latency(sequential), concurrent: latency(concurrent.samples), concurrentPerSecond: concurrent.perSecond };
  } finally {
    keepAlive.destroy();
    await agent.stop();
  }

  // The pool layer in this process, on the agent's catalog (the agent stopped; its devices stay active).
  const catalog = Catalog.open(path.join(dir, 'catalog.db'));
  const ledger = new CatalogPoolLedger(catalog);
  const pool = new ThinPool({
    name: POOL, dataDevice: '/dev/vda', metadataDevice: '/dev/vdb', blockSizeBytes: 64 * 1024, lowWaterPercent: 10, minFreePercent: 0,
    errorIfNoSpace: true, deviceDir: DEVICE_DIR, ledger,
  });
  const poolLayer: number[] = [];
  const totals: Record<string, number> = {};
  try {
    await pool.open();
    const restore = [
      timeCalls(native, ['dmSuspend', 'dmResume', 'dmMessage', 'dmCreate', 'dmLoad', 'dmTable', 'dmInfo', 'mknodBlock'], totals),
      timeCalls(ledger, ['begin', 'commit'], totals),
    ];
    for (let i = 0; i < n; i++) {
      const start = now();
      await pool.clone('origin', `layer-${i}`);
      poolLayer.push(msSince(start));
    }
    for (const undo of restore) undo();
  } finally {
    await pool.close();
    catalog.close();
  }
  const perCloneMs = Object.fromEntries(Object.entries(totals).map(([name, ms]) => [name, ms / n]));
  perCloneMs.other = poolLayer.reduce((a, b) => a + b, 0) / n - Object.values(perCloneMs).reduce((a, b) => a + b, 0);

  // The raw floor on the same pool, the agent stopped (its devices stay active): origin is thin id 0.
  const poolDm = `volagent-${POOL}-pool`;
  const originDm = `volagent-${POOL}-0`;
  const raw: number[] = [];
  const rawStart = now();
  for (let i = 0; i < n; i++) {
    const start = now();
    await native.dmSuspend(originDm);
    await native.dmMessage(poolDm, 0, thinPoolMessage.createSnap(1_000_000 + i, 0));
    await native.dmResume(originDm);
    raw.push(msSince(start));
  }
  const rawPerSecond = n / (msSince(rawStart) / 1000);

  // The floor of a clone usable at once, as the agent's is: the same three calls, then the new
  // thin device activated (DM_DEV_CREATE, DM_TABLE_LOAD of its thin target, DM_DEV_SUSPEND to
  // resume it) and its block node made.
  const poolInfo = await native.dmInfo(poolDm);
  const poolNumber: DeviceNumber = `${poolInfo.major}:${poolInfo.minor}`;
  const floorDir = await mkdtemp(path.join(os.tmpdir(), 'thin-floor-'));
  const activated: number[] = [];
  const activatedStart = now();
  for (let i = 0; i < n; i++) {
    const thinId = 2_000_000 + i;
    const name = `floor-${i}`;
    const start = now();
    await native.dmSuspend(originDm);
    await native.dmMessage(poolDm, 0, thinPoolMessage.createSnap(thinId, 0));
    await native.dmResume(originDm);
    await native.dmCreate(name, `floor-${POOL}-${thinId}`);
    await native.dmLoad(name, [thinTarget(poolNumber, thinId, ORIGIN_BYTES / 512)], false);
    const info = await native.dmResume(name);
    await native.mknodBlock(path.join(floorDir, name), info.major, info.minor, 0o600);
    activated.push(msSince(start));
  }
  const activatedPerSecond = n / (msSince(activatedStart) / 1000);

  // lvm2 on vdc: a thin pool of the same data size and block size, a 1 GiB thin origin with 16 MiB written.
  await mkdir('/run/lock/lvm', { recursive: true });
  await lvm(['pvcreate', '-ff', '-y', '/dev/vdc']);
  await lvm(['vgcreate', 'vgbench', '/dev/vdc']);
  await lvm(['lvcreate', '--type', 'thin-pool', '-L', `${DATA_BYTES / MiB}m`, '--poolmetadatasize', '64m', '-c', '64k', '-Zn', '-n', 'pool', 'vgbench']);
  await lvm(['lvcreate', '-V', `${ORIGIN_BYTES / MiB}m`, '-T', 'vgbench/pool', '-n', 'origin']);
  await writeHead('/dev/mapper/vgbench-origin', WRITTEN_BYTES);
  const lvcreate = async (name: string): Promise<number> => {
    const start = now();
    await lvm(['lvcreate', '-s', 'vgbench/origin', '-n', name]);
    return msSince(start);
  };
  const lvSequential: number[] = [];
  for (let i = 0; i < n; i++) lvSequential.push(await lvcreate(`seq${i}`));
  const lvConcurrent = await timedConcurrent(n, CONCURRENCY, (i) => lvcreate(`conc${i}`));

  const result: GuestResult = {
    n,
    agent: agentSide,
    poolLayer: { sequential: latency(poolLayer), perCloneMs },
    raw: { sequential: latency(raw), perSecond: rawPerSecond },
    activated: { sequential: latency(activated), perSecond: activatedPerSecond },
    lvcreate: { sequential: latency(lvSequential), concurrent: latency(lvConcurrent.samples), concurrentPerSecond: lvConcurrent.perSecond },
  };
  await writeFile(path.join(process.env.VOLAGENT_VM_OUT ?? dir, 'thin-bench.json'), JSON.stringify(result));
  return 0;
}

function report(result: GuestResult, quick: boolean): void {
  const { agent, poolLayer, raw, activated, lvcreate } = result;
  const row = (label: string, l: Latency, perSecond: number): string =>
    `${label.padEnd(34)} ${f1(l.p50).padStart(8)} ${f1(l.p99).padStart(8)} ${f1(l.mean).padStart(8)} ${f1(perSecond).padStart(10)}`;
  const seqRate = (l: Latency): number => 1000 / l.mean;
  console.log(`thin clone latency in the VM (TCG), ms; N = ${result.n} per row`);
  console.log(`${''.padEnd(34)} ${'p50'.padStart(8)} ${'p99'.padStart(8)} ${'mean'.padStart(8)} ${'clones/s'.padStart(10)}`);
  console.log(row('volagentd, sequential', agent.sequential, seqRate(agent.sequential)));
  console.log(row(`volagentd, ${CONCURRENCY} in flight`, agent.concurrent, agent.concurrentPerSecond));
  console.log(row('pool layer (ThinPool.clone)', poolLayer.sequential, seqRate(poolLayer.sequential)));
  console.log(row('raw suspend/create_snap/resume', raw.sequential, raw.perSecond));
  console.log(row('raw, + create/load/resume/mknod', activated.sequential, activated.perSecond));
  console.log(row('lvcreate -s, sequential', lvcreate.sequential, seqRate(lvcreate.sequential)));
  console.log(row(`lvcreate -s, ${CONCURRENCY} in flight`, lvcreate.concurrent, lvcreate.concurrentPerSecond));
  console.log(`pool layer per clone, ms: ${Object.entries(poolLayer.perCloneMs).map(([name, ms]) => `${name} ${f1(ms)}`).join(', ')} (dmMessage: create_snap + set_transaction_id; begin/commit: the ledger's catalog writes)`);
  const vsLvm = lvcreate.sequential.p50 / agent.sequential.p50;
  const vsLvmConcurrent = agent.concurrentPerSecond / lvcreate.concurrentPerSecond;
  const vsRaw = agent.sequential.p50 / raw.sequential.p50;
  const vsActivated = agent.sequential.p50 / activated.sequential.p50;
  const sequential = atLeast('speed-up vs lvcreate -s, p50 sequential', vsLvm, 'x', 5);
  const concurrent = atLeast(`speed-up vs lvcreate -s, clones/s ${CONCURRENCY} in flight`, vsLvmConcurrent, 'x', 5);
  const activatedFloor = atMost('p50 vs the floor of a clone usable at once', vsActivated, 'x', 2);
  console.log(`agent vs lvcreate -s: ${f1(vsLvm)}x faster (p50, sequential; ${goalNote(sequential)}), `
    + `${f1(vsLvmConcurrent)}x the clones/s at ${CONCURRENCY} in flight (${goalNote(concurrent)})`);
  console.log(`agent vs raw floor: ${f1(vsRaw)}x the floor's p50 (for attribution)`);
  console.log(`agent vs the floor of a clone usable at once (raw + create/load/resume/mknod): ${f1(vsActivated)}x its p50; ${goalNote(activatedFloor)}`);
  console.log(JSON.stringify({ bench: 'thin', quick, ...result, ratios: { vsLvm, vsLvmConcurrent, vsRaw, vsActivated }, verdicts: [sequential, concurrent, activatedFloor] }));
}

export function main(args: string[]): Promise<number> {
  const quick = args.includes('--quick');
  if (args.includes('--guest')) return guest(quick);
  return runBench('thin', 'qemu for the VM lane, and lvm2', import.meta.url, args, async () => {
    const lane = vmLaneAvailable();
    if (!lane.ok) throw new Error(`the VM lane is unavailable: ${lane.reason}`);
    await execFileAsync('lvcreate', ['--version']).catch(() => { throw new Error('lvm2 is not installed (apt-get install lvm2)'); });
    const cleanups: Array<() => Promise<void>> = [];
    try {
      const dataMiB = DATA_BYTES / MiB;
      const disks = await scratchDisks((fn) => cleanups.push(fn), 'thin-bench', [dataMiB, 64, dataMiB + 256]);
      const script = `node ${path.relative(process.cwd(), new URL(import.meta.url).pathname)} --guest${quick ? ' --quick' : ''}`;
      const result = await runInVm({ script, disks, memoryMiB: 1536, timeoutMs: 1_800_000, env: { UV_THREADPOOL_SIZE: '16' } });
      const file = result.files['thin-bench.json'];
      if (result.exitCode !== 0 || !file) throw new Error(`the guest failed (exit ${result.exitCode}): ${result.stderr.slice(-4000)}${result.stdout.slice(-2000)}`);
      report(JSON.parse(file.toString()) as GuestResult, quick);
      return 0;
    } finally {
      for (const cleanup of cleanups) await cleanup();
    }
  });
}

// Run directly in the guest (`node dist/bench/thin.js --guest`), not through scripts/bench.mjs.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) process.exitCode = await main(process.argv.slice(2));
