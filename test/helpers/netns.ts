// Hosts for tests across machines, as network namespaces on this one: each
// host is a namespace with its own `lo`, joined to every other host by a veth
// pair made inside the namespaces (no interface, address or route is added to
// the root namespace, so nothing a host sends can leave the machine).
//
// Addressing: 127.21.0.N/32 on the veths, with route_localnet. Tried on Debian 12
// (kernel 6.18, iproute2 6.1, Node 20, libnbd 1.14.2, qemu 7.2), by a Node server
// or qemu-nbd in one namespace and Node's `net`, nbdinfo, nbdcopy and qemu-img in
// the other:
// - 127.21.0.N/32 works end to end with every client: Node's `net`, nbdinfo,
//   nbdcopy, qemu-img (`nbd://127.21.0.1:10809/NAME`, `--image-opts driver=nbd,
//   server.type=inet,server.host=127.21.0.1,...`), and with NBD's TLS against
//   qemu-nbd (nbdinfo with X.509, `nbds://...?tls-certificates=DIR`, and PSK,
//   `?tls-psk-file=`; qemu-img with X.509 and an IP subjectAltName).
//   Each namespace's `lo` claims 127.0.0.0/8 in the `local` table when it is up, so
//   the peer's /32 is routed over the veth by a more specific route in that same
//   table (table `main` happens to work too while the kernel merges the local and
//   main tries, which it stops doing once any policy rule is added).
//   `net.ipv4.conf.<veth>.route_localnet=1` on both ends is needed: without it
//   connect() fails with EINVAL (the kernel refuses a loopback source or
//   destination on a non-loopback device) and nothing crosses. Packets do cross
//   the pair: the veths' byte counters grow by what is sent, equally at both ends.
//   From the root namespace the same address is the root's own loopback: a
//   connection there is refused (or meets whatever root serves on that port) and
//   moves no veth counter.
// - IPv6 link-local (fe80::a/64 nodad on each end, zone needed) works with plain
//   NBD: Node listens on and connects to `fe80::a%dev`, libnbd accepts a zone as
//   `nbd://[fe80::a%25dev]:10809/NAME` (and unencoded `%dev`), qemu-img accepts
//   both URIs and `server.host=fe80::a%dev`. Naming both ends of the pair alike
//   makes one literal valid in both namespaces. But it fails with TLS: libnbd
//   1.14 sends `fe80::a%dev` as the TLS server name (qemu-nbd, GnuTLS, rejects it:
//   "disallowed SNI server name", for PSK as for X.509), and a certificate cannot
//   match a host with a zone (qemu-img: "Certificate does not match the hostname";
//   its `tls-hostname=fe80::a` fixes that for qemu only, libnbd 1.14 has no such
//   setting). volagentd's `[nbd].listen` also does not parse a zone
//   (`tcp:[fe80::a%dev]:10809`). So the veths carry IPv4 only (IPv6 disabled on
//   them, which also keeps router and neighbour solicitations off the counters).
//
// Names: namespace `vtns-<pid>-<n>-<label>` (the test process's pid, its n-th set
// of hosts, label a, b, c...), and in host X the interface to host Y is `vt-Y`.
// Teardown (registered before anything is made) stops every process spawned in
// the hosts by pid (SIGTERM, SIGKILL after a grace), kills whatever else is left
// in the namespaces, and deletes them (which deletes their veths). A run killed
// before its teardown leaves namespaces whose pid is dead: makeHosts sweeps those
// first (sweepNamespaces), leaving other live runs' hosts alone.
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';

import { run } from './run.js';

export const NETNS_PREFIX = 'vtns-';
const NETNS_DIR = '/run/netns';
const NAME_PATTERN = new RegExp(`^${NETNS_PREFIX}(\\d+)-\\d+-[a-z]$`);
const MAX_HOSTS = 26;

/** How long a spawned process has between SIGTERM and SIGKILL at teardown. */
export const STOP_GRACE_MS = 5_000;

export interface HostOutcome {
  /** The exit code, null when a signal ended it. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** SIGKILL after this long; default 120 s. */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface LinkCounters {
  rxBytes: number;
  txBytes: number;
}

export interface Host {
  /** The namespace's name, as `ip -n` and /run/netns know it. */
  readonly name: string;
  /** `a`, `b`, ...: the host's place in the set. */
  readonly label: string;
  /** Its IPv4 address (127.21.0.N), as written in URIs and given to Node. */
  readonly address: string;
  /** Every pid spawned in this host so far, running or not. */
  readonly pids: readonly number[];
  /** The interface in this host that leads to `peer`. */
  link(peer: Host): string;
  /** The byte counters of the interface that leads to `peer`. */
  counters(peer: Host): Promise<LinkCounters>;
  /** Starts `command` inside the namespace (nsenter execs it: the pid is the command's); teardown stops it. */
  spawn(command: string, args: string[], options?: SpawnOptions): ChildProcess;
  /** Runs `command` inside the namespace to its end, stdin closed; never rejects on a failing exit. */
  run(command: string, args: string[], options?: RunOptions): Promise<HostOutcome>;
}

let sequence = 0;

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves true once none of `pids` exists (reaped), false when `ms` passed first. */
async function untilGone(pids: number[], ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (pids.every((pid) => !existsSync(`/proc/${pid}`))) return true;
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
}

/** Namespaces under /run/netns whose name has the harness's prefix. */
export async function harnessNamespaces(): Promise<string[]> {
  const names = await readdir(NETNS_DIR).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [] as string[];
    throw error;
  });
  return names.filter((name) => NAME_PATTERN.test(name)).sort();
}

/** The pids of the processes in namespace `name` (`ip netns pids`: those whose /proc/PID/ns/net is it). */
async function namespacePids(name: string): Promise<number[]> {
  const out = await run('ip', ['netns', 'pids', name]).catch(() => '');
  return out.split('\n').filter((line) => /^\d+$/.test(line.trim())).map(Number);
}

/**
 * SIGKILLs every process still in namespace `name`, waits until they are gone,
 * and deletes it (its veths go with it). Answers the pids it killed. A
 * namespace whose processes outlive the wait is deleted all the same: the
 * kernel frees it, and its veths, when the last of them exits.
 */
async function removeNamespace(name: string): Promise<{ killed: number[]; problems: string[] }> {
  const problems: string[] = [];
  const killed = await namespacePids(name);
  for (const pid of killed) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') problems.push(`kill ${pid} in ${name}: ${(error as Error).message}`);
    }
  }
  if (!(await untilGone(killed, 5_000))) problems.push(`processes in ${name} did not exit after SIGKILL: ${killed.filter((pid) => existsSync(`/proc/${pid}`)).join(' ')}`);
  if (existsSync(path.join(NETNS_DIR, name))) await run('ip', ['netns', 'delete', name]).catch((error: Error) => problems.push(error.message));
  return { killed, problems };
}

/**
 * Removes the namespaces a killed run left: those with the harness's prefix
 * whose pid no longer runs, with every process still in them. Answers one
 * line per namespace removed. Hosts of live runs are not touched.
 */
export async function sweepNamespaces(): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await harnessNamespaces()) {
    const owner = Number(NAME_PATTERN.exec(name)![1]);
    if (isAlive(owner)) continue;
    const { killed, problems } = await removeNamespace(name);
    removed.push(`netns ${name}${killed.length > 0 ? ` (killed ${killed.join(' ')})` : ''}${problems.length > 0 ? `: ${problems.join('; ')}` : ''}`);
  }
  return removed;
}

interface Spawned {
  child: ChildProcess;
  exited: Promise<void>;
}

function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** Stops the spawned processes (SIGTERM, SIGKILL after the grace), then removes the namespaces. Never throws: problems go to stderr. */
async function tearDown(names: string[], spawned: Spawned[]): Promise<void> {
  const problems: string[] = [];
  const live = spawned.filter((s) => running(s.child));
  for (const s of live) s.child.kill('SIGTERM');
  const allExited = Promise.all(live.map((s) => s.exited));
  const timer = new Promise<'late'>((resolve) => setTimeout(() => resolve('late'), STOP_GRACE_MS).unref());
  if ((await Promise.race([allExited, timer])) === 'late') {
    for (const s of live) if (running(s.child)) s.child.kill('SIGKILL');
    const killTimer = new Promise<'late'>((resolve) => setTimeout(() => resolve('late'), 5_000).unref());
    if ((await Promise.race([allExited, killTimer])) === 'late') problems.push(`spawned processes did not exit after SIGKILL: ${live.filter((s) => running(s.child)).map((s) => s.child.pid).join(' ')}`);
  }
  for (const name of names) problems.push(...(await removeNamespace(name)).problems);
  for (const problem of problems) process.stderr.write(`# netns teardown: ${problem}\n`);
}

/** Who owns the hosts: a tap Test, or a benchmark's own list of cleanups (it runs each function given to `teardown` at its end). */
export interface HostsOwner {
  teardown(fn: () => unknown): void;
  comment(message: string): void;
}

/**
 * Makes `count` hosts joined pairwise by veths, and registers their removal
 * with `t.teardown`. Host i (label a, b, ...) has address 127.21.0.(i+1)/32 on
 * each of its veths and a /32 route to every peer over the veth to it.
 */
export async function makeHosts(t: HostsOwner, count = 2): Promise<Host[]> {
  if (!Number.isInteger(count) || count < 2 || count > MAX_HOSTS) throw new RangeError(`makeHosts: count must be 2..${MAX_HOSTS}, not ${count}`);
  for (const line of await sweepNamespaces()) t.comment(`swept leftover ${line}`);
  sequence += 1;
  const names: string[] = [];
  const spawned: Spawned[] = [];
  t.teardown(() => tearDown(names, spawned));

  const hosts: Host[] = Array.from({ length: count }, (_, i) => {
    const label = String.fromCharCode(0x61 + i);
    const name = `${NETNS_PREFIX}${process.pid}-${sequence}-${label}`;
    const netnsFile = path.join(NETNS_DIR, name);
    const pids: number[] = [];
    const link = (peer: Host): string => `vt-${peer.label}`;
    const spawnIn = (command: string, args: string[], options: SpawnOptions = {}): ChildProcess => {
      const child = spawn('nsenter', [`--net=${netnsFile}`, '--', command, ...args], options);
      if (child.pid !== undefined) {
        pids.push(child.pid);
        spawned.push({ child, exited: new Promise((resolve) => child.once('exit', () => resolve())) });
      }
      return child;
    };
    return {
      name, label, address: `127.21.0.${i + 1}`, pids, link,
      async counters(peer) {
        const [info] = JSON.parse(await run('ip', ['-n', name, '-s', '-j', 'link', 'show', 'dev', link(peer)])) as Array<{ stats64: { rx: { bytes: number }; tx: { bytes: number } } }>;
        return { rxBytes: info!.stats64.rx.bytes, txBytes: info!.stats64.tx.bytes };
      },
      spawn: spawnIn,
      run(command, args, options = {}) {
        return new Promise((resolve, reject) => {
          const child = spawnIn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env, ...(options.cwd !== undefined ? { cwd: options.cwd } : {}) });
          let stdout = '';
          let stderr = '';
          child.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
          child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
          const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
          child.once('error', (error) => {
            clearTimeout(timer);
            reject(error);
          });
          // 'close', not 'exit': the pipes may still hold output when the process has exited.
          child.once('close', (code, signal) => {
            clearTimeout(timer);
            resolve({ code, signal, stdout, stderr });
          });
        });
      },
    };
  });

  for (const host of hosts) {
    // Named before it exists: a failure half-way through `ip netns add` is still removed.
    names.push(host.name);
    await run('ip', ['netns', 'add', host.name]);
  }
  for (const [i, host] of hosts.entries()) {
    for (const peer of hosts.slice(i + 1)) {
      await run('ip', ['-n', host.name, 'link', 'add', host.link(peer), 'type', 'veth', 'peer', 'name', peer.link(host), 'netns', peer.name]);
    }
  }
  for (const host of hosts) {
    const peers = hosts.filter((peer) => peer !== host);
    // Set before the links come up, so no IPv6 packet (solicitations, MLD) is ever sent on them.
    const sysctls = peers.flatMap((peer) => [`net.ipv6.conf.${host.link(peer)}.disable_ipv6=1`, `net.ipv4.conf.${host.link(peer)}.route_localnet=1`]);
    await run('nsenter', [`--net=${path.join(NETNS_DIR, host.name)}`, '--', 'sysctl', '-q', '-w', ...sysctls]);
    await run('ip', ['-n', host.name, 'link', 'set', 'lo', 'up']);
    for (const peer of peers) {
      await run('ip', ['-n', host.name, 'address', 'add', `${host.address}/32`, 'dev', host.link(peer)]);
      await run('ip', ['-n', host.name, 'link', 'set', host.link(peer), 'up']);
      await run('ip', ['-n', host.name, 'route', 'add', `${peer.address}/32`, 'dev', host.link(peer), 'src', host.address, 'table', 'local']);
    }
  }
  return hosts;
}
