// NBD benchmark (needs root; Debian's libnbd-bin, qemu-utils and nbdkit).
// The same 2 GiB file of dense random data on an XFS loop filesystem, served
// by volagentd (an export of a volume, with and without directIo: O_DIRECT
// reads, as qemu-nbd --cache=none), by qemu-nbd (default cache, and
// --cache=none --aio=native) and by nbdkit's file plugin, each on a unix
// socket, read by the same client in the same run:
//  1. read: `nbdcopy URI null:` (4 connections, nbdcopy's default), MiB/s;
//  2. write: `nbdcopy FILE URI` into an empty 2 GiB volume/file, MiB/s;
//  3. the copy of an empty 100 GiB sparse volume (`nbdcopy URI null:`):
//     block status makes it proportional to the data, i.e. instant;
//  4. the agent's peak RSS (VmRSS every 25 ms) during the 4-connection reads.
// Rounds alternate between servers; the page cache is dropped before each
// read round (every server then reads from the disk, or none does).
// Goals: read and write >= 1.0x the better of qemu-nbd and nbdkit, by each of
// the agent's two exports (buffered and directIo); the empty 100 GiB copy
// < 1 s; agent RSS < 200 MiB. Prints a table and one JSON line;
// exit 0 whether goals are met or not. `--quick`: 512 MiB, 1 round.
import type { ChildProcess } from 'node:child_process';
import { execFile, spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { mkdir, truncate } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

import { makeLoopFs, TEST_ROOT } from '../test/helpers/loop-fs.js';
import type { RunningAgent } from './lib.js';
import {
  atLeast, below, call, expectStatus, f1, GiB, goalNote, launchBenchAgent, MiB, msSince, now, onSignalCleanup, RssSampler, runBench, sleep, withUnit, writeRuns,
} from './lib.js';

const execFileAsync = promisify(execFile);

interface Server {
  label: string;
  /** URI of the read-side export (the dense file) and of the write-side one (empty). */
  readUri: string;
  writeUri: string;
  /** The file behind writeUri: emptied (all holes) before each write, so every server writes into unallocated blocks. */
  writeTarget: string;
  stop(): Promise<void>;
}

async function waitForSocket(socketPath: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      await execFileAsync('nbdinfo', ['--size', `nbd+unix:///?socket=${socketPath}`]);
      return;
    } catch {
      await sleep(50);
    }
  }
  throw new Error(`nothing answered on ${socketPath}`);
}

function stopChild(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/** One qemu-nbd or nbdkit per file, each on its own socket (they serve one export each). */
async function startPeer(dir: string, label: string, file: string, args: (socket: string) => [string, string[]]): Promise<{ uri: string; child: ChildProcess }> {
  const socket = path.join(dir, `${label}-${path.basename(file)}.sock`);
  const [command, argv] = args(socket);
  const child = spawn(command, argv, { stdio: 'ignore' });
  await waitForSocket(socket);
  return { uri: `nbd+unix:///?socket=${socket}`, child };
}

async function peers(dir: string, dense: string, empty: string): Promise<Server[]> {
  const kinds: Array<[string, (file: string) => (socket: string) => [string, string[]]]> = [
    ['qemu-nbd', (file) => (socket) => ['qemu-nbd', ['-f', 'raw', '-k', socket, '-t', '-e', '8', file]]],
    ['qemu-nbd --cache=none --aio=native', (file) => (socket) => ['qemu-nbd', ['-f', 'raw', '-k', socket, '-t', '-e', '8', '--cache=none', '--aio=native', file]]],
    ['nbdkit file', (file) => (socket) => ['nbdkit', ['-f', '-U', socket, 'file', file]]],
  ];
  const servers: Server[] = [];
  for (const [label, args] of kinds) {
    const slug = label.replace(/\W+/g, '-');
    const read = await startPeer(dir, `${slug}-r`, dense, args(dense));
    const write = await startPeer(dir, `${slug}-w`, empty, args(empty));
    servers.push({ label, readUri: read.uri, writeUri: write.uri, writeTarget: empty, stop: async () => { await stopChild(read.child); await stopChild(write.child); } });
  }
  return servers;
}

async function dropCaches(): Promise<void> {
  await execFileAsync('sync');
  await writeFile('/proc/sys/vm/drop_caches', '3');
}

async function timedCopy(args: string[], bytes: number): Promise<number> {
  const start = now();
  await execFileAsync('nbdcopy', args, { maxBuffer: 1024 * 1024 });
  return bytes / MiB / (msSince(start) / 1000);
}

export function main(args: string[]): Promise<number> {
  return runBench('nbd', 'loop devices, /proc/sys/vm/drop_caches; libnbd-bin, qemu-utils, nbdkit', import.meta.url, args, async (run) => {
    const quick = run.quick;
    const size = quick ? 512 * MiB : 2 * GiB;
    const rounds = quick ? 1 : 3;
    await mkdir(TEST_ROOT, { recursive: true });
    const fs = await makeLoopFs('xfs', size * 5 + GiB); // dense + empty (volagentd), dense + empty (peers), the source
    onSignalCleanup.push(() => fs.cleanup());
    let agent: RunningAgent | undefined;
    const servers: Server[] = [];
    try {
      const poolPath = path.join(fs.mountPoint, 'pool');
      const peerDir = path.join(fs.mountPoint, 'peer');
      await mkdir(poolPath);
      await mkdir(peerDir);
      agent = await launchBenchAgent(path.join(fs.mountPoint), [{ name: 'p', path: poolPath }]);
      run.agentOutput = agent.output;
      const socket = agent.socket;
      for (const [id, bytes] of [['dense', size], ['empty', size], ['huge', 100 * GiB]] as const) {
        expectStatus(await call(socket, false, 'PUT', `/v1/volumes/${id}`, { tenant: 't', sizeBytes: bytes }), 201, `create ${id}`);
      }
      const objects = path.join(poolPath, 'objects');
      await writeRuns(path.join(objects, 'dense.raw'), size, size / (64 * MiB), 64 * MiB); // every byte data
      const exportOf = async (id: string, directIo = false): Promise<string> => {
        const reply = await call(socket, false, 'POST', `/v1/volumes/${id}/exports`, { protocol: 'nbd', ...(directIo ? { directIo } : {}) });
        expectStatus(reply, 201, `export ${id}`);
        return reply.body.uri as string;
      };
      const agentEmpty = path.join(objects, 'empty.raw');
      servers.push({ label: 'volagentd', readUri: await exportOf('dense'), writeUri: await exportOf('empty'), writeTarget: agentEmpty, stop: async () => undefined });
      servers.push({ label: 'volagentd directIo', readUri: await exportOf('dense', true), writeUri: await exportOf('empty', true), writeTarget: agentEmpty, stop: async () => undefined });
      const peerDense = path.join(peerDir, 'dense.raw');
      const peerEmpty = path.join(peerDir, 'empty.raw');
      await execFileAsync('cp', ['--reflink=never', path.join(objects, 'dense.raw'), peerDense]);
      await writeFile(peerEmpty, '');
      await truncate(peerEmpty, size);
      servers.push(...await peers(peerDir, peerDense, peerEmpty));
      const source = path.join(fs.mountPoint, 'source.raw');
      await execFileAsync('cp', ['--reflink=never', peerDense, source]);

      const reads = new Map<string, number[]>();
      const writes = new Map<string, number[]>();
      const rss = new RssSampler(agent.pid);
      for (let round = 0; round < rounds; round++) {
        for (const server of servers) {
          await dropCaches();
          const ours = server.label.startsWith('volagentd');
          if (ours) rss.start();
          const read = await timedCopy([server.readUri, 'null:'], size);
          if (ours) rss.stop();
          reads.set(server.label, [...(reads.get(server.label) ?? []), read]);
          // Every server shares its write target with others: each writes into a file of holes, not into blocks the last one allocated.
          await truncate(server.writeTarget, 0);
          await truncate(server.writeTarget, size);
          const write = await timedCopy([source, server.writeUri], size);
          writes.set(server.label, [...(writes.get(server.label) ?? []), write]);
        }
      }
      const hugeUri = await exportOf('huge');
      const hugeStart = now();
      await execFileAsync('nbdcopy', [hugeUri, 'null:']);
      const hugeMs = msSince(hugeStart);

      const best = (values: number[]): number => Math.max(...values);
      const table = servers.map((s) => ({ server: s.label, readMiBs: best(reads.get(s.label)!), writeMiBs: best(writes.get(s.label)!) }));
      const peersOnly = table.filter((row) => !row.server.startsWith('volagentd'));
      const ours = table.find((row) => row.server === 'volagentd')!;
      const oursDirect = table.find((row) => row.server === 'volagentd directIo')!;
      const betterPeerRead = Math.max(...peersOnly.map((p) => p.readMiBs));
      const betterPeerWrite = Math.max(...peersOnly.map((p) => p.writeMiBs));
      const readRatio = ours.readMiBs / betterPeerRead;
      const directReadRatio = oursDirect.readMiBs / betterPeerRead;
      const writeRatio = ours.writeMiBs / betterPeerWrite;
      const directWriteRatio = oursDirect.writeMiBs / betterPeerWrite;
      const rssPeak = Math.max(rss.peakBytes, 0);
      const verdicts = [
        atLeast('read vs the better peer', readRatio, 'x', 1),
        atLeast('read vs the better peer, directIo export', directReadRatio, 'x', 1),
        atLeast('write vs the better peer', writeRatio, 'x', 1),
        atLeast('write vs the better peer, directIo export', directWriteRatio, 'x', 1),
        below('empty 100 GiB volume copied', hugeMs, 'ms', 1000),
        below('agent peak RSS during the reads', rssPeak / MiB, 'MiB', 200),
      ];
      console.log(`NBD throughput, ${size / MiB} MiB dense file, best of ${rounds} round(s), MiB/s (nbdcopy, 4 connections)`);
      console.log(`${'server'.padEnd(36)} ${'read'.padStart(8)} ${'write'.padStart(8)}`);
      for (const row of table) console.log(`${row.server.padEnd(36)} ${f1(row.readMiBs).padStart(8)} ${f1(row.writeMiBs).padStart(8)}`);
      for (const v of verdicts) console.log(`${v.measure}: ${withUnit(v.figure, v.unit)}; ${goalNote(v)}`);
      console.log(JSON.stringify({
        bench: 'nbd', quick, sizeBytes: size, rounds, table, readRatio, directReadRatio, writeRatio, directWriteRatio, hugeMs, rssPeakBytes: rssPeak,
        reads: Object.fromEntries(reads), writes: Object.fromEntries(writes), verdicts,
      }));
      return 0;
    } finally {
      for (const server of servers) await server.stop();
      await agent?.stop();
      await fs.cleanup();
    }
  });
}
