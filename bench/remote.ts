// Pull across hosts (issue 21; needs root; iproute2, xfsprogs, qemu-utils,
// libnbd-bin). Two hosts as network namespaces joined by a veth pair
// (test/helpers/netns.ts), each with its own XFS loop filesystem. Host A
// holds a volume of 10 GiB with 1 GiB of random data in 16 spread runs, on
// volagentd's pool; host B pulls it. Five contenders copy it from A to B:
//  1. volagentd pull, TLS: B's agent `PUT /v1/volumes/{id}` with
//     `source.remote` naming A's read-only `nbds://` export (both agents
//     with the same `[nbd] tls` PSK file), timed from the PUT to the end of
//     the operation (`GET /v1/operations/{id}?wait=true`);
//  2. nbdcopy from qemu-nbd, TLS: `qemu-nbd -r` in A serving the same file
//     (`--object tls-creds-psk,...,endpoint=server --tls-creds`), and in B
//     `nbdcopy --destination-is-zero --flush nbds://...?tls-psk-file= FILE`
//     into a fresh sparse file of the volume's size on B's filesystem
//     (nbdcopy reads block status itself; --flush makes it durable, as the
//     agent's fsync does), timed from its start to its exit;
//  3. the same against a second qemu-nbd whose GnuTLS priority leaves out
//     ChaCha20-Poly1305 (AES_PRIORITY), so AES-128-GCM is negotiated: GnuTLS
//     chooses ChaCha20 by default here, and its ChaCha20 is the slower;
//  4. and 5. the same without TLS: both agents with `plaintext_tcp = true`
//     and an `nbd://` URI; a second qemu-nbd without --tls-creds.
// Rounds alternate between the contenders (the agents are restarted with the
// other config when the mode changes). Before each copy, the source's page
// cache is dropped (the object file and A's loop image, by fadvise: nothing
// else on the machine is touched) and B's filesystem synced. Outside the
// timed part, every destination is compared with the source (cmp) and its
// allocation read (sparse), then removed. Also measured per copy: the bytes
// that crossed the veth, and the CPU seconds of each side's process
// (/proc/PID/stat for the agents and qemu-nbd; /usr/bin/time for nbdcopy).
// The TLS suites negotiated are asked once: libnbd's debug line (nbdinfo
// against qemu-nbd), and the agent's own client against A's agent.
// Goal: the agent's rate (data MiB/s at the median) >= 1.0x nbdcopy's, TLS on
// (against both TLS servers) and off. Cinder's generic migration of the same volume is measured by the
// openstack lane, not here: its row and JSON field say so.
// Prints a table and one JSON line; exit 0 whether the goals are met or not.
// `--quick`: 2 GiB with 256 MiB of data, 1 round; `--rounds=N` sets the
// rounds. `--profile=DIR`: one more TLS pull with both agents under
// --cpu-prof, profiles kept in DIR/remote-<time>/{sender,receiver} and the
// top functions of each printed.
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';

import type { PoolSpec } from '../test/helpers/agent.js';
import type { LoopFs } from '../test/helpers/loop-fs.js';
import { makeLoopFs, TEST_ROOT } from '../test/helpers/loop-fs.js';
import type { Host, HostsOwner } from '../test/helpers/netns.js';
import { makeHosts } from '../test/helpers/netns.js';
import type { Latency, Reply, RunningAgent } from './lib.js';
import {
  atLeast, call, dropFileCache, expectStatus, f1, GiB, goalNote, latency, launchBenchAgent, MiB, msSince, now, onSignalCleanup, runBench, sleep, syncFs, writeRuns,
} from './lib.js';

const AGENT_PORT = 10809;
const QEMU_TLS_PORT = 10810;
const QEMU_PLAIN_PORT = 10811;
const QEMU_AES_PORT = 10812;
/** GnuTLS's priority string for qemu-nbd's second TLS server: its defaults less ChaCha20-Poly1305, so AES-128-GCM is negotiated. */
const AES_PRIORITY = 'NORMAL:-CHACHA20-POLY1305';
const PSK_IDENTITY = 'fleet';
const DATA_RUNS = 16;
/** Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ, 100 on Linux). */
const USER_HZ = 100;

type Mode = 'tls' | 'plain';
/** qemu-nbd servers: TLS with GnuTLS's default suites, TLS with AES-GCM (AES_PRIORITY), plain. */
type QemuServer = 'tls' | 'tlsAes' | 'plain';
type Tool = 'agent' | 'nbdcopy';

interface Sample {
  ms: number;
  /** Bytes A sent on the veth to B during the copy. */
  wireBytes: number;
  /** CPU seconds (user + system) of the sending process (A's agent, qemu-nbd) and the receiving one (B's agent, nbdcopy). */
  cpuSenderS: number;
  cpuReceiverS: number;
  /** Allocated bytes of the destination. */
  allocatedBytes: number;
}

interface Contender {
  key: string;
  label: string;
  tool: Tool;
  mode: Mode;
  /** For nbdcopy: the qemu-nbd it reads. */
  server?: QemuServer;
  samples: Sample[];
}

interface Side {
  host: Host;
  fs: LoopFs;
  dir: string;
  poolPath: string;
  agent?: RunningAgent;
}

/** utime + stime of a process, in seconds. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from the 3rd (state) on
  return (Number(fields[11]) + Number(fields[12])) / USER_HZ;
}

async function allocatedBytes(file: string): Promise<number> {
  return (await stat(file)).blocks * 512;
}

async function sameBytes(host: Host, a: string, b: string): Promise<void> {
  const cmp = await host.run('cmp', [a, b], { timeoutMs: 600_000 });
  if (cmp.code !== 0) throw new Error(`cmp ${a} ${b}: ${cmp.code} ${cmp.stdout}${cmp.stderr}`);
}

/** Polls until a TCP port answers inside `host` (qemu-nbd takes a moment to listen). */
async function waitForNbd(host: Host, uri: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await host.run('nbdinfo', ['--size', uri], { timeoutMs: 10_000 })).code === 0) return;
    await sleep(50);
  }
  throw new Error(`nothing answered at ${uri}`);
}

export function main(args: string[]): Promise<number> {
  return runBench('remote', 'network namespaces, loop devices; iproute2, xfsprogs, qemu-utils, libnbd-bin', import.meta.url, args, async (run) => {
    const quick = run.quick;
    const profileDir = args.find((a) => a.startsWith('--profile='))?.slice('--profile='.length);
    const sizeBytes = quick ? 2 * GiB : 10 * GiB;
    const dataBytes = quick ? 256 * MiB : GiB;
    const roundsArg = args.find((a) => a.startsWith('--rounds='))?.slice('--rounds='.length);
    const rounds = roundsArg !== undefined ? Number(roundsArg) : quick ? 1 : 3;
    if (!Number.isInteger(rounds) || rounds < 1) throw new RangeError(`--rounds must be a positive integer, not ${roundsArg}`);
    await mkdir(TEST_ROOT, { recursive: true });

    // Cleanups run newest first: the hosts (and every process in them) go before the filesystems.
    const workDir = path.join(TEST_ROOT, `bench-remote-${process.pid}`);
    await mkdir(workDir, { recursive: true });
    onSignalCleanup.push(() => rm(workDir, { recursive: true, force: true }));
    const fsA = await makeLoopFs('xfs', sizeBytes + 2 * GiB);
    onSignalCleanup.push(() => fsA.cleanup());
    const fsB = await makeLoopFs('xfs', sizeBytes + 2 * GiB);
    onSignalCleanup.push(() => fsB.cleanup());
    const owner: HostsOwner = {
      teardown: (fn) => { onSignalCleanup.push(async () => { await fn(); }); },
      comment: (message) => console.error(`remote: ${message}`),
    };
    const [a, b] = (await makeHosts(owner)) as [Host, Host];

    const keys = path.join(workDir, 'fleet.psk');
    const pskLine = `${PSK_IDENTITY}:${randomBytes(32).toString('hex')}\n`;
    await writeFile(keys, pskLine, { mode: 0o600 });
    const qemuPskDir = path.join(workDir, 'qemu-psk'); // tls-creds-psk reads <dir>/keys.psk
    await mkdir(qemuPskDir);
    await writeFile(path.join(qemuPskDir, 'keys.psk'), pskLine, { mode: 0o600 });

    const sides: Side[] = [];
    for (const [host, fs] of [[a, fsA], [b, fsB]] as const) {
      const side = { host, fs, dir: path.join(fs.mountPoint, 'agent'), poolPath: path.join(fs.mountPoint, 'pool') };
      await mkdir(side.dir);
      await mkdir(side.poolPath);
      sides.push(side);
    }
    const [sideA, sideB] = sides as [Side, Side];
    const pools = (side: Side): PoolSpec[] => [{ name: 'pool', path: side.poolPath }];
    const sourceFile = path.join(sideA.poolPath, 'objects', 'src.raw');
    const copiesDir = path.join(fsB.mountPoint, 'nbdcopy');
    await mkdir(copiesDir);

    let agentMode: Mode | undefined;
    let exportUri = '';
    let exportId = '';
    const stopAgents = async (): Promise<void> => {
      for (const side of sides) {
        await side.agent?.stop();
        side.agent = undefined;
      }
    };
    run.agentOutput = () => sides.map((s) => s.agent ? `host ${s.host.label}:\n${s.agent.output()}` : '').join('\n');
    /** Both agents in `mode` (node options per side: profiling), A exporting the source read-only once it exists. */
    const startAgents = async (mode: Mode, nodeArgsOf: (side: Side) => string[] = () => []): Promise<void> => {
      if (exportId !== '') expectStatus(await call(sideA.agent!.socket, false, 'DELETE', `/v1/exports/${exportId}`), 204, 'delete the export');
      await stopAgents();
      for (const side of sides) {
        side.agent = await launchBenchAgent(side.dir, pools(side), {
          nodeArgs: nodeArgsOf(side),
          config: {
            nbdListen: [`tcp:${side.host.address}:${AGENT_PORT}`],
            ...(mode === 'tls' ? { nbdTls: { pskFile: keys } } : { nbdPlaintextTcp: true }),
            spawn: side.host.spawn,
          },
        });
      }
      agentMode = mode;
      exportId = '';
      if (sourceMade) await exportSource();
    };
    let sourceMade = false;
    const exportSource = async (): Promise<void> => {
      const exported = await call(sideA.agent!.socket, false, 'POST', '/v1/volumes/src/exports', { protocol: 'nbd', readOnly: true });
      expectStatus(exported, 201, 'export the source');
      exportId = exported.body.id as string;
      const scheme = agentMode === 'tls' ? 'nbds' : 'nbd';
      exportUri = `${scheme}://${a.address}:${AGENT_PORT}/${exportId}`;
      if (!(exported.body.uris as string[]).includes(exportUri)) throw new Error(`no ${exportUri} among the export's URIs ${JSON.stringify(exported.body.uris)}`);
    };

    // The source: a volume on A's agent, its data written straight into its object file.
    await startAgents('tls');
    expectStatus(await call(sideA.agent!.socket, false, 'PUT', '/v1/volumes/src', { tenant: 'bench', sizeBytes }), 201, 'create the source');
    await writeRuns(sourceFile, sizeBytes, DATA_RUNS, dataBytes / DATA_RUNS);
    sourceMade = true;
    await exportSource();

    // qemu-nbd in A over the same file, read-only, shared by up to 4 clients (nbdcopy's multi-conn).
    const qemuArgs = (port: number, tls?: { priority?: string }): string[] => [
      '-r', '-f', 'raw', '-t', '-e', '4', '-x', 'src', '-b', a.address, '-p', String(port),
      ...(tls ? ['--object', `tls-creds-psk,id=tls0,endpoint=server,dir=${qemuPskDir}${tls.priority ? `,priority=${tls.priority}` : ''}`, '--tls-creds', 'tls0'] : []),
      sourceFile,
    ];
    const qemu: Record<QemuServer, { pid: number; uri: string }> = {
      tls: { pid: a.spawn('qemu-nbd', qemuArgs(QEMU_TLS_PORT, {}), { stdio: 'ignore' }).pid!, uri: `nbds://${PSK_IDENTITY}@${a.address}:${QEMU_TLS_PORT}/src?tls-psk-file=${keys}` },
      tlsAes: { pid: a.spawn('qemu-nbd', qemuArgs(QEMU_AES_PORT, { priority: AES_PRIORITY }), { stdio: 'ignore' }).pid!, uri: `nbds://${PSK_IDENTITY}@${a.address}:${QEMU_AES_PORT}/src?tls-psk-file=${keys}` },
      plain: { pid: a.spawn('qemu-nbd', qemuArgs(QEMU_PLAIN_PORT), { stdio: 'ignore' }).pid!, uri: `nbd://${a.address}:${QEMU_PLAIN_PORT}/src` },
    };
    for (const server of Object.values(qemu)) await waitForNbd(b, server.uri);

    // The suites negotiated, asked once (not timed).
    const negotiated = await tlsSuites(b, exportUri, qemu.tls.uri, qemu.tlsAes.uri, pskLine);

    const contenders: Contender[] = [
      { key: 'agentTls', label: 'volagentd pull, TLS', tool: 'agent', mode: 'tls', samples: [] },
      { key: 'nbdcopyTls', label: 'nbdcopy from qemu-nbd, TLS', tool: 'nbdcopy', mode: 'tls', server: 'tls', samples: [] },
      { key: 'nbdcopyTlsAes', label: 'nbdcopy, TLS AES-GCM', tool: 'nbdcopy', mode: 'tls', server: 'tlsAes', samples: [] },
      { key: 'agentPlain', label: 'volagentd pull, plain', tool: 'agent', mode: 'plain', samples: [] },
      { key: 'nbdcopyPlain', label: 'nbdcopy from qemu-nbd, plain', tool: 'nbdcopy', mode: 'plain', server: 'plain', samples: [] },
    ];

    const beforeCopy = async (): Promise<void> => {
      await dropFileCache(sourceFile);
      await dropFileCache(fsA.image);
      await syncFs(fsB.mountPoint);
    };

    let serial = 0;
    const agentPull = async (mode: Mode): Promise<Sample> => {
      if (agentMode !== mode) await startAgents(mode);
      const id = `copy-${++serial}`;
      await beforeCopy();
      const senderPid = sideA.agent!.pid;
      const receiverPid = sideB.agent!.pid;
      const [wire0, cpuA0, cpuB0] = [(await a.counters(b)).txBytes, await cpuSeconds(senderPid), await cpuSeconds(receiverPid)];
      const start = now();
      const started = await call(sideB.agent!.socket, false, 'PUT', `/v1/volumes/${id}`, { tenant: 'bench', source: { remote: { uri: exportUri, sizeBytes, volume: 'src' } } });
      expectStatus(started, 202, `pull ${id}`);
      const operation = started.body.operation.id as string;
      const ended: Reply = await call(sideB.agent!.socket, false, 'GET', `/v1/operations/${operation}?wait=true`, undefined, 1_800_000);
      const ms = msSince(start);
      const [wire1, cpuA1, cpuB1] = [(await a.counters(b)).txBytes, await cpuSeconds(senderPid), await cpuSeconds(receiverPid)];
      expectStatus(ended, 200, `operation ${operation}`);
      if (ended.body.state !== 'succeeded') throw new Error(`pull ${id}: ${ended.text}`);
      const copy = path.join(sideB.poolPath, 'objects', `${id}.raw`);
      await sameBytes(b, sourceFile, copy);
      const allocated = await allocatedBytes(copy);
      expectStatus(await call(sideB.agent!.socket, false, 'DELETE', `/v1/volumes/${id}`), 204, `delete ${id}`);
      return { ms, wireBytes: wire1 - wire0, cpuSenderS: cpuA1 - cpuA0, cpuReceiverS: cpuB1 - cpuB0, allocatedBytes: allocated };
    };

    const nbdcopy = async (server: QemuServer): Promise<Sample> => {
      const { pid, uri } = qemu[server];
      const copy = path.join(copiesDir, `copy-${++serial}.raw`);
      await writeFile(copy, '');
      await truncate(copy, sizeBytes);
      await beforeCopy();
      const [wire0, cpuA0] = [(await a.counters(b)).txBytes, await cpuSeconds(pid)];
      const start = now();
      const done = await b.run('/usr/bin/time', ['-f', 'cpu %U %S', 'nbdcopy', '--destination-is-zero', '--flush', uri, copy], { timeoutMs: 1_800_000 });
      const ms = msSince(start);
      const [wire1, cpuA1] = [(await a.counters(b)).txBytes, await cpuSeconds(pid)];
      if (done.code !== 0) throw new Error(`nbdcopy ${uri}: ${done.code} ${done.stderr}`);
      const times = /cpu ([\d.]+) ([\d.]+)/.exec(done.stderr);
      if (!times) throw new Error(`nbdcopy: no CPU times in ${JSON.stringify(done.stderr)}`);
      const size = (await stat(copy)).size;
      if (size !== sizeBytes) throw new Error(`nbdcopy made ${copy} ${size} bytes, not ${sizeBytes}`);
      await sameBytes(b, sourceFile, copy);
      const allocated = await allocatedBytes(copy);
      await rm(copy);
      return { ms, wireBytes: wire1 - wire0, cpuSenderS: cpuA1 - cpuA0, cpuReceiverS: Number(times[1]) + Number(times[2]), allocatedBytes: allocated };
    };

    for (let round = 0; round < rounds; round++) {
      for (const c of contenders) {
        const sample = c.tool === 'agent' ? await agentPull(c.mode) : await nbdcopy(c.server!);
        c.samples.push(sample);
        console.error(`remote: round ${round + 1}/${rounds} ${c.label}: ${f1(sample.ms / 1000)} s, ${f1(dataBytes / MiB / (sample.ms / 1000))} MiB/s`);
      }
    }

    let profile: ProfileSummary | undefined;
    if (profileDir !== undefined) {
      const runDir = path.join(profileDir, `remote-${new Date().toISOString().replace(/[:.]/g, '-')}`);
      const dirs = { sender: path.join(runDir, 'sender'), receiver: path.join(runDir, 'receiver') };
      await mkdir(dirs.sender, { recursive: true });
      await mkdir(dirs.receiver, { recursive: true });
      // Each agent writes its profile into its own directory when it exits.
      await startAgents('tls', (side) => ['--cpu-prof', `--cpu-prof-dir=${side === sideA ? dirs.sender : dirs.receiver}`]);
      const sample = await agentPull('tls');
      await stopAgents();
      profile = {
        ms: sample.ms,
        sender: await summarizeProfile(dirs.sender),
        receiver: await summarizeProfile(dirs.receiver),
      };
    }
    await stopAgents();

    const rows = contenders.map((c) => {
      const seconds = latency(c.samples.map((s) => s.ms / 1000));
      const median = (pick: (s: Sample) => number): number => latency(c.samples.map(pick)).p50;
      return {
        key: c.key, label: c.label, tool: c.tool, mode: c.mode, seconds,
        mibPerSecond: dataBytes / MiB / seconds.p50,
        wireMiB: median((s) => s.wireBytes) / MiB,
        cpuSenderS: median((s) => s.cpuSenderS),
        cpuReceiverS: median((s) => s.cpuReceiverS),
        allocatedMiB: median((s) => s.allocatedBytes) / MiB,
      };
    });
    const rate = (key: string): number => rows.find((r) => r.key === key)!.mibPerSecond;
    const ratios = { tls: rate('agentTls') / rate('nbdcopyTls'), tlsAes: rate('agentTls') / rate('nbdcopyTlsAes'), plain: rate('agentPlain') / rate('nbdcopyPlain') };

    console.log(`Pull of a ${sizeBytes / GiB} GiB volume with ${dataBytes / MiB} MiB of data (${DATA_RUNS} runs) from host A to host B (network namespaces, veth), ${rounds} round(s); seconds from start to durable end`);
    console.log(`${'contender'.padEnd(30)} ${'p50 s'.padStart(7)} ${'max s'.padStart(7)} ${'mean s'.padStart(7)} ${'MiB/s'.padStart(7)} ${'wire MiB'.padStart(9)} ${'CPU A s'.padStart(8)} ${'CPU B s'.padStart(8)} ${'alloc MiB'.padStart(10)}`);
    for (const r of rows) {
      console.log(`${r.label.padEnd(30)} ${f1(r.seconds.p50).padStart(7)} ${f1(r.seconds.max).padStart(7)} ${f1(r.seconds.mean).padStart(7)} ${f1(r.mibPerSecond).padStart(7)} ${f1(r.wireMiB).padStart(9)} ${f1(r.cpuSenderS).padStart(8)} ${f1(r.cpuReceiverS).padStart(8)} ${f1(r.allocatedMiB).padStart(10)}`);
    }
    console.log(`${'Cinder generic migration'.padEnd(30)} not measured here: the openstack lane's bench (bench/openstack.ts) measures it`);
    console.log(`TLS suites: volagentd ${negotiated.agent}; qemu-nbd/nbdcopy ${negotiated.qemu}; with priority=${AES_PRIORITY} ${negotiated.qemuAes}`);
    /** Each ratio's key, its words in the line below, and its measure's name. */
    const goalLines: Array<[keyof typeof ratios, string, string]> = [
      ['tls', 'TLS, against qemu-nbd\'s default suites', 'pull vs nbdcopy, TLS (default suites)'],
      ['tlsAes', `TLS, against qemu-nbd with priority=${AES_PRIORITY}`, 'pull vs nbdcopy, TLS (AES-GCM)'],
      ['plain', 'plain', 'pull vs nbdcopy, plain'],
    ];
    const goals = goalLines.map(([key, what, measure]) => ({ key, what, verdict: atLeast(measure, ratios[key], 'x', 1) }));
    for (const { what, verdict } of goals) console.log(`agent pull ${f1(verdict.figure)}x nbdcopy's rate, ${what}; ${goalNote(verdict)}`);
    if (profile) {
      console.log(`profiled TLS pull: ${f1(profile.ms / 1000)} s; self time by function of each agent's main thread over its whole run, start-up included (--cpu-prof; native work without a JS caller is "(program)")`);
      for (const side of ['sender', 'receiver'] as const) {
        console.log(`  ${side === 'sender' ? 'A (sender)' : 'B (receiver)'}: ${f1(profile[side].busyMs)} ms busy`);
        for (const f of profile[side].top) console.log(`    ${f1(f.selfMs).padStart(8)} ms  ${f.name}`);
      }
    }
    console.log(JSON.stringify({
      bench: 'remote', quick, sizeBytes, dataBytes, dataRuns: DATA_RUNS, rounds,
      contenders: Object.fromEntries(rows.map((r) => [r.key, { ...r, samples: contenders.find((c) => c.key === r.key)!.samples }])),
      ratios, goalMet: Object.fromEntries(goals.map(({ key, verdict }) => [key, verdict.met])),
      cinderGenericMigration: { measured: false, by: 'bench/openstack.ts (openstack lane)' },
      tlsSuites: negotiated,
      ...(profile ? { profile } : {}),
      verdicts: goals.map(({ verdict }) => verdict),
    }));
    return 0;
  });
}

/**
 * The suites each pair negotiates: the agent's own NBD client (as a pull
 * connects) against A's agent, run in B; and libnbd's debug line for nbdinfo
 * against qemu-nbd (GnuTLS on both ends, as nbdcopy and qemu-nbd).
 */
async function tlsSuites(b: Host, agentUri: string, qemuUri: string, qemuAesUri: string, pskLine: string): Promise<{ agent: string; qemu: string; qemuAes: string }> {
  const [identity, hex] = pskLine.trim().split(':') as [string, string];
  const distSrc = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', 'src');
  const code = [
    `const { NbdClient } = await import(${JSON.stringify(path.join(distSrc, 'remote', 'nbd-client.js'))});`,
    `const { parseNbdUri } = await import(${JSON.stringify(path.join(distSrc, 'remote', 'nbd-uri.js'))});`,
    `const c = await NbdClient.connect(parseNbdUri(${JSON.stringify(agentUri)}), { tls: { psk: { identity: ${JSON.stringify(identity)}, key: Buffer.from(${JSON.stringify(hex)}, 'hex') } } });`,
    'const s = c.stream; console.log(`${s.getProtocol()} ${s.getCipher().standardName}`); await c.close();',
  ].join('\n');
  const agent = await b.run(process.execPath, ['--input-type=module', '-e', code], { timeoutMs: 30_000 });
  const libnbdSays = async (uri: string): Promise<string> => {
    const info = await b.run('nbdinfo', ['--size', uri], { timeoutMs: 30_000, env: { ...process.env, LIBNBD_DEBUG: '1' } });
    return /connection is using TLS: (.*)/.exec(info.stderr)?.[1]?.trim() ?? 'unknown (no libnbd debug line)';
  };
  return {
    agent: agent.code === 0 ? agent.stdout.trim() : `unknown (${agent.stderr.trim().split('\n').pop()})`,
    qemu: await libnbdSays(qemuUri),
    qemuAes: await libnbdSays(qemuAesUri),
  };
}

interface ProfileSummary {
  ms: number;
  sender: { busyMs: number; top: Array<{ name: string; selfMs: number }> };
  receiver: { busyMs: number; top: Array<{ name: string; selfMs: number }> };
}

interface CpuProfile {
  nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number } }>;
  samples: number[];
  timeDeltas: number[];
}

/** Self time by function over the .cpuprofile files in `dir` (one per agent run), largest first; `busyMs` leaves out (idle). */
async function summarizeProfile(dir: string): Promise<{ busyMs: number; top: Array<{ name: string; selfMs: number }> }> {
  const self = new Map<string, number>();
  let busyMs = 0;
  for (const file of (await readdir(dir)).filter((f) => f.endsWith('.cpuprofile'))) {
    const profile = JSON.parse(await readFile(path.join(dir, file), 'utf8')) as CpuProfile;
    const names = new Map(profile.nodes.map((n) => {
      const where = n.callFrame.url ? ` ${n.callFrame.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${n.callFrame.lineNumber + 1}` : '';
      return [n.id, `${n.callFrame.functionName || '(anonymous)'}${where}`];
    }));
    profile.samples.forEach((id, i) => {
      const name = names.get(id)!;
      if (name === '(idle)') return;
      const ms = (profile.timeDeltas[i] ?? 0) / 1000;
      busyMs += ms;
      self.set(name, (self.get(name) ?? 0) + ms);
    });
  }
  const top = [...self.entries()].sort((x, y) => y[1] - x[1]).slice(0, 12).map(([name, selfMs]) => ({ name, selfMs }));
  return { busyMs, top };
}
