// `volagent clone` on a real terminal: the CLI runs in a tmux pane (a pty,
// 200 columns), against a real volagentd with an ext4 pool (no reflink: a
// clone is a copy, a 202 operation). The pane is read with capture-pane while
// the copy runs: the progress bar has its documented shape and its percent
// rises; at the end the bar is erased and the result printed. Ctrl-C typed
// into the pane (send-keys C-c: the pty's line discipline sends SIGINT)
// cancels the operation, and the partial volume is gone from the catalog and
// the pool directory. To give the terminal time to show progress, the test
// slows the agent itself: it runs 15 ms out of every 150 ms (SIGSTOP/SIGCONT).
// Needs root (loop filesystem) and tmux.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import t from 'tap';

import type { AgentProcess } from '../helpers/agent.js';
import { poolEntries, readCatalog, startAgent, VOLAGENT } from '../helpers/agent.js';
import { makeLoopFs } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { tempDir } from '../helpers/temp-dir.js';
import { formatBytes } from '../../src/common/bytes.js';

const execFileAsync = promisify(execFile);
const MiB = 2 ** 20;
const GiB = 2 ** 30;
const COLUMNS = 200;
/** The bar's width on a 200-column terminal: min(40, columns - 60). */
const BAR_WIDTH = 40;
/** `clone ID [###---] NN% DONE/TOTAL RATE/s`, as progress-bar.ts draws it. */
const BAR_LINE = /^clone (\S+) \[(#*)(-*)\] +(\d+)% (\d+(?:\.\d)? [KMGT]?i?B)\/(\d+(?:\.\d)? [KMGT]?i?B) \d+(?:\.\d)? [KMGT]?i?B\/s$/;

/** A tmux server of its own (-L), so the test never touches anyone's sessions. */
class Terminal {
  private constructor(private readonly server: string, private readonly session: string) {}

  static async start(command: string): Promise<Terminal> {
    const terminal = new Terminal(`volagent-test-${randomBytes(6).toString('hex')}`, 'cli');
    // The pane stays after the command so its last screen can be read; EXIT= says how it ended.
    await terminal.tmux('new-session', '-d', '-s', terminal.session, '-x', String(COLUMNS), '-y', '20', `${command}; echo "EXIT=$?"; sleep 600`);
    return terminal;
  }

  private async tmux(...args: string[]): Promise<string> {
    return (await execFileAsync('tmux', ['-L', this.server, ...args])).stdout;
  }

  /** The pane's visible lines, trailing blanks dropped. */
  async screen(): Promise<string[]> {
    return (await this.tmux('capture-pane', '-p', '-t', this.session)).split('\n').map((line) => line.trimEnd()).filter((line) => line !== '');
  }

  /** Ctrl-C typed into the pane. */
  interrupt(): Promise<string> {
    return this.tmux('send-keys', '-t', this.session, 'C-c');
  }

  async close(): Promise<void> {
    await this.tmux('kill-server').catch(() => undefined);
  }
}

interface BarSeen {
  id: string;
  hashes: number;
  dashes: number;
  percent: number;
  done: string;
  total: string;
}

function barOf(screen: string[]): BarSeen | undefined {
  for (const line of screen) {
    const m = BAR_LINE.exec(line);
    if (m) return { id: m[1]!, hashes: m[2]!.length, dashes: m[3]!.length, percent: Number(m[4]), done: m[5]!, total: m[6]! };
  }
  return undefined;
}

/** Runs the agent 15 ms of every 150 ms until stopped; always leaves it running. */
function throttle(agent: AgentProcess): () => Promise<void> {
  let on = true;
  const loop = (async () => {
    while (on) {
      agent.child.kill('SIGCONT');
      await sleep(15);
      if (!on) break;
      agent.child.kill('SIGSTOP');
      await sleep(135);
    }
    agent.child.kill('SIGCONT');
  })();
  return async () => {
    on = false;
    await loop;
  };
}

/** Reads the pane until `until` holds for a screen (or 60 s pass); every screen read is passed to `each`. */
async function watch(terminal: Terminal, until: (screen: string[]) => boolean, each: (screen: string[]) => void = () => undefined): Promise<string[]> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const screen = await terminal.screen();
    each(screen);
    if (until(screen) || Date.now() > deadline) return screen;
    await sleep(50);
  }
}

if (!skipUnlessRoot(t)) {
  const fs = await makeLoopFs('ext4', 3 * GiB);
  t.teardown(() => fs.cleanup());
  const poolPath = path.join(fs.mountPoint, 'pool');
  await mkdir(poolPath);
  const agent = await startAgent(t, { dir: await tempDir(t, 'volagent-pty-'), pools: [{ name: 'default', path: poolPath }] });
  t.teardown(async () => {
    agent.child.kill('SIGCONT');
    await agent.stop();
  });
  const cli = (args: string): string => `${process.execPath} ${VOLAGENT} --socket ${agent.socket} ${args}`;

  // Set-up, not an assertion: tap ends a file whose top level asserts and then waits.
  const created = await agent.request('PUT', '/v1/volumes/big', { tenant: 't1', sizeBytes: 1 * GiB });
  if (created.status !== 201) throw new Error(`PUT big: ${created.status} ${created.text}`);
  const chunk = randomBytes(8 * MiB);
  const handle = await open(path.join(poolPath, 'objects', 'big.raw'), 'r+');
  for (let at = 0; at < 512 * MiB; at += chunk.length) await handle.write(chunk, 0, chunk.length, at);
  await handle.sync();
  await handle.close();

  await t.test('the progress bar on a terminal: its shape, a rising percent, erased at the end', async (t) => {
    const terminal = await Terminal.start(cli('clone big big2 --tenant t1'));
    t.teardown(() => terminal.close());
    const release = throttle(agent);
    const seen: BarSeen[] = [];
    const last = await watch(terminal, (screen) => screen.some((line) => line.startsWith('EXIT=')), (screen) => {
      const bar = barOf(screen);
      if (bar && (seen.length === 0 || seen.at(-1)!.percent !== bar.percent)) seen.push(bar);
    });
    await release();
    t.ok(seen.length >= 4, `the bar was drawn and redrawn (${seen.map((b) => `${b.percent}%`).join(' ')})`);
    const operation = (await agent.request('GET', '/v1/operations')).body.find((o: { target: string }) => o.target === 'big2');
    t.match(operation, { kind: 'clone', state: 'succeeded' });
    const total = formatBytes(operation.totalBytes);
    for (const bar of seen) {
      t.equal(bar.id, 'big2', 'labelled with the new volume');
      t.equal(bar.hashes + bar.dashes, BAR_WIDTH, `${bar.percent}%: 40 cells`);
      // The bar fills round(fraction * 40) cells and prints the fraction rounded to 1%: within 0.5 + 0.2 cells of percent * 0.4.
      t.ok(Math.abs(bar.hashes - (bar.percent / 100) * BAR_WIDTH) < 0.7, `${bar.percent}%: ${bar.hashes} cells of # fill its share`);
      t.equal(bar.total, total, 'DONE/TOTAL names the operation\'s total');
    }
    t.same(seen.map((b) => b.percent), [...seen.map((b) => b.percent)].sort((a, b) => a - b), 'the percent never falls');
    t.ok(seen.some((b) => b.percent > 0 && b.percent < 100), 'a percent between 0 and 100 was shown');
    t.same(last.filter((line) => /\[[#-]+\]/.test(line)), [], 'the bar is erased when the copy ends');
    t.ok(last.includes('created big2: 1.0 GiB in pool default, tenant t1, from volume big, by copy_file_range'), 'the result is printed');
    t.ok(last.includes('EXIT=0'), last.join('\n'));
    t.equal(readCatalog(agent.catalogPath).volumes.find((v) => v.id === 'big2')?.state, 'available');
  });

  await t.test('Ctrl-C typed into the terminal cancels the clone: no volume in the catalog or the pool, the operation cancelled', async (t) => {
    const before = await poolEntries(poolPath);
    const terminal = await Terminal.start(cli('clone big big3 --tenant t1'));
    t.teardown(() => terminal.close());
    const release = throttle(agent);
    t.teardown(release);
    const drawn = await watch(terminal, (screen) => (barOf(screen)?.percent ?? 0) > 0 || screen.some((line) => line.startsWith('EXIT=')));
    const bar = barOf(drawn);
    t.ok(bar && bar.percent > 0 && bar.percent < 100, `a bar mid-copy (${bar?.percent}%) before Ctrl-C`);
    t.ok((await poolEntries(poolPath)).length > before.length, 'the partial volume is in the pool while the copy runs');
    await terminal.interrupt();
    const last = await watch(terminal, (screen) => screen.some((line) => line.startsWith('EXIT=')));
    await release();
    const cancelling = last.map((line) => /^cancelling operation (op-\S+) \(Ctrl-C again to stop waiting\)$/.exec(line)).find(Boolean);
    t.ok(cancelling, `the CLI says it cancels: ${last.join('\n')}`);
    t.ok(last.includes('volagent: OPERATION_CANCELLED: clone of volume big to big3 cancelled; nothing was left behind'));
    t.ok(last.includes('EXIT=1'));
    t.same(last.filter((line) => /\[[#-]+\]/.test(line)), [], 'no bar left on the screen');
    const operationId = cancelling![1]!;
    const operation = await agent.request('GET', `/v1/operations/${operationId}`);
    t.match(operation.body, { id: operationId, kind: 'clone', target: 'big3', state: 'cancelled' });
    t.equal((await agent.request('GET', '/v1/volumes/big3')).status, 404, 'the API has no big3');
    t.notOk(readCatalog(agent.catalogPath).volumes.some((v) => v.id === 'big3'), 'no catalog row');
    t.same(await poolEntries(poolPath), before, 'no object and no temporary in the pool directory');
  });
}
