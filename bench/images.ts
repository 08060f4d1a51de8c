// Image benchmark (needs root): a real volagentd with an XFS loop pool, over
// its unix socket.
//  1. Create-volume-from-image of a 20 GiB image (256 runs of 1 MiB of data,
//     registered by clone): PUT /v1/volumes/{id} {source: {image}} round trip
//     at c=1 against the raw FICLONE floor from the Image-Volume's file (open
//     O_EXCL, FICLONE, fsync, close, rename, directory fsync; no HTTP, no
//     catalog), alternating round by round. Goal: p50 <= 2x the floor's.
//  2. Upload and download of a 2 GiB image of dense data: `curl
//     --unix-socket -T FILE` (PUT .../data) and `curl --unix-socket -o FILE`
//     (GET .../data) through the agent, against `cp --reflink=never` of the
//     same file on the same filesystem, and cp followed by an fsync of the
//     copy (the upload answers only once its bytes are durable). Also timed:
//     the same curl commands against a plain Node HTTP server in this
//     process that discards the upload and streams the file (the transport's
//     ceiling: no pool, no catalog, no fsync). Goals: upload >= 1.0x cp+fsync
//     and >= 0.9x the plain server's upload; download >= 0.8x cp. Rounds
//     alternate; outputs are removed untimed. Also timed, for attribution:
//     the download into /dev/null and our own client (`volagent image
//     upload` / `download`, with process start-up).
//  3. The agent's RSS (VmRSS every 25 ms, and VmHWM) during the uploads.
//     Goal: < 150 MiB.
// Prints a table and one JSON line. Exit code 0 whether goals are met or not.
// `--quick`: a 2 GiB image for (1), 256 MiB for (2), fewer rounds.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rm, stat, unlink } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import type { Server } from 'node:http';
import { Agent as HttpAgent, createServer } from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';

import type { LoopFs } from '../test/helpers/loop-fs.js';
import { VOLAGENT } from '../test/helpers/agent.js';
import { makeLoopFs, TEST_ROOT } from '../test/helpers/loop-fs.js';
import type { Latency } from './lib.js';
import {
  atLeast, atMost, below, call, expectStatus, f1, floorClone, fsyncDirectory, GiB, goalNote, latency, launchBenchAgent, MiB, msSince, now,
  onSignalCleanup, RssSampler, runBench, syncFs, writeRuns,
} from './lib.js';

const execFileAsync = promisify(execFile);
const TENANT = 't';
const LABEL = 'bench images';

interface Plan {
  imageBytes: number;
  imageRuns: number;
  clonesPerRound: number;
  cloneRounds: number;
  transferBytes: number;
  transferRounds: number;
}

const FULL: Plan = { imageBytes: 20 * GiB, imageRuns: 256, clonesPerRound: 25, cloneRounds: 4, transferBytes: 2 * GiB, transferRounds: 3 };
const QUICK: Plan = { imageBytes: 2 * GiB, imageRuns: 64, clonesPerRound: 10, cloneRounds: 2, transferBytes: 256 * MiB, transferRounds: 2 };

/** Writes `bytes` of incompressible, never-zero data (a 64 MiB random block, each 4 KiB stamped with its offset). */
async function writeDense(file: string, bytes: number): Promise<void> {
  const block = randomBytes(64 * MiB);
  const handle = await open(file, 'wx');
  try {
    for (let at = 0; at < bytes; at += block.length) {
      const n = Math.min(block.length, bytes - at);
      for (let page = 0; page < n; page += 4096) block.writeUInt32LE(((at + page) / 4096) | 1, page);
      await handle.write(block, 0, n, at);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Runs a command, resolving its wall time in ms; a failure names the command and its stderr. */
async function timed(command: string, args: string[]): Promise<number> {
  const started = now();
  try {
    await execFileAsync(command, args, { maxBuffer: 16 * MiB });
  } catch (error) {
    const e = error as Error & { stderr?: string };
    throw new Error(`${command} ${args.join(' ')}: ${e.stderr?.trim() || e.message}`);
  }
  return msSince(started);
}

/**
 * The transport's ceiling: a plain Node HTTP server on a unix socket, in this
 * process, that discards what is PUT and streams `file` (4 MiB reads) for a
 * GET; no pool, no catalog, no fsync.
 */
async function plainServer(socketPath: string, file: string): Promise<Server> {
  const server = createServer((request, response) => {
    if (request.method === 'PUT') {
      let bytes = 0;
      request.on('data', (chunk: Buffer) => { bytes += chunk.length; });
      request.on('end', () => response.end(String(bytes)));
      return;
    }
    stat(file).then(({ size }) => {
      response.writeHead(200, { 'content-length': size });
      createReadStream(file, { highWaterMark: 4 * MiB }).pipe(response);
    }, () => response.writeHead(500).end());
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return server;
}

const median = (values: number[]): number => latency(values).p50;
const mibPerSecond = (bytes: number, ms: number): number => bytes / MiB / (ms / 1000);

export function main(args: string[]): Promise<number> {
  return runBench(LABEL, 'it makes an XFS loop filesystem', import.meta.url, args, async (run) => {
    const { quick } = run;
    const plan = quick ? QUICK : FULL;
    const agentDir = path.join(TEST_ROOT, `images-agent-${process.pid}-${randomBytes(3).toString('hex')}`);
    const started = now();
    const loadBefore = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
    console.log(`${LABEL}${quick ? ' --quick' : ''}: making an XFS loop filesystem`);
    const xfs: LoopFs = await makeLoopFs('xfs', plan.imageBytes + 8 * plan.transferBytes + 8 * GiB);
    onSignalCleanup.push(() => xfs.cleanup());
    const poolPath = path.join(xfs.mountPoint, 'pool');
    const work = path.join(xfs.mountPoint, 'work');
    await mkdir(poolPath);
    await mkdir(work);
    await mkdir(agentDir, { recursive: true });
    onSignalCleanup.push(() => rm(agentDir, { recursive: true, force: true }));
    const agent = await launchBenchAgent(agentDir, [{ name: 'fast', path: poolPath }]);
    onSignalCleanup.push(() => agent.stop());
    run.agentOutput = agent.output;
    const sock = agent.socket;
    const objects = path.join(poolPath, 'objects');

    // 1. Create from image.
    console.log(`${LABEL}: a ${plan.imageBytes / GiB} GiB image with ${plan.imageRuns} runs of 1 MiB, registered by clone`);
    expectStatus(await call(sock, false, 'PUT', '/v1/volumes/base', { tenant: TENANT, sizeBytes: plan.imageBytes }), 201, 'create base');
    await writeRuns(path.join(objects, 'base.raw'), plan.imageBytes, plan.imageRuns, MiB);
    const registered = await call(sock, false, 'PUT', '/v1/images/img', { volume: 'base', mode: 'clone', tenant: TENANT, visibility: 'public' });
    expectStatus(registered, 201, 'register img');
    const imageVolume = registered.body.volumeId as string;
    const imageFile = path.join(objects, `${imageVolume}.raw`);
    const imageHandle = await open(imageFile, 'r');
    onSignalCleanup.push(() => imageHandle.close().catch(() => undefined));
    await syncFs(xfs.mountPoint);
    const httpAgent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
    onSignalCleanup.push(async () => httpAgent.destroy());
    const agentMs: number[] = [];
    const floorMs: number[] = [];
    let serial = 0;
    for (let round = -1; round < plan.cloneRounds; round++) { // round -1 warms up, untimed
      const names: string[] = [];
      for (let i = 0; i < plan.clonesPerRound; i++) {
        const agentName = `v${serial}`;
        const floorName = `f${serial}`;
        serial++;
        names.push(agentName, floorName);
        const reply = await call(sock, httpAgent, 'PUT', `/v1/volumes/${agentName}`, { tenant: TENANT, source: { image: 'img' } });
        expectStatus(reply, 201, `create ${agentName} from img`);
        if (reply.body.cloneMethod !== 'reflink') throw new Error(`${agentName}: cloneMethod ${reply.body.cloneMethod}, not reflink`);
        const floor = await floorClone(objects, imageHandle.fd, imageFile, floorName);
        if (round >= 0) {
          agentMs.push(reply.ms);
          floorMs.push(floor.ms);
        }
      }
      for (const name of names) {
        if (name.startsWith('v')) expectStatus(await call(sock, httpAgent, 'DELETE', `/v1/volumes/${name}`), 204, `delete ${name}`);
        else await unlink(path.join(objects, `${name}.raw`));
      }
      await fsyncDirectory(objects);
      await syncFs(xfs.mountPoint);
    }
    const agentLatency: Latency = latency(agentMs);
    const floorLatency: Latency = latency(floorMs);

    // 2 and 3. Upload, download, cp.
    console.log(`${LABEL}: ${plan.transferBytes / MiB} MiB of dense data: curl upload and download through the agent vs cp, ${plan.transferRounds} rounds`);
    const source = path.join(work, 'source.raw');
    await writeDense(source, plan.transferBytes);
    const url = (id: string, query = ''): string => `http://volagent/v1/images/${id}/data${query}`;
    const rss = new RssSampler(agent.pid);
    const uploadMs: number[] = [];
    const downloadMs: number[] = [];
    const downloadNullMs: number[] = [];
    const cliUploadMs: number[] = [];
    const cliDownloadMs: number[] = [];
    const plainUploadMs: number[] = [];
    const plainDownloadMs: number[] = [];
    const plainSocket = path.join(agentDir, 'plain.sock');
    const plain = await plainServer(plainSocket, source);
    onSignalCleanup.push(() => new Promise<void>((resolve) => plain.close(() => resolve())));
    const cpMs: number[] = [];
    const cpSyncMs: number[] = [];
    let rssBeforeUploads = 0;
    for (let round = -1; round < plan.transferRounds; round++) { // round -1 warms the page cache, untimed
      const id = `up${round + 1}`;
      const copy = path.join(work, `cp-${round + 1}.raw`);
      const downloaded = path.join(work, `down-${round + 1}.raw`);
      const cp = await timed('cp', ['--reflink=never', source, copy]);
      const cpSync = cp + await timed('sync', [copy]);
      await rss.sample();
      if (round === 0) rssBeforeUploads = rss.peakBytes;
      if (round >= 0) rss.start();
      const up = await timed('curl', ['--fail-with-body', '-sS', '--unix-socket', sock, '-T', source, url(id, `?tenant=${TENANT}`)]);
      rss.stop();
      const down = await timed('curl', ['--fail-with-body', '-sS', '--unix-socket', sock, '-o', downloaded, url(id)]);
      // Attribution: the same download into /dev/null, so what the agent sends is told apart from curl's writes to the file.
      const downNull = await timed('curl', ['--fail-with-body', '-sS', '--unix-socket', sock, '-o', '/dev/null', url(id)]);
      // Our own client: 1 MiB reads up; down, 4 MiB sparse writes and an fsync.
      const cliDownloaded = path.join(work, `cli-${round + 1}.raw`);
      const cliUp = await timed(process.execPath, [VOLAGENT, '--socket', sock, 'image', 'upload', `${id}-cli`, source, '--tenant', TENANT]);
      const cliDown = await timed(process.execPath, [VOLAGENT, '--socket', sock, 'image', 'download', `${id}-cli`, cliDownloaded]);
      await execFileAsync('cmp', [source, cliDownloaded]);
      expectStatus(await call(sock, false, 'DELETE', `/v1/images/${id}-cli`), 204, `delete image ${id}-cli`);
      await unlink(cliDownloaded);
      const plainUp = await timed('curl', ['--fail-with-body', '-sS', '--unix-socket', plainSocket, '-o', '/dev/null', '-T', source, 'http://plain/']);
      const plainDown = await timed('curl', ['--fail-with-body', '-sS', '--unix-socket', plainSocket, '-o', cliDownloaded, 'http://plain/']);
      await unlink(cliDownloaded);
      const sizes = await Promise.all([copy, downloaded].map(async (file) => (await stat(file)).size));
      if (sizes.some((size) => size !== plan.transferBytes)) throw new Error(`round ${round}: sizes ${sizes.join(', ')}, not ${plan.transferBytes}`);
      await execFileAsync('cmp', [source, downloaded]); // untimed: the round trip kept every byte (cmp fails otherwise)
      if (round >= 0) {
        uploadMs.push(up);
        downloadMs.push(down);
        downloadNullMs.push(downNull);
        cliUploadMs.push(cliUp);
        cliDownloadMs.push(cliDown);
        plainUploadMs.push(plainUp);
        plainDownloadMs.push(plainDown);
        cpMs.push(cp);
        cpSyncMs.push(cpSync);
      }
      expectStatus(await call(sock, false, 'DELETE', `/v1/images/${id}`), 204, `delete image ${id}`);
      await Promise.all([unlink(copy), unlink(downloaded)]);
      await syncFs(xfs.mountPoint);
    }
    const vmHwm = await rss.highWaterBytes();

    const bytes = plan.transferBytes;
    const figures = {
      uploadMiBps: mibPerSecond(bytes, median(uploadMs)),
      downloadMiBps: mibPerSecond(bytes, median(downloadMs)),
      downloadToNullMiBps: mibPerSecond(bytes, median(downloadNullMs)),
      cliUploadMiBps: mibPerSecond(bytes, median(cliUploadMs)),
      cliDownloadMiBps: mibPerSecond(bytes, median(cliDownloadMs)),
      plainUploadMiBps: mibPerSecond(bytes, median(plainUploadMs)),
      plainDownloadMiBps: mibPerSecond(bytes, median(plainDownloadMs)),
      cpMiBps: mibPerSecond(bytes, median(cpMs)),
      cpSyncMiBps: mibPerSecond(bytes, median(cpSyncMs)),
    };
    const goals = {
      createP50Ratio: agentLatency.p50 / floorLatency.p50,
      uploadVsCp: figures.uploadMiBps / figures.cpMiBps,
      downloadVsCp: figures.downloadMiBps / figures.cpMiBps,
      uploadVsCpSync: figures.uploadMiBps / figures.cpSyncMiBps,
      downloadVsCpSync: figures.downloadMiBps / figures.cpSyncMiBps,
      uploadVsPlain: figures.uploadMiBps / figures.plainUploadMiBps,
      peakRssDuringUploadBytes: rss.peakBytes,
    };
    const create = atMost('create from image p50 agent/floor', goals.createP50Ratio, 'x', 2);
    const uploadVsCpSync = atLeast('upload vs cp+fsync', goals.uploadVsCpSync, 'x', 1);
    const uploadVsPlain = atLeast('upload vs plain Node server', goals.uploadVsPlain, 'x', 0.9);
    const download = atLeast('download vs cp', goals.downloadVsCp, 'x', 0.8);
    const rssGoal = below('agent peak RSS during uploads', rss.peakBytes / MiB, 'MiB', 150);
    const verdicts = [create, uploadVsCpSync, uploadVsPlain, download, rssGoal];
    const met = { create: create.met, upload: uploadVsCpSync.met && uploadVsPlain.met, download: download.met, rss: rssGoal.met };
    const loadAfter = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
    console.log('');
    console.log(`create from a ${plan.imageBytes / GiB} GiB image, c=1, ${agentMs.length} per side, ms: agent p50 ${f1(agentLatency.p50)} p99 ${f1(agentLatency.p99)}; `
      + `floor p50 ${f1(floorLatency.p50)} p99 ${f1(floorLatency.p99)}; ratio ${f1(goals.createP50Ratio)}x (${goalNote(create)})`);
    console.log(`${bytes / MiB} MiB, median of ${plan.transferRounds}, MiB/s: curl upload ${f1(figures.uploadMiBps)}, curl download ${f1(figures.downloadMiBps)}, `
      + `cp ${f1(figures.cpMiBps)}, cp+fsync ${f1(figures.cpSyncMiBps)}; curl download into /dev/null ${f1(figures.downloadToNullMiBps)}; `
      + `volagent image upload ${f1(figures.cliUploadMiBps)}, download (sparse, fsync'd) ${f1(figures.cliDownloadMiBps)}; `
      + `curl to/from a plain Node server (discards; streams the file) ${f1(figures.plainUploadMiBps)} / ${f1(figures.plainDownloadMiBps)}`);
    console.log(`  upload ${f1(goals.uploadVsCp)}x cp, ${f1(goals.uploadVsCpSync)}x cp+fsync (${goalNote(uploadVsCpSync)}), `
      + `${f1(goals.uploadVsPlain)}x the plain server (${goalNote(uploadVsPlain)}); `
      + `download ${f1(goals.downloadVsCp)}x cp (${goalNote(download)}), ${f1(goals.downloadVsCpSync)}x cp+fsync`);
    console.log(`agent RSS: ${f1(rssBeforeUploads / MiB)} MiB before the uploads, peak during uploads ${f1(rss.peakBytes / MiB)} MiB (${rss.samples} samples), `
      + `VmHWM ${vmHwm === undefined ? '-' : f1(vmHwm / MiB)} MiB (during uploads ${goalNote(rssGoal)})`);
    console.log(`total ${Math.round(msSince(started) / 1000)} s; load average before ${loadBefore}, after ${loadAfter} (other work on the host skews every figure)`);
    console.log(JSON.stringify({
      bench: 'images', quick, plan,
      create: { agent: agentLatency, floor: floorLatency },
      transfer: { uploadMs, downloadMs, downloadNullMs, cliUploadMs, cliDownloadMs, plainUploadMs, plainDownloadMs, cpMs, cpSyncMs, ...figures },
      rss: { beforeUploadsBytes: rssBeforeUploads, peakDuringUploadsBytes: rss.peakBytes, samples: rss.samples, vmHwmBytes: vmHwm ?? null },
      goals: { ...goals, met },
      verdicts,
      totalSeconds: msSince(started) / 1000,
      loadAverage: { before: loadBefore, after: loadAfter },
    }));
    return 0;
  });
}
