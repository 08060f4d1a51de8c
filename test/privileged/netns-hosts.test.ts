// The two-host harness (test/helpers/netns.ts) proven with real parts: a
// volagentd inside host A (its pool on an XFS loop filesystem, its control
// socket reached from the root namespace) exports a volume over NBD on A's
// address; nbdinfo and nbdcopy inside host B read it over the veth pair, whose
// counters show the bytes crossed; the root namespace cannot reach it. Three
// hosts are joined pairwise. Every namespace and process is gone afterwards.
import { connect } from 'node:net';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, readlink, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';

import BetterSqlite3 from 'better-sqlite3';
import t from 'tap';

import type { AgentSpec } from '../helpers/agent.js';
import { startAgent } from '../helpers/agent.js';
import { sha256 } from '../helpers/files.js';
import { makeLoopFs } from '../helpers/loop-fs.js';
import type { Host, LinkCounters } from '../helpers/netns.js';
import { harnessNamespaces, makeHosts } from '../helpers/netns.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { outcome } from '../helpers/run.js';

const MiB = 1024 * 1024;
const NBD_PORT = 10809;
const VOLUME_BYTES = 64 * MiB;
/** [offset, length] of the volume's data; the rest is holes. */
const DATA_RUNS: Array<[number, number]> = [[0, MiB], [8 * MiB, 2 * MiB], [40 * MiB, MiB], [63 * MiB, MiB]];
const DATA_BYTES = DATA_RUNS.reduce((sum, [, length]) => sum + length, 0);

/**
 * The agent of `host`: the one place its config is written. Its `[nbd]`
 * listens on the host's address besides its unix socket; the control socket
 * is a unix path in `dir`, reached from the root namespace.
 */
function agentSpecOn(host: Host, dir: string, poolPath: string): AgentSpec {
  return { dir, pools: [{ name: 'pool', path: poolPath }], nbdListen: [`tcp:${host.address}:${NBD_PORT}`], nbdPlaintextTcp: true, spawn: host.spawn };
}

/** The namespace inode a process runs in, as `/proc/PID/ns/net` names it (`net:[N]`). */
async function netnsOf(pid: number): Promise<string> {
  return readlink(`/proc/${pid}/ns/net`);
}

async function netnsFileInode(name: string): Promise<string> {
  return `net:[${(await stat(path.join('/run/netns', name))).ino}]`;
}

/** The interfaces of a host, by name. */
async function interfaces(host: Host): Promise<string[]> {
  const out = await outcome('ip', ['-n', host.name, '-j', 'link', 'show']);
  return (JSON.parse(out.stdout) as Array<{ ifname: string }>).map((link) => link.ifname).sort();
}

/** Both ends' counters of the pair between `a` and `b`, read until two reads in a row agree (no frame in flight). */
async function settledPair(a: Host, b: Host): Promise<{ a: LinkCounters; b: LinkCounters }> {
  let last = '';
  for (let i = 0; i < 50; i++) {
    const now = { a: await a.counters(b), b: await b.counters(a) };
    if (JSON.stringify(now) === last) return now;
    last = JSON.stringify(now);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`the counters of ${a.link(b)}/${b.link(a)} never settled: ${last}`);
}

/** A TCP connection from the root namespace: resolves the error code it fails with, or 'connected'. */
function connectFromRoot(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

function alive(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

if (!skipUnlessRoot(t)) {
  const ours = (names: string[]): string[] => names.filter((name) => name.startsWith(`vtns-${process.pid}-`));

  let names: string[] = [];
  let pids: number[] = [];
  await t.test('a volagentd in host A serves NBD to host B over their veth pair, and to nothing in the root namespace', async (t) => {
    const xfs = await makeLoopFs('xfs', 512 * MiB);
    t.teardown(() => xfs.cleanup());
    const [a, b] = (await makeHosts(t)) as [Host, Host];
    names = [a.name, b.name];
    t.same(ours(await harnessNamespaces()), names, 'two namespaces of this run');
    t.same(await interfaces(a), ['lo', 'vt-b'], 'host A has its loopback and the veth to B, nothing else');
    t.same(await interfaces(b), ['lo', 'vt-a'], 'host B has its loopback and the veth to A, nothing else');
    t.equal(a.address, '127.21.0.1');
    t.equal(b.address, '127.21.0.2');

    const poolPath = path.join(xfs.mountPoint, 'pool');
    const dir = path.join(xfs.mountPoint, 'agent');
    await mkdir(poolPath);
    await mkdir(dir);
    const agent = await startAgent(t, agentSpecOn(a, dir, poolPath));
    const agentPid = agent.child.pid!;
    pids = [agentPid];
    t.same(a.pids, [agentPid], 'the agent was spawned in host A');
    t.equal(await netnsOf(agentPid), await netnsFileInode(a.name), "the agent's network namespace is host A's");

    t.equal((await agent.request('PUT', '/v1/volumes/v1', { tenant: 't1', sizeBytes: VOLUME_BYTES })).status, 201);
    const objectFile = path.join(poolPath, 'objects', 'v1.raw');
    const expected = Buffer.alloc(VOLUME_BYTES);
    const handle = await open(objectFile, 'r+');
    for (const [offset, length] of DATA_RUNS) {
      const bytes = randomBytes(length);
      bytes.copy(expected, offset);
      await handle.write(bytes, 0, length, offset);
    }
    await handle.sync();
    await handle.close();

    const exported = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'nbd', readOnly: true });
    t.equal(exported.status, 201, exported.text);
    const id = exported.body.id as string;
    const uri = `nbd://${a.address}:${NBD_PORT}/${id}`;
    t.equal(exported.body.uris[1], uri, "the export's TCP URI is on host A's address");
    const db = new BetterSqlite3(agent.catalogPath, { readonly: true, fileMustExist: true });
    t.teardown(() => db.close());
    t.same(db.prepare('SELECT id, volume_id, protocol, read_only, state FROM exports').all(), [{ id, volume_id: 'v1', protocol: 'nbd', read_only: 1, state: 'available' }]);

    const before = await settledPair(a, b);
    const info = await b.run('nbdinfo', ['--json', uri]);
    t.equal(info.code, 0, info.stderr);
    t.match(JSON.parse(info.stdout).exports[0], { 'export-name': id, 'export-size': VOLUME_BYTES, is_read_only: true, contexts: ['base:allocation'] });
    const copied = path.join(dir, 'copied.raw');
    const copy = await b.run('nbdcopy', [uri, copied]);
    t.equal(copy.code, 0, copy.stderr);
    t.ok((await readFile(copied)).equals(expected), 'nbdcopy in host B read every byte of the volume');
    t.equal(await sha256(copied), await sha256(objectFile), 'and the copy equals the pool file');

    const after = await settledPair(a, b);
    const sent = after.a.txBytes - before.a.txBytes;
    t.ok(sent >= DATA_BYTES, `host A sent at least the volume's data over vt-b (${sent} >= ${DATA_BYTES} bytes)`);
    t.ok(sent < DATA_BYTES + MiB, `and not much more: nbdcopy skips the holes (${sent} bytes)`);
    t.equal(after.b.rxBytes, after.a.txBytes, 'what A sent on the pair, B received');
    t.equal(after.a.rxBytes, after.b.txBytes, 'what B sent on the pair, A received');

    // The root namespace has no route to the pair: 127.21.0.1 there is its own loopback.
    t.equal(await connectFromRoot(a.address, NBD_PORT), 'ECONNREFUSED', "from the root namespace A's address is refused");
    const fromRoot = await outcome('nbdinfo', [uri]);
    t.equal(fromRoot.code, 1);
    t.match(fromRoot.stderr, /Connection refused/);
    t.same(await settledPair(a, b), after, 'and nothing crossed the pair');

    t.equal((await agent.request('DELETE', `/v1/exports/${id}`)).status, 204);
    t.same(db.prepare('SELECT id FROM exports').all(), [], 'the export row is gone');
    const unexported = await b.run('nbdinfo', [uri]);
    t.equal(unexported.code, 1, 'the export is gone for host B too');
    t.match(unexported.stderr, `server replied with error to opt_go request: No such file or directory for export: ${id}`, 'NBD_REP_ERR_UNKNOWN');
    t.equal(await agent.stop(), 0, 'the agent stops cleanly on SIGTERM');
  });

  t.same(ours(await harnessNamespaces()), [], "the hosts' namespaces are deleted");
  t.same(names.filter((name) => existsSync(path.join('/run/netns', name))), [], 'by their names');
  t.same(pids.filter(alive), [], 'no process is left');

  let meshPids: number[] = [];
  await t.test('three hosts are joined pairwise: each reaches the others over the veth between them', async (t) => {
    const [a, b, c] = (await makeHosts(t, 3)) as [Host, Host, Host];
    names = [a.name, b.name, c.name];
    t.same(await interfaces(a), ['lo', 'vt-b', 'vt-c']);
    t.same(await interfaces(c), ['lo', 'vt-a', 'vt-b']);
    const port = 7000;
    // A server in C answering each connection with the peer address it saw; left running for teardown to stop.
    const server = c.spawn(process.execPath, ['-e', `require('node:net').createServer((s) => s.end(s.remoteAddress)).listen(${port}, '${c.address}', () => console.log('listening'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      server.stdout!.once('data', () => resolve());
      server.once('exit', (code) => reject(new Error(`the server in host C exited ${code}`)));
    });
    const client = `const s = require('node:net').connect(${port}, '${c.address}'); let got = ''; s.on('data', (d) => { got += d; }).on('end', () => console.log(got)).on('error', (e) => { console.log(e.code); process.exitCode = 1; })`;
    const ab = await a.counters(b);
    const ac = await a.counters(c);
    const fromA = await a.run(process.execPath, ['-e', client]);
    t.same({ code: fromA.code, stdout: fromA.stdout.trim() }, { code: 0, stdout: a.address }, 'C sees A connect from its address');
    const fromB = await b.run(process.execPath, ['-e', client]);
    t.same({ code: fromB.code, stdout: fromB.stdout.trim() }, { code: 0, stdout: b.address }, 'C sees B connect from its address');
    t.ok((await a.counters(c)).txBytes > ac.txBytes, "A's connection went over vt-c");
    t.same(await a.counters(b), ab, 'and nothing over vt-b');
    meshPids = [server.pid!, ...a.pids, ...b.pids];
    t.equal(c.pids.length, 1);
  });

  t.same(ours(await harnessNamespaces()), [], 'the three namespaces are deleted');
  t.same(meshPids.filter(alive), [], 'the server left running was stopped, the clients had ended');
}
