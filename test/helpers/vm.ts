// The VM test lane: boots Debian's kernel (which has device-mapper, unlike the
// host kernel) under qemu with a busybox-static initramfs built on the fly,
// mounts the host root read-only over 9p with a tmpfs overlay, chroots into it
// and runs a shell script there with cwd = the repo root. The guest therefore
// runs the host's own `node` and the repo's built `dist/` and addon.
//
// Host requirements (checked by vmLaneAvailable()): root, Debian packages
// `qemu-system-x86` (qemu-system-x86_64), `linux-image-amd64` (a
// /boot/vmlinuz-* with /lib/modules/<ver> holding dm-thin-pool) and
// `busybox-static`; `util-linux` (setpriv) is used when present so that qemu
// dies with its parent. `xz-utils`/`zstd` are needed only if the kernel's
// modules are compressed (Debian 12's are not). The initramfs (newc cpio) is
// written here in TypeScript: no `cpio` needed.
//
// A lane test (host side) looks like:
//   const lane = vmLaneAvailable();
//   if (!lane.ok) t.plan(0, `VM lane unavailable: ${lane.reason}`);
//   else { t.setTimeout(240_000); t.test('...', async (t) => {
//     const r = await runInVm({ script: 'node dist/test/vm/guest/x.js', disks: [data, meta] });
//     t.equal(r.exitCode, 0, 'guest script', { stdout: r.stdout, stderr: r.stderr }); }); }
// Booting costs ~5-6 s under TCG and each guest `node` that imports tap ~4-6 s
// more, so batch work per boot (runGuestTests, or one guest script doing many checks).
//
// Environment knobs:
//   VOLAGENT_VM_CACHE    where built initramfs images are cached (default: $TMPDIR/volagent-vm-cache)
//   VOLAGENT_VM_KERNEL   kernel version (e.g. 6.1.0-56-amd64) or path to a vmlinuz
//   VOLAGENT_VM_ACCEL    auto (default) | kvm | tcg
//   VOLAGENT_VM_VERBOSE  1: copy the guest console to stderr as it arrives
//   VOLAGENT_VM_KEEP     1: keep the per-VM share directory (job, outputs, console.log)
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  accessSync,
  closeSync,
  constants as fsConstants,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile, open as openFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import type { Test } from 'tap';

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

export type VmLaneStatus =
  | { ok: true; kernel: string; vmlinuz: string; qemu: string; busybox: string }
  | { ok: false; reason: string };

export interface VmDisk {
  /** Host path of a raw image; it appears in the guest as /dev/vda, /dev/vdb, ... in list order. */
  path: string;
  readOnly?: boolean;
  /** Shown in the guest as /sys/block/vdX/serial (max 20 chars). */
  serial?: string;
}

export interface RunInVmOptions {
  /** Shell script (run by /bin/sh of the host root, inside the guest chroot, cwd = `cwd`). */
  script: string;
  /** Raw disk images attached as virtio-blk, in order: /dev/vda, /dev/vdb, ... */
  disks?: Array<string | VmDisk>;
  /** Whole VM lifetime, boot included. Default 120 000. */
  timeoutMs?: number;
  /** Default 1024. */
  memoryMiB?: number;
  /** Guest vCPUs. Default 1: under TCG on 2 host cores a second vCPU starves qemu's 9p I/O thread (tap import: 17 s vs 6 s). */
  cpus?: number;
  /** Guest working directory. Default: the repo root (same absolute path as on the host). */
  cwd?: string;
  /** Extra environment for the script (CI is passed through from the host). */
  env?: Record<string, string>;
  /** Extra kernel modules (names as for modprobe) to load at boot, with their dependencies. */
  modules?: string[];
  /** Extra kernel command line words. */
  kernelArgs?: string[];
  /**
   * `chroot` (default): the busybox init runs the script in a chroot.
   * `systemd`: the host root's systemd is PID 1 and runs the script as a
   * oneshot service (scripts/vm/init.sh), for tests of systemd units.
   */
  init?: 'chroot' | 'systemd';
  /** Abort = kill the VM and reject. */
  signal?: AbortSignal;
}

export interface VmResult {
  /** Exit status of the script. */
  exitCode: number;
  stdout: string;
  stderr: string;
  /** Guest serial console (kernel messages, init markers). */
  console: string;
  /** Every regular file the script wrote into $VOLAGENT_VM_OUT (relative path -> contents). */
  files: Record<string, Buffer>;
  /** qemu's pid (already dead when this resolves). */
  pid: number;
  accel: 'kvm' | 'tcg';
  /** Host wall-clock: spawn -> script start, script duration, spawn -> qemu exit. */
  timings: { bootMs: number; scriptMs: number; totalMs: number };
}

export class VmError extends Error {
  constructor(
    message: string,
    readonly console: string,
    readonly stdout = '',
    readonly stderr = '',
  ) {
    super(message);
    this.name = 'VmError';
  }
}

export interface GuestTestResult {
  /** As passed in (relative to cwd, or absolute). */
  file: string;
  /** node's exit status; 124 = killed by the per-file timeout; -1 = never ran. */
  exitCode: number;
  /** Combined stdout + stderr (TAP). */
  output: string;
  /** Guest-side duration. */
  durationMs: number;
}

export interface RunGuestTestsOptions extends Omit<RunInVmOptions, 'script'> {
  /** Shell run once before the files; a nonzero status makes runGuestTests reject. */
  setup?: string;
  /** Per file, guest side (coreutils `timeout`; exit 124 when hit). Default 120 000. */
  perFileTimeoutMs?: number;
  /** Extra node arguments before the file. */
  nodeArgs?: string[];
}

/**
 * Sparse disk images of the given sizes (MiB) in a fresh temporary
 * directory, removed by `teardown`; in order, they are the guest's vda, vdb, ...
 */
export async function scratchDisks(teardown: (fn: () => Promise<void>) => void, label: string, sizesMiB: number[]): Promise<string[]> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `volagent-${label}-`));
  teardown(() => rm(dir, { recursive: true, force: true }));
  return Promise.all(sizesMiB.map(async (mib, i) => {
    const file = path.join(dir, `disk${i}.img`);
    const handle = await openFile(file, 'w');
    await handle.truncate(mib * 1024 * 1024);
    await handle.close();
    return file;
  }));
}

/**
 * False when the VM lane can run here. Else it says why, plans the file as
 * empty with that reason (`npm test` under CI=true fails on it), and returns true.
 */
export function skipUnlessVmLane(t: { plan(n: number, comment?: string): void }): boolean {
  const lane = vmLaneAvailable();
  if (lane.ok) return false;
  console.log(`# VM lane unavailable: ${lane.reason}`);
  t.plan(0, `VM lane unavailable: ${lane.reason}`);
  return true;
}

/** True inside a guest started by runInVm (its scripts get VOLAGENT_IN_VM=1). */
export function inVmGuest(): boolean {
  return process.env.VOLAGENT_IN_VM === '1';
}

/** The repo root: the nearest ancestor of this file with package.json and scripts/vm/init.sh. */
export const repoRoot: string = findRepoRoot();

/** Directory for cached initramfs images. */
export function vmCacheDir(): string {
  return process.env.VOLAGENT_VM_CACHE || path.join(os.tmpdir(), 'volagent-vm-cache');
}

/** pids of qemu processes started by this process and not yet exited. */
export function liveVmPids(): number[] {
  return [...live.keys()];
}

let laneStatus: VmLaneStatus | undefined;

/** Whether this host can run the VM lane; `reason` says what is missing. Cached per process. */
export function vmLaneAvailable(): VmLaneStatus {
  laneStatus ??= probeLane();
  return laneStatus;
}

/**
 * Boots a VM, runs `opts.script` in it and returns its exit status and output.
 * Rejects with VmError when the guest never reports a status (boot failure,
 * crash, timeout, abort). The VM is always gone when this settles.
 */
export async function runInVm(opts: RunInVmOptions): Promise<VmResult> {
  const lane = vmLaneAvailable();
  if (!lane.ok) throw new Error(`VM lane unavailable: ${lane.reason}`);
  const initramfs = await buildInitramfs(lane.kernel, opts.modules ?? []);
  const accels = chooseAccels();
  let lastError: unknown;
  for (const accel of accels) {
    try {
      return await bootOnce(lane, initramfs, accel, opts);
    } catch (error) {
      lastError = error;
      if (error instanceof KvmStuckError) {
        markKvmUnusable(error.message);
        continue;
      }
      throw error;
    }
  }
  throw lastError;
}

/**
 * Runs several compiled test files (`node FILE`, e.g. tap files printing TAP)
 * in ONE boot, one after the other, and returns each file's exit status and
 * output. Rejects only if the VM fails or `setup` fails.
 */
export async function runGuestTests(
  files: string[],
  opts: RunGuestTestsOptions = {},
): Promise<{ results: GuestTestResult[]; vm: VmResult }> {
  const { setup, perFileTimeoutMs, nodeArgs: extraNodeArgs, ...vmOpts } = opts;
  const perFileS = Math.max(1, Math.ceil((perFileTimeoutMs ?? 120_000) / 1000));
  const nodeArgs = (extraNodeArgs ?? []).map(shQuote).join(' ');
  const lines = [
    'out="$VOLAGENT_VM_OUT/guest-tests"',
    'mkdir -p "$out"',
  ];
  if (setup) {
    lines.push(`(\n${setup}\n) || { rc=$?; echo "runGuestTests: setup failed with status $rc" >&2; exit 97; }`);
  }
  files.forEach((file, i) => {
    lines.push(
      `read t0 _ </proc/uptime`,
      `timeout -k 5 ${perFileS} node ${nodeArgs} ${shQuote(file)} >"$out/${i}.out" 2>&1 </dev/null`,
      `echo $? >"$out/${i}.rc"`,
      `read t1 _ </proc/uptime`,
      `echo "$t0 $t1" >"$out/${i}.time"`,
    );
  });
  const timeoutMs = vmOpts.timeoutMs ?? 60_000 + files.length * (perFileS + 5) * 1000;
  const vm = await runInVm({ ...vmOpts, timeoutMs, script: lines.join('\n') + '\n' });
  if (vm.exitCode === 97) {
    throw new VmError(`runGuestTests: setup failed\n${tail(vm.stdout + vm.stderr, 40)}`, vm.console, vm.stdout, vm.stderr);
  }
  const results = files.map((file, i): GuestTestResult => {
    const rc = vm.files[`guest-tests/${i}.rc`];
    const out = vm.files[`guest-tests/${i}.out`];
    const time = vm.files[`guest-tests/${i}.time`]?.toString().trim().split(/\s+/).map(Number);
    const durationMs = time && time.length === 2 ? Math.round(((time[1] ?? 0) - (time[0] ?? 0)) * 1000) : 0;
    return {
      file,
      exitCode: rc ? Number.parseInt(rc.toString().trim(), 10) : -1,
      output: out ? out.toString() : '',
      durationMs,
    };
  });
  return { results, vm };
}

// ---------------------------------------------------------------------------
// Host probing
// ---------------------------------------------------------------------------

const REQUIRED_MODULES = [
  'virtio_pci',
  '9pnet_virtio',
  '9p',
  'overlay',
  'virtio_blk',
  'virtio_rng',
  'crc32c_generic',
  'dm_mod',
  'dm_thin_pool',
];
const OPTIONAL_MODULES = ['crc32c_intel', 'dm_flakey', 'dm_snapshot', 'dm_zero', 'dm_delay', 'loop'];

interface KernelModules {
  dir: string;
  /** normalized name -> module path relative to dir, and its dependencies (paths) */
  dep: Map<string, { rel: string; deps: string[] }>;
  builtin: Set<string>;
  softdepPre: Map<string, string[]>;
  alias: Map<string, string[]>;
}

function normName(nameOrPath: string): string {
  return path.basename(nameOrPath).replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');
}

const moduleCache = new Map<string, KernelModules>();

function kernelModules(version: string): KernelModules {
  const cached = moduleCache.get(version);
  if (cached) return cached;
  const dir = path.join('/lib/modules', version);
  const dep = new Map<string, { rel: string; deps: string[] }>();
  for (const line of readFileSync(path.join(dir, 'modules.dep'), 'utf8').split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const rel = line.slice(0, colon).trim();
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean);
    dep.set(normName(rel), { rel, deps });
  }
  const builtin = new Set<string>();
  const builtinFile = path.join(dir, 'modules.builtin');
  if (existsSync(builtinFile)) {
    for (const line of readFileSync(builtinFile, 'utf8').split('\n')) if (line.trim()) builtin.add(normName(line.trim()));
  }
  const softdepPre = new Map<string, string[]>();
  const softdepFile = path.join(dir, 'modules.softdep');
  if (existsSync(softdepFile)) {
    for (const line of readFileSync(softdepFile, 'utf8').split('\n')) {
      const m = /^softdep\s+(\S+)\s+pre:\s*(.*?)(\s+post:.*)?$/.exec(line.trim());
      if (m && m[1] && m[2]) softdepPre.set(normName(m[1]), m[2].split(/\s+/).filter(Boolean));
    }
  }
  const alias = new Map<string, string[]>();
  const aliasFile = path.join(dir, 'modules.alias');
  if (existsSync(aliasFile)) {
    for (const line of readFileSync(aliasFile, 'utf8').split('\n')) {
      const m = /^alias\s+(\S+)\s+(\S+)$/.exec(line.trim());
      if (!m || !m[1] || !m[2] || m[1].includes('*')) continue;
      const list = alias.get(m[1]) ?? [];
      list.push(normName(m[2]));
      alias.set(m[1], list);
    }
  }
  const mods: KernelModules = { dir, dep, builtin, softdepPre, alias };
  moduleCache.set(version, mods);
  return mods;
}

function hasModule(mods: KernelModules, name: string): boolean {
  const n = normName(name);
  return mods.dep.has(n) || mods.builtin.has(n);
}

function versionKey(v: string): number[] {
  return (v.match(/\d+/g) ?? []).map(Number);
}

function compareVersions(a: string, b: string): number {
  const ka = versionKey(a);
  const kb = versionKey(b);
  for (let i = 0; i < Math.max(ka.length, kb.length); i++) {
    const d = (ka[i] ?? -1) - (kb[i] ?? -1);
    if (d !== 0) return d;
  }
  return 0;
}

function findKernel(): { version: string; vmlinuz: string } | { reason: string } {
  const wanted = process.env.VOLAGENT_VM_KERNEL;
  let candidates: Array<{ version: string; vmlinuz: string }>;
  if (wanted) {
    const vmlinuz = wanted.includes('/') ? wanted : `/boot/vmlinuz-${wanted}`;
    const version = path.basename(vmlinuz).replace(/^vmlinuz-/, '');
    candidates = [{ version, vmlinuz }];
  } else {
    let names: string[] = [];
    try {
      names = readdirSync('/boot').filter((n) => n.startsWith('vmlinuz-'));
    } catch {
      /* no /boot */
    }
    candidates = names
      .map((n) => ({ version: n.slice('vmlinuz-'.length), vmlinuz: path.join('/boot', n) }))
      .sort((a, b) => compareVersions(b.version, a.version));
  }
  if (candidates.length === 0) {
    return { reason: 'no /boot/vmlinuz-* (install Debian package linux-image-amd64)' };
  }
  const problems: string[] = [];
  for (const c of candidates) {
    try {
      accessSync(c.vmlinuz, fsConstants.R_OK);
    } catch {
      problems.push(`${c.vmlinuz} not readable`);
      continue;
    }
    let mods: KernelModules;
    try {
      mods = kernelModules(c.version);
    } catch {
      problems.push(`/lib/modules/${c.version}/modules.dep missing`);
      continue;
    }
    const missing = REQUIRED_MODULES.filter((m) => !hasModule(mods, m));
    if (missing.length) {
      problems.push(`kernel ${c.version} lacks modules ${missing.join(', ')}`);
      continue;
    }
    return c;
  }
  return { reason: `no usable kernel: ${problems.join('; ')}` };
}

/** The path of an executable `name` on PATH or in the usual bin and sbin directories, or undefined. */
export function which(name: string): string | undefined {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']);
  for (const d of dirs) {
    if (!d) continue;
    const p = path.join(d, name);
    try {
      accessSync(p, fsConstants.X_OK);
      if (statSync(p).isFile()) return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** An ELF executable with no PT_INTERP program header is statically linked. */
function isStaticElf(file: string): boolean {
  const fd = openSync(file, 'r');
  try {
    const hdr = Buffer.alloc(64);
    readSync(fd, hdr, 0, 64, 0);
    if (hdr.readUInt32BE(0) !== 0x7f454c46 || hdr[4] !== 2) return false; // ELF64 only
    const phoff = Number(hdr.readBigUInt64LE(32));
    const phentsize = hdr.readUInt16LE(54);
    const phnum = hdr.readUInt16LE(56);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === 3) return false;
    return true;
  } finally {
    closeSync(fd);
  }
}

function findBusybox(): string | undefined {
  for (const p of ['/bin/busybox', '/usr/bin/busybox', '/usr/local/bin/busybox', which('busybox')]) {
    if (!p) continue;
    try {
      if (statSync(p).isFile() && isStaticElf(p)) return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

function probeLane(): VmLaneStatus {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return { ok: false, reason: `VM lane needs linux/x64, this is ${process.platform}/${process.arch}` };
  }
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    return { ok: false, reason: 'VM lane needs root (reads /boot/vmlinuz-*, exports / over 9p)' };
  }
  const qemu = which('qemu-system-x86_64');
  if (!qemu) return { ok: false, reason: 'qemu-system-x86_64 not found (install Debian package qemu-system-x86)' };
  const kernel = findKernel();
  if ('reason' in kernel) return { ok: false, reason: kernel.reason };
  const busybox = findBusybox();
  if (!busybox) return { ok: false, reason: 'no statically linked busybox (install Debian package busybox-static)' };
  if (!existsSync(initTemplatePath())) return { ok: false, reason: `missing ${initTemplatePath()}` };
  return { ok: true, kernel: kernel.version, vmlinuz: kernel.vmlinuz, qemu, busybox };
}

function findRepoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'scripts', 'vm', 'init.sh'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
    dir = up;
  }
}

function initTemplatePath(): string {
  return path.join(repoRoot, 'scripts', 'vm', 'init.sh');
}

// ---------------------------------------------------------------------------
// Initramfs (newc cpio, written here)
// ---------------------------------------------------------------------------

const INITRAMFS_FORMAT = 1; // bump when the layout below changes

interface ModulePlan {
  /** paths relative to /lib/modules/<ver>, in load order */
  rel: string;
  optional: boolean;
}

function planModules(version: string, extra: string[]): ModulePlan[] {
  const mods = kernelModules(version);
  const order: ModulePlan[] = [];
  const seen = new Map<string, ModulePlan>();
  const visit = (name: string, optional: boolean, stack: string[]): void => {
    const n = normName(name);
    if (mods.builtin.has(n)) return;
    const entry = mods.dep.get(n);
    if (!entry) {
      const aliased = mods.alias.get(name);
      if (aliased) {
        for (const a of aliased) visit(a, true, stack);
        return;
      }
      if (optional) return;
      throw new Error(`kernel ${version}: module ${name} not found in ${mods.dir}/modules.dep`);
    }
    const prev = seen.get(n);
    if (prev) {
      if (!optional) prev.optional = false;
      return;
    }
    if (stack.includes(n)) return;
    for (const pre of mods.softdepPre.get(n) ?? []) visit(pre, true, [...stack, n]);
    // modules.dep lists dependencies nearest-last; load the deepest first.
    for (const d of [...entry.deps].reverse()) visit(d, optional, [...stack, n]);
    const plan = { rel: entry.rel, optional };
    seen.set(n, plan);
    order.push(plan);
  };
  for (const m of REQUIRED_MODULES) visit(m, false, []);
  for (const m of OPTIONAL_MODULES) visit(m, true, []);
  for (const m of extra) visit(m, false, []);
  return order;
}

function readModule(absPath: string): Buffer {
  if (absPath.endsWith('.ko')) return readFileSync(absPath);
  if (absPath.endsWith('.ko.gz')) return gunzipSync(readFileSync(absPath));
  const tool = absPath.endsWith('.ko.xz') ? ['xz', '-dc'] : absPath.endsWith('.ko.zst') ? ['zstd', '-dcq'] : undefined;
  if (!tool) throw new Error(`unknown module format: ${absPath}`);
  const r = spawnSync(tool[0]!, [...tool.slice(1), absPath], { maxBuffer: 256 * 1024 * 1024 });
  if (r.status !== 0 || !r.stdout) {
    throw new Error(`${tool[0]} failed on ${absPath} (install Debian package ${tool[0] === 'xz' ? 'xz-utils' : 'zstd'}): ${r.stderr?.toString() ?? r.error}`);
  }
  return r.stdout;
}

class CpioWriter {
  private readonly chunks: Buffer[] = [];
  private ino = 1;
  private size = 0;

  dir(name: string): void {
    this.entry(name, 0o040755, Buffer.alloc(0));
  }

  file(name: string, data: Buffer, mode = 0o644): void {
    this.entry(name, 0o100000 | mode, data);
  }

  charDev(name: string, major: number, minor: number, mode = 0o600): void {
    this.entry(name, 0o020000 | mode, Buffer.alloc(0), major, minor);
  }

  finish(): Buffer {
    this.entry('TRAILER!!!', 0, Buffer.alloc(0), 0, 0, 0);
    const pad = (512 - (this.size % 512)) % 512;
    if (pad) this.push(Buffer.alloc(pad));
    return Buffer.concat(this.chunks);
  }

  private push(b: Buffer): void {
    this.chunks.push(b);
    this.size += b.length;
  }

  private entry(name: string, mode: number, data: Buffer, rmaj = 0, rmin = 0, ino = this.ino++): void {
    const nameBuf = Buffer.from(`${name}\0`);
    const hex = (n: number): string => n.toString(16).padStart(8, '0');
    const nlink = (mode & 0o170000) === 0o040000 ? 2 : 1;
    const fields = [ino, mode, 0, 0, name === 'TRAILER!!!' ? 1 : nlink, 0, data.length, 0, 0, rmaj, rmin, nameBuf.length, 0];
    const header = Buffer.from(`070701${fields.map(hex).join('')}`, 'ascii');
    this.push(header);
    this.push(nameBuf);
    const headPad = (4 - ((header.length + nameBuf.length) % 4)) % 4;
    if (headPad) this.push(Buffer.alloc(headPad));
    if (data.length) {
      this.push(data);
      const dataPad = (4 - (data.length % 4)) % 4;
      if (dataPad) this.push(Buffer.alloc(dataPad));
    }
  }
}

/**
 * Builds (or reuses from vmCacheDir()) the initramfs for `kernelVersion`:
 * busybox, scripts/vm/init.sh as /init, and the lane's modules decompressed.
 * Returns its path. Cache key: kernel version + hash of init, busybox and modules.
 */
export async function buildInitramfs(kernelVersion: string, extraModules: string[] = []): Promise<string> {
  const lane = vmLaneAvailable();
  if (!lane.ok) throw new Error(`VM lane unavailable: ${lane.reason}`);
  const init = readFileSync(initTemplatePath());
  const plan = planModules(kernelVersion, extraModules);
  const mods = kernelModules(kernelVersion);
  const h = createHash('sha256');
  h.update(`format ${INITRAMFS_FORMAT}\n`).update(init);
  const bb = statSync(lane.busybox);
  h.update(`busybox ${lane.busybox} ${bb.size} ${bb.mtimeMs}\n`);
  for (const p of plan) {
    const st = statSync(path.join(mods.dir, p.rel));
    h.update(`${p.optional ? '?' : ''}${p.rel} ${st.size} ${st.mtimeMs}\n`);
  }
  const key = h.digest('hex').slice(0, 16);
  const cacheDir = vmCacheDir();
  const target = path.join(cacheDir, `initramfs-${kernelVersion}-${key}.cpio`);
  if (existsSync(target)) return target;

  const cpio = new CpioWriter();
  for (const d of ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'etc', 'lib', 'lib/modules']) cpio.dir(d);
  cpio.charDev('dev/console', 5, 1);
  cpio.charDev('dev/null', 1, 3, 0o666);
  cpio.file('bin/busybox', readFileSync(lane.busybox), 0o755);
  cpio.file('init', init, 0o755);
  const list: string[] = [];
  for (const p of plan) {
    const base = `${normName(p.rel)}.ko`;
    cpio.file(`lib/modules/${base}`, readModule(path.join(mods.dir, p.rel)));
    list.push(`${p.optional ? '?' : ''}${base}`);
  }
  cpio.file('etc/volagent-modules', Buffer.from(`${list.join('\n')}\n`));
  await mkdir(cacheDir, { recursive: true });
  const tmp = `${target}.${process.pid}.${Date.now()}.tmp`;
  await writeFile(tmp, cpio.finish());
  await rename(tmp, target);
  return target;
}

// ---------------------------------------------------------------------------
// Running qemu
// ---------------------------------------------------------------------------

/** Live qemu children: pid -> child. Killed with SIGKILL when this process exits. */
const live = new Map<number, ChildProcess>();
/** Share directories of VMs still running. Removed when this process exits. */
const liveShares = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pid of live.keys()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    if (process.env.VOLAGENT_VM_KEEP !== '1') {
      for (const dir of liveShares) rmSync(dir, { recursive: true, force: true });
    }
  });
}

const SHARE_PREFIX = 'volagent-vm-';

/**
 * Removes share directories left by processes that died by a signal (their
 * qemu died with them through PR_SET_PDEATHSIG, but no exit handler ran).
 * Names are volagent-vm-<pid>-XXXXXX.
 */
function sweepStaleShares(): void {
  if (process.env.VOLAGENT_VM_KEEP === '1') return;
  let names: string[];
  try {
    names = readdirSync(os.tmpdir());
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^volagent-vm-(\d+)-[^/]{6}$/.exec(name);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue; // owner alive
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') continue;
    }
    rmSync(path.join(os.tmpdir(), name), { recursive: true, force: true });
  }
}

class KvmStuckError extends Error {}

function kvmMarkerPath(): string {
  return path.join(vmCacheDir(), `kvm-unusable-${os.release()}`);
}

function markKvmUnusable(why: string): void {
  try {
    mkdirSync(vmCacheDir(), { recursive: true });
    writeFileSync(kvmMarkerPath(), `${why}\n`);
  } catch {
    /* ignore */
  }
  process.stderr.write(`volagent-vm: KVM unusable (${why}); using TCG\n`);
}

function kvmUsable(): boolean {
  try {
    const fd = openSync('/dev/kvm', 'r+');
    closeSync(fd);
  } catch {
    return false;
  }
  return !existsSync(kvmMarkerPath());
}

function chooseAccels(): Array<'kvm' | 'tcg'> {
  const want = process.env.VOLAGENT_VM_ACCEL ?? 'auto';
  if (want === 'tcg') return ['tcg'];
  if (want === 'kvm') return ['kvm'];
  return kvmUsable() ? ['kvm', 'tcg'] : ['tcg'];
}

/** Under auto accel, KVM must reach /init within this long or we fall back to TCG. */
const KVM_WATCHDOG_MS = 10_000;

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines).join('\n');
}

async function collectFiles(root: string): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {};
  const walk = async (dir: string, prefix: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const rel = prefix ? `${prefix}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(path.join(dir, e.name), rel);
      else if (e.isFile()) out[rel] = await readFile(path.join(dir, e.name));
    }
  };
  await walk(root, '');
  return out;
}

async function readText(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
}

async function bootOnce(
  lane: Extract<VmLaneStatus, { ok: true }>,
  initramfs: string,
  accel: 'kvm' | 'tcg',
  opts: RunInVmOptions,
): Promise<VmResult> {
  installExitHook();
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const cwd = opts.cwd ?? repoRoot;
  sweepStaleShares();
  const share = await mkdtemp(path.join(os.tmpdir(), `${SHARE_PREFIX}${process.pid}-`));
  liveShares.add(share);
  const keep = process.env.VOLAGENT_VM_KEEP === '1';
  const verbose = process.env.VOLAGENT_VM_VERBOSE === '1';
  try {
    await mkdir(path.join(share, 'out'));
    const env: Record<string, string> = {
      PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
      HOME: '/root',
      LANG: 'C.UTF-8',
      TERM: 'dumb',
      VOLAGENT_IN_VM: '1',
      VOLAGENT_VM_OUT: '/vmjob/out',
      ...(process.env.CI !== undefined ? { CI: process.env.CI } : {}),
      ...opts.env,
    };
    for (const k of Object.keys(env)) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`runInVm: bad environment variable name ${JSON.stringify(k)}`);
    }
    const runSh = [
      '#!/bin/sh',
      '# written by test/helpers/vm.ts; run by the guest init inside the chroot',
      'read up _ </proc/uptime; echo "volagent-vm: job-start $up" >/dev/console',
      ...Object.entries(env).map(([k, v]) => `export ${k}=${shQuote(v)}`),
      `cd ${shQuote(cwd)} || { echo "volagent-vm: cannot cd to ${cwd.replace(/[^\w./-]/g, '?')}" >/dev/console; echo 125 >/vmjob/status; exit 0; }`,
      '/bin/sh /vmjob/job.sh </dev/null >/vmjob/stdout 2>/vmjob/stderr',
      'rc=$?',
      'echo $rc >/vmjob/status',
      'read up _ </proc/uptime; echo "volagent-vm: job-end $rc $up" >/dev/console',
      '',
    ].join('\n');
    await writeFile(path.join(share, 'job.sh'), opts.script);
    await writeFile(path.join(share, 'run.sh'), runSh, { mode: 0o755 });

    const args: string[] = [
      '-machine',
      `pc,accel=${accel}`,
      '-cpu',
      accel === 'kvm' ? 'host' : 'max',
      '-m',
      String(opts.memoryMiB ?? 1024),
      '-smp',
      String(opts.cpus ?? 1),
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-no-reboot',
      '-serial',
      'stdio',
      '-kernel',
      lane.vmlinuz,
      '-initrd',
      initramfs,
      '-append',
      ['console=ttyS0', 'quiet', 'panic=-1', 'rdinit=/init', 'i8042.noaux', 'i8042.nopnp',
        ...(opts.init === 'systemd' ? ['volagent.init=systemd', 'systemd.unit=volagent-vmjob.target', 'fstab=no', 'systemd.gpt_auto=no', 'systemd.show_status=0'] : []),
        ...(opts.kernelArgs ?? [])].join(' '),
      '-device',
      'virtio-rng-pci',
    ];
    (opts.disks ?? []).forEach((d, i) => {
      const disk: VmDisk = typeof d === 'string' ? { path: d } : d;
      if (disk.path.includes(',')) throw new Error(`runInVm: disk path may not contain ',': ${disk.path}`);
      if (disk.serial && !/^[\w.-]{1,20}$/.test(disk.serial)) throw new Error(`runInVm: bad disk serial ${disk.serial}`);
      let drive = `file=${disk.path},format=raw,if=none,id=disk${i},cache=writeback,discard=unmap`;
      if (disk.readOnly) drive += ',readonly=on';
      let device = `virtio-blk-pci,drive=disk${i}`;
      if (disk.serial) device += `,serial=${disk.serial}`;
      args.push('-drive', drive, '-device', device);
    });
    args.push(
      '-virtfs',
      'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
      '-virtfs',
      `local,path=${share},mount_tag=vmjob,security_model=none,multidevs=remap`,
    );
    if (share.includes(',')) throw new Error(`runInVm: temp dir may not contain ',': ${share}`);

    // setpriv --pdeathsig makes the kernel SIGKILL qemu if this process dies
    // without running its exit handlers (e.g. SIGKILL from a test runner).
    const setpriv = which('setpriv');
    const [cmd, cmdArgs] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', lane.qemu, ...args]] : [lane.qemu, args];
    const started = Date.now();
    const child = spawn(cmd, cmdArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
    const pid = child.pid;
    if (pid === undefined) {
      const err = await new Promise<Error>((resolve) => child.once('error', resolve));
      throw new Error(`runInVm: cannot start ${lane.qemu}: ${err.message}`);
    }
    live.set(pid, child);

    const consoleLog = await openFile(path.join(share, 'console.log'), 'w');
    const consoleChunks: string[] = [];
    let consoleLen = 0;
    let qemuStderr = '';
    let sawInit = false;
    let jobStartAt = 0;
    let jobEndAt = 0;
    let pending = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (s: string) => {
      const text = s.replace(/\r\n/g, '\n').replace(/\r/g, '');
      consoleChunks.push(text);
      consoleLen += text.length;
      while (consoleLen > 4 * 1024 * 1024 && consoleChunks.length > 1) consoleLen -= consoleChunks.shift()!.length;
      void consoleLog.write(text).catch(() => {});
      if (verbose) process.stderr.write(text);
      pending = (pending + text).slice(-4096);
      if (!sawInit && pending.includes('volagent-vm: init')) sawInit = true;
      if (!jobStartAt && pending.includes('volagent-vm: job-start')) jobStartAt = Date.now();
      if (!jobEndAt && pending.includes('volagent-vm: job-end')) jobEndAt = Date.now();
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (s: string) => {
      qemuStderr = (qemuStderr + s).slice(-16384);
    });

    let killedFor: 'timeout' | 'abort' | 'kvm' | undefined;
    const kill = (why: 'timeout' | 'abort' | 'kvm'): void => {
      killedFor ??= why;
      try {
        child.kill('SIGKILL');
      } catch {
        /* gone */
      }
    };
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    const timer = setTimeout(() => kill('timeout'), timeoutMs);
    const watchdog =
      accel === 'kvm' && (process.env.VOLAGENT_VM_ACCEL ?? 'auto') === 'auto'
        ? setTimeout(() => {
            if (!sawInit) kill('kvm');
          }, KVM_WATCHDOG_MS)
        : undefined;
    const onAbort = (): void => kill('abort');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.signal?.aborted) kill('abort');

    let exit: { code: number | null; signal: NodeJS.Signals | null };
    try {
      exit = await exited;
    } finally {
      clearTimeout(timer);
      if (watchdog) clearTimeout(watchdog);
      opts.signal?.removeEventListener('abort', onAbort);
      live.delete(pid);
      await consoleLog.close().catch(() => {});
    }
    const ended = Date.now();
    const consoleText = consoleChunks.join('');

    if (killedFor === 'kvm') throw new KvmStuckError(`no output from the guest within ${KVM_WATCHDOG_MS} ms under KVM`);
    // A host whose /dev/kvm opens but cannot run this CPU model (nested
    // virtualisation refusing an MSR: qemu asserts in kvm_buf_set_msrs and
    // aborts before the guest says anything) is no KVM host either.
    if (accel === 'kvm' && exit.signal !== null && consoleText.trim() === '' && /kvm/i.test(qemuStderr)) {
      throw new KvmStuckError(`qemu died with ${exit.signal} under KVM before the guest started: ${tail(qemuStderr, 3).trim()}`);
    }

    const statusText = await readText(path.join(share, 'status'));
    const stdout = (await readText(path.join(share, 'stdout'))) ?? '';
    const stderr = (await readText(path.join(share, 'stderr'))) ?? '';
    const diag = (): string =>
      `\n--- console (tail) ---\n${tail(consoleText, 40)}` +
      (qemuStderr.trim() ? `\n--- qemu stderr ---\n${tail(qemuStderr, 20)}` : '') +
      (stdout || stderr ? `\n--- job stdout (tail) ---\n${tail(stdout, 20)}\n--- job stderr (tail) ---\n${tail(stderr, 20)}` : '') +
      (keep ? `\n(share dir kept: ${share})` : '');

    if (killedFor === 'timeout') {
      throw new VmError(`runInVm: timed out after ${timeoutMs} ms (${accel}); qemu killed${diag()}`, consoleText, stdout, stderr);
    }
    if (killedFor === 'abort') throw new VmError(`runInVm: aborted; qemu killed${diag()}`, consoleText, stdout, stderr);
    if (statusText === undefined || !/^\d+\s*$/.test(statusText)) {
      throw new VmError(
        `runInVm: the guest reported no exit status (qemu exited with ${exit.signal ?? exit.code})${diag()}`,
        consoleText,
        stdout,
        stderr,
      );
    }
    return {
      exitCode: Number.parseInt(statusText, 10),
      stdout,
      stderr,
      console: consoleText,
      files: await collectFiles(path.join(share, 'out')),
      pid,
      accel,
      timings: {
        bootMs: jobStartAt ? jobStartAt - started : 0,
        scriptMs: jobStartAt && jobEndAt ? jobEndAt - jobStartAt : 0,
        totalMs: ended - started,
      },
    };
  } finally {
    if (!keep) await rm(share, { recursive: true, force: true }).catch(() => {});
    liveShares.delete(share);
  }
}

/**
 * The host-side checks of a guest tap file whose subtests run in order: it
 * passed, no assertion failed, each of `titles` (the start of a subtest's
 * name) ran and passed, nothing else ran, and no VM is left.
 */
export function expectGuestSubtests(t: Test, result: GuestTestResult, titles: readonly string[], extra: Record<string, unknown> = {}): void {
  t.comment(`guest assertions:\n${result.output.split('\n').filter((line) => /^\s*(not )?ok \d+ - /.test(line)).join('\n')}`);
  t.equal(result.exitCode, 0, 'the guest tap file passes', { output: result.output, ...extra });
  t.notMatch(result.output, /^\s*not ok/m, 'no failing guest assertion');
  for (const title of titles) {
    t.match(result.output, new RegExp(`^ok \\d+ - ${title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`, 'm'), `ran and passed: ${title}`);
  }
  t.equal(/^1\.\.(\d+)$/m.exec(result.output)?.[1], String(titles.length), 'every guest subtest ran');
  t.same(liveVmPids(), [], 'no VM left running');
}
