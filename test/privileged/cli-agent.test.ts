// `volagent` against a real volagentd: every command on a pool, with the
// exit statuses the agent's answers map to, a copy clone followed to its end,
// Ctrl-C cancelling one (nothing left behind), check and repair, and an agent
// that has stopped. Pools are on loop filesystems: ext4 (clones copy, 202
// operations) and XFS with reflink (constant-time clones, answered at once).
// Needs root.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';

import type { AgentProcess } from '../helpers/agent.js';
import { poolEntries, readCatalog, startAgent, VOLAGENT, waitOperation } from '../helpers/agent.js';
import { sha256 } from '../helpers/files.js';
import type { FsType } from '../helpers/loop-fs.js';
import { makeLoopFs } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { tempDir } from '../helpers/temp-dir.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

function volagent(args: string[], onSpawn?: (child: ReturnType<typeof spawn>) => void): Promise<Outcome> {
  const env = { ...process.env };
  delete env.VOLAGENT_SOCKET;
  const child = spawn(process.execPath, [VOLAGENT, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  onSpawn?.(child);
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

/** Fills [0, bytes) of a pool object with non-zero data, so a copy has `bytes` to move. */
async function fill(file: string, bytes: number): Promise<void> {
  const chunk = randomBytes(8 * MiB);
  chunk[0] = 0xff;
  const handle = await open(file, 'r+');
  try {
    for (let at = 0; at < bytes; at += chunk.length) await handle.write(chunk, 0, Math.min(chunk.length, bytes - at), at);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function agentOn(t: Test, fsType: FsType, sizeBytes: number): Promise<{ agent: AgentProcess; poolPath: string; cli: (...args: string[]) => Promise<Outcome> }> {
  const fs = await makeLoopFs(fsType, sizeBytes);
  t.teardown(() => fs.cleanup());
  const poolPath = path.join(fs.mountPoint, 'pool');
  await mkdir(poolPath);
  const agent = await startAgent(t, { dir: await tempDir(t, 'volagent-cli-'), pools: [{ name: 'default', path: poolPath }] });
  t.teardown(() => agent.stop());
  return { agent, poolPath, cli: (...args) => volagent(['--socket', agent.socket, ...args]) };
}

const json = (o: Outcome): any => JSON.parse(o.stdout);

if (!skipUnlessRoot(t)) {
  t.test('ext4 pool: every command, copy clones as operations', async (t) => {
    const { agent, poolPath, cli } = await agentOn(t, 'ext4', 3 * GiB);
    const object = (id: string): string => path.join(poolPath, 'objects', `${id}.raw`);

    t.test('version and pools', async (t) => {
      t.match(json(await cli('version', '--json')), { version: /^\d+\.\d+\.\d+/, api: 1 });
      const pools = await cli('pools', '--json');
      t.equal(pools.code, 0, pools.stderr);
      t.match(json(pools), [{ name: 'default', backend: 'file', capabilities: { reflink: false, constantTimeClone: false } }]);
      t.match((await cli('pools')).stdout, /^NAME +BACKEND +REFLINK +CONSTANT-TIME +TOTAL +USED +FREE +HEALTH\ndefault +file +no +no +.* -\n/);
    });

    t.test('create, clone (followed to its end), ls, show', async (t) => {
      const made = await cli('create', 'v1', '--size', '64MiB', '--tenant', 't1');
      t.equal(made.code, 0, made.stderr);
      t.equal(made.stdout, 'created v1: 64.0 MiB in pool default, tenant t1\n');
      await fill(object('v1'), 16 * MiB);

      const clone = await cli('clone', 'v1', 'v2', '--tenant', 't1');
      t.equal(clone.code, 0, clone.stderr);
      t.equal(clone.stdout, 'created v2: 64.0 MiB in pool default, tenant t1, from volume v1, by copy_file_range\n');
      t.equal(await sha256(object('v2')), await sha256(object('v1')), 'the clone has the same bytes');

      const again = await cli('clone', 'v1', 'v2', '--tenant', 't1');
      t.equal(again.code, 0, again.stderr);
      t.match(again.stdout, /^v2: 64\.0 MiB .*\(it existed already, identical\)\n$/);

      const ls = await cli('ls', '--json', '--tenant', 't1');
      t.match(json(ls), [{ id: 'v1', state: 'available', cloneMethod: 'create' }, { id: 'v2', state: 'available', cloneMethod: 'copy_file_range', source: { volume: 'v1' } }]);
      t.match((await cli('ls')).stdout, /^ID +POOL +TENANT +KIND +SIZE +ALLOCATED +STATE +METHOD +RO\nv1 +default +t1 +volume +64\.0 MiB +16\.0 MiB +available +create +no\nv2 /);
      t.match((await cli('show', 'v2')).stdout, /^id: +v2\n.*source: +volume v1\nmethod: +copy_file_range\n.*snapshots: none\n$/s);
      t.same(readCatalog(agent.catalogPath).volumes.map((v) => [v.id, v.state]), [['v1', 'available'], ['v2', 'available']]);
    });

    t.test("the agent's refusals map to exit statuses", async (t) => {
      const cases: Array<[string[], number, RegExp]> = [
        [['show', 'nope'], 3, /^volagent: VOLUME_NOT_FOUND: /],
        [['clone', 'nope', 'v9', '--tenant', 't1'], 3, /^volagent: VOLUME_NOT_FOUND: /],
        [['create', 'v2', '--size', '1MiB', '--tenant', 't1'], 4, /^volagent: VOLUME_EXISTS: /],
        [['create', 'v9', '--size', '1000', '--tenant', 't1'], 2, /^volagent: INVALID_SIZE: /],
        [['create', 'bad..id', '--size', '1MiB', '--tenant', 't1'], 2, /^volagent: INVALID_ID: /],
        [['create', 'v9', '--size', '1MiB', '--tenant', 't1', '--pool', 'other'], 3, /^volagent: POOL_NOT_FOUND: /],
        [['resize', 'v1', '--size', '32MiB'], 2, /^volagent: SHRINK_NOT_SUPPORTED: /],
        [['ops', 'op-none'], 3, /^volagent: OPERATION_NOT_FOUND: /],
      ];
      for (const [args, code, stderr] of cases) {
        const r = await cli(...args);
        t.equal(r.code, code, `${args.join(' ')} exits ${code}`);
        t.match(r.stderr, stderr);
        t.equal(r.stderr.split('\n').length, 2, 'one line');
      }
      t.notOk(existsSync(object('v9')), 'nothing was made');
    });

    t.test('resize, snapshots, rm', async (t) => {
      const grown = await cli('resize', 'v1', '--size', '128MiB', '--json');
      t.equal(grown.code, 0, grown.stderr);
      t.match(json(grown), { id: 'v1', sizeBytes: 128 * MiB });

      const snap = await cli('snapshot', 'v1', 's1');
      t.equal(snap.code, 0, snap.stderr);
      t.equal(snap.stdout, 'created snapshot s1 of v1: 128 MiB in pool default, by copy_file_range\n');
      t.match(json(await cli('snapshots', 'v1', '--json')), [{ id: 's1', volume: 'v1', readOnly: true, state: 'available' }]);
      t.match((await cli('show', 'v1')).stdout, /snapshots:\n {2}ID +VOLUME +SIZE +ALLOCATED +STATE +METHOD +CREATED\n {2}s1 +v1 +128 MiB /);

      const fromSnap = await cli('clone', 's1', 'v3', '--from-snapshot', '--tenant', 't1', '--size', '256MiB', '--json');
      t.equal(fromSnap.code, 0, fromSnap.stderr);
      t.match(json(fromSnap), { id: 'v3', sizeBytes: 256 * MiB, source: { snapshot: 's1' } });

      const busy = await cli('rm', 'v1');
      t.equal(busy.code, 4);
      t.match(busy.stderr, /^volagent: VOLUME_HAS_SNAPSHOTS: /);
      t.equal((await cli('rm-snapshot', 'v1', 's1')).code, 0);
      const rm = await cli('rm', 'v1');
      t.equal(rm.code, 0, rm.stderr);
      t.equal(rm.stdout, 'deleted v1\n');
      t.equal((await cli('rm', 'v1')).code, 0, 'deleting again is done too');
      t.same(readCatalog(agent.catalogPath).volumes.map((v) => v.id), ['v2', 'v3']);
      t.same(await poolEntries(poolPath), ['v2.raw', 'v3.raw']);
    });

    t.test('clone --no-wait, then ops', async (t) => {
      const started = await cli('clone', 'v2', 'v4', '--tenant', 't1', '--no-wait', '--json');
      t.equal(started.code, 0, started.stderr);
      const { operation } = json(started);
      t.match(operation, { id: /^op-/, kind: 'clone', target: 'v4' });
      t.equal((await waitOperation(agent, operation.id)).state, 'succeeded');
      const one = await cli('ops', operation.id);
      t.match(one.stdout, new RegExp(`^id: +${operation.id}\\nkind: +clone\\ntarget: +v4\\nstate: +succeeded\\nprogress: +100% `));
      t.match((await cli('ops')).stdout, new RegExp(`^ID +KIND +TARGET +STATE +PROGRESS +CREATED +ERROR\\n${operation.id} +clone +v4 +succeeded`));
      const cancel = await cli('cancel', operation.id);
      t.equal(cancel.code, 0);
      t.equal(cancel.stdout, `operation ${operation.id} (clone v4) had already ended: succeeded\n`);
    });

    t.test('Ctrl-C during a copy clone cancels it and leaves nothing behind', async (t) => {
      t.equal((await cli('create', 'big', '--size', '2GiB', '--tenant', 't1')).code, 0);
      await fill(object('big'), 1536 * MiB);
      const before = await poolEntries(poolPath);
      const r = await volagent(['--socket', agent.socket, 'clone', 'big', 'big2', '--tenant', 't1'], (child) => {
        const timer = setInterval(() => {
          void agent.request('GET', '/v1/operations').then((reply) => {
            if ((reply.body as Array<{ target: string; state: string }>).some((o) => o.target === 'big2' && o.state === 'running') && !child.killed) {
              clearInterval(timer);
              child.kill('SIGINT');
            }
          });
        }, 20);
        child.on('close', () => clearInterval(timer));
      });
      t.equal(r.code, 1, r.stderr);
      t.equal(r.stderr, 'volagent: OPERATION_CANCELLED: clone of volume big to big2 cancelled; nothing was left behind\n');
      t.equal(r.stdout, '');
      t.same(await poolEntries(poolPath), before, 'no object and no temporary left');
      t.notOk(readCatalog(agent.catalogPath).volumes.some((v) => v.id === 'big2'), 'no row left');
      t.match(json(await cli('ops', '--json')), [{ target: 'big2', state: 'cancelled' }], 'the operation is recorded cancelled');
      const show = await cli('show', 'big2');
      t.equal(show.code, 3);
    });

    t.test('check finds an orphan; check --repair removes it', async (t) => {
      const clean = await cli('check');
      t.equal(clean.code, 0, clean.stdout);
      t.equal(clean.stdout, 'clean\n');
      await writeFile(object('stray'), 'left by someone');
      const found = await cli('check');
      t.equal(found.code, 1);
      t.match(found.stdout, /^orphan default stray: .+\n1 difference\n$/);
      t.ok(existsSync(object('stray')), 'check changes nothing');
      const repair = await cli('check', '--repair');
      t.equal(repair.code, 0, repair.stdout);
      t.match(repair.stdout, /^orphan default stray: .+ \[removed\]\nclean \(1 difference repaired\)\n$/);
      t.notOk(existsSync(object('stray')));
    });

    t.test('a stopped agent: exit 5, the message names the socket', async (t) => {
      t.equal(await agent.stop(), 0);
      const r = await cli('ls');
      t.equal(r.code, 5);
      t.match(r.stderr, new RegExp(`^volagent: AGENT_UNREACHABLE: (no agent socket at|nothing listens on) ${agent.socket.replace(/[.]/g, '\\.')} \\(from --socket\\): .*the agent is not running`));
    });
  });

  t.test('xfs pool: a reflink clone is answered at once, without an operation', async (t) => {
    const { poolPath, cli } = await agentOn(t, 'xfs', 1 * GiB);
    t.equal((await cli('create', 'v1', '--size', '256MiB', '--tenant', 't1')).code, 0);
    await fill(path.join(poolPath, 'objects', 'v1.raw'), 64 * MiB);
    const clone = await cli('clone', 'v1', 'v2', '--tenant', 't1', '--json');
    t.equal(clone.code, 0, clone.stderr);
    t.match(json(clone), { id: 'v2', cloneMethod: 'reflink', state: 'available' });
    t.same(json(await cli('ops', '--json')), [], 'no operation was needed');
    const snap = await cli('snapshot', 'v2', 's1');
    t.equal(snap.stdout, 'created snapshot s1 of v2: 256 MiB in pool default, by reflink\n');
    t.match((await cli('pools')).stdout, /\ndefault +file +yes +yes +/);
  });
}
