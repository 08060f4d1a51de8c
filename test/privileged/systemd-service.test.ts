// volagentd as systemd runs it, with systemd's own protocol on real sockets:
// sd_notify datagrams received by socat (READY=1 only once the control
// socket answers, STATUS=, WATCHDOG=1 every half of $WATCHDOG_USEC,
// STOPPING=1 on SIGTERM; abstract and path sockets), and socket activation by
// Debian's systemd-socket-activate (the agent serves on the passed fd).
// Root: the lane installs socat; sockets live in a temp directory.
import type { ChildProcess } from 'node:child_process';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';

import { outcomeOf, requestOn, spawnAgent, VOLAGENTD, writeAgentConfig } from '../helpers/agent.js';
import { NotifyListener } from '../helpers/notify-listener.js';
import { outcome } from '../helpers/run.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { tempDir } from '../helpers/temp-dir.js';

/** Ends `child` with `signal` and resolves with its exit code. */
async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  child.kill(signal);
  return exited;
}

if (!skipUnlessRoot(t)) {
  const dir = await tempDir(t, 'volagent-systemd-');
  const poolPath = path.join(dir, 'pool');
  await mkdir(poolPath);
  const spec = { dir, pools: [{ name: 'p', path: poolPath }] };
  const configFile = await writeAgentConfig(spec);
  const controlSocket = path.join(dir, 'control.sock');

  /** Starts volagentd with `env`; killed at the end of `t` if still running. */
  const launch = (tt: Test, env: NodeJS.ProcessEnv): ChildProcess => {
    const child = spawnAgent(['--config', configFile], env);
    tt.teardown(async () => { await stopChild(child, 'SIGKILL'); });
    return child;
  };

  await t.test('notify: READY=1 once the control socket answers, STATUS=, watchdog pings every half period, STOPPING=1 on SIGTERM', async (t) => {
    const listener = await NotifyListener.start(t, path.join(dir, 'notify.sock'));
    const agent = launch(t, { NOTIFY_SOCKET: listener.address, WATCHDOG_USEC: '400000' });
    const output = outcomeOf(agent);
    const ready = await listener.next('READY', '1');
    // Asked only after READY=1 arrived: a READY sent before listen(2) would fail here.
    const version = await requestOn(controlSocket, 'GET', '/v1/version');
    t.equal(version.status, 200, 'the control socket answers as soon as READY=1 is seen');
    t.match(ready.fields.STATUS, /^serving 1 pool\(s\), 0 volume\(s\), 0 export\(s\)$/, 'STATUS= says what is served');
    t.equal(listener.with('READY').length, 1, 'READY=1 once');
    t.equal(listener.messages.indexOf(ready), 0, 'nothing before READY=1');

    await new Promise((r) => setTimeout(r, 1500));
    const pings = listener.with('WATCHDOG', '1');
    t.ok(pings.length >= 3, `pings while running (${pings.length} in 1.5 s)`);
    const gaps = pings.slice(1).map((p, i) => p.at - pings[i]!.at);
    const meanGap = gaps.reduce((a, b) => a + b, 0) / gaps.length;
    t.ok(meanGap > 100 && meanGap < 600, `one every half of WATCHDOG_USEC=400 ms (mean gap ${meanGap.toFixed(0)} ms)`);
    t.ok(pings.every((p) => p.at >= ready.at), 'no ping before READY=1');

    const count = listener.messages.length;
    t.equal(await stopChild(agent), 0, 'SIGTERM: clean exit');
    const stopping = await listener.next('STOPPING', '1', 5000, count);
    t.match(stopping.fields.STATUS, /stopping \(SIGTERM\)/);
    t.same(listener.messages.slice(listener.messages.indexOf(stopping) + 1).filter((m) => 'WATCHDOG' in m.fields), [], 'no ping after STOPPING=1');
    t.notMatch((await output).stdout, /could not be sent/, 'every notification was delivered');
  });

  await t.test('notify on an abstract socket (@name), and no watchdog when WATCHDOG_PID is another process', async (t) => {
    const listener = await NotifyListener.start(t, `@volagent-test-${randomBytes(6).toString('hex')}`);
    const agent = launch(t, { NOTIFY_SOCKET: listener.address, WATCHDOG_USEC: '200000', WATCHDOG_PID: '1' });
    await listener.next('READY', '1');
    await new Promise((r) => setTimeout(r, 600));
    t.same(listener.with('WATCHDOG'), [], 'the watchdog belongs to another process: no pings');
    t.equal(await stopChild(agent), 0);
    await listener.next('STOPPING', '1', 5000);
  });

  await t.test('a notify socket nobody listens on: the agent serves anyway and says so once in its log', async (t) => {
    const agent = launch(t, { NOTIFY_SOCKET: path.join(dir, 'nobody.sock'), WATCHDOG_USEC: '200000' });
    const output = outcomeOf(agent);
    let answered = 0;
    for (let i = 0; i < 200 && answered === 0; i++) {
      answered = await requestOn(controlSocket, 'GET', '/v1/version').then((r) => r.status, () => 0);
      if (answered === 0) await new Promise((r) => setTimeout(r, 50));
    }
    t.equal(answered, 200, 'it serves');
    await new Promise((r) => setTimeout(r, 500));
    t.equal(await stopChild(agent), 0);
    const warnings = (await output).stdout.split('\n').filter((line) => /could not be sent/.test(line));
    t.equal(warnings.filter((line) => /"message":"WATCHDOG=1"/.test(line)).length, 1, 'one warning for the failing pings, not one per ping');
    t.match(warnings.join('\n'), /ENOENT|ECONNREFUSED/, 'with the reason');
  });

  await t.test('socket activation (systemd-socket-activate): the agent serves on the passed socket and leaves it in place', async (t) => {
    const activated = path.join(dir, 'activated.sock');
    const activator = spawn('systemd-socket-activate', ['-l', activated, '--fdname=control', process.execPath, VOLAGENTD, '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(async () => { await stopChild(activator, 'SIGKILL'); });
    const output = outcomeOf(activator);
    for (let i = 0; i < 100 && !existsSync(activated); i++) await new Promise((r) => setTimeout(r, 20));
    t.ok((await stat(activated)).isSocket(), 'systemd-socket-activate made the socket');
    t.notOk(existsSync(controlSocket), 'the configured control socket is not made');
    // The first connection starts the agent (execs it with LISTEN_FDS=1, LISTEN_FDNAMES=control).
    const version = await requestOn(activated, 'GET', '/v1/version');
    t.equal(version.status, 200, version.text);
    t.equal((await requestOn(activated, 'PUT', '/v1/volumes/sa1', { tenant: 't', sizeBytes: 1048576 })).status, 201, 'a write request too');
    t.notOk(existsSync(controlSocket), 'still no socket of its own');
    t.equal(await stopChild(activator), 0, 'SIGTERM: clean exit');
    const { stdout } = await output;
    t.match(stdout, /"socket":"fd 3 \(control, passed by systemd\)"/, 'the log says where it listened');
    t.ok((await stat(activated)).isSocket(), 'the passed socket is left for the next activation');
  });

  await t.test('socket activation of NBD (FileDescriptorName=nbd): an export is read through the passed socket, which gets socket_mode and socket_group and is neither made nor removed by the agent', async (t) => {
    const nbdDir = path.join(dir, 'activated-nbd');
    await mkdir(nbdDir);
    const nbdPool = path.join(nbdDir, 'pool');
    await mkdir(nbdPool);
    const nbdConfig = await writeAgentConfig({ dir: nbdDir, pools: [{ name: 'p', path: nbdPool }], nbdSocket: { mode: '0660', group: 4242 } });
    const control = path.join(nbdDir, 'passed-control.sock');
    const nbdSocket = path.join(nbdDir, 'nbd.sock');
    const activator = spawn('systemd-socket-activate', ['-l', control, '-l', nbdSocket, '--fdname=control:nbd', process.execPath, VOLAGENTD, '--config', nbdConfig], { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(async () => { await stopChild(activator, 'SIGKILL'); });
    const output = outcomeOf(activator);
    for (let i = 0; i < 100 && !(existsSync(control) && existsSync(nbdSocket)); i++) await new Promise((r) => setTimeout(r, 20));
    const made = await stat(nbdSocket);
    t.ok(made.isSocket(), 'systemd-socket-activate made the NBD socket');
    t.equal(made.gid, 0, 'with its own group before the agent runs');

    t.equal((await requestOn(control, 'PUT', '/v1/volumes/nv', { tenant: 't', sizeBytes: 4 * 1048576 })).status, 201);
    const content = Buffer.alloc(4 * 1048576);
    for (let i = 0; i < content.length; i += 65536) content.writeUInt32BE(i / 65536 + 1, i);
    await writeFile(path.join(nbdPool, 'objects', 'nv.raw'), content);
    const exported = await requestOn(control, 'POST', '/v1/volumes/nv/exports', { protocol: 'nbd', readOnly: true });
    t.equal(exported.status, 201, exported.text);
    t.equal(exported.body.uri, `nbd+unix:///${exported.body.id}?socket=${nbdSocket}`, 'the URI names the passed socket');
    const copied = path.join(nbdDir, 'copied.raw');
    const copy = await outcome('nbdcopy', [exported.body.uri, copied]);
    t.equal(copy.code, 0, copy.stderr);
    t.ok((await readFile(copied)).equals(content), 'nbdcopy reads the export through the passed socket');

    const served = await stat(nbdSocket);
    t.equal(served.ino, made.ino, 'the same socket file: the agent did not make its own');
    t.equal(served.mode & 0o7777, 0o660, 'socket_mode applied to the passed socket');
    t.equal(served.gid, 4242, 'socket_group applied to the passed socket');
    t.equal(await stopChild(activator), 0, 'SIGTERM: clean exit');
    const { stdout } = await output;
    t.match(stdout, new RegExp(`"nbd":"${nbdSocket}".*nbd: serving a socket passed by systemd`), 'the log says the NBD socket was passed');
    t.equal((await stat(nbdSocket)).ino, made.ino, 'the passed NBD socket is left in place after the agent stops');
  });

  await t.test('socket activation: an "nbd" socket no [nbd].listen entry names is refused at start-up', async (t) => {
    const stray = path.join(dir, 'stray-nbd.sock');
    const activator = spawn('systemd-socket-activate', ['-l', stray, '--fdname=nbd', process.execPath, VOLAGENTD, '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(async () => { await stopChild(activator, 'SIGKILL'); });
    const output = outcomeOf(activator);
    for (let i = 0; i < 100 && !existsSync(stray); i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise<void>((resolve) => connect(stray).on('error', () => resolve()).on('close', () => resolve()));
    const { code, stderr } = await output;
    t.equal(code, 1, 'exit 1');
    // systemd-socket-activate's own lines ("Listening on ...") share the stream.
    t.same(stderr.split('\n').filter((line) => line.startsWith('volagentd:')), [`volagentd: socket activation passed fd 3 named "nbd", bound to unix:${stray}, which no [nbd].listen entry names`]);
    t.notOk(existsSync(path.join(dir, 'nbd.sock')), 'nothing bound');
  });

  await t.test('socket activation with several sockets and none named control: refused at start-up with a clear error', async (t) => {
    const activator = spawn('systemd-socket-activate', ['-l', path.join(dir, 'a.sock'), '-l', path.join(dir, 'b.sock'), '--fdname=x:y', process.execPath, VOLAGENTD, '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(async () => { await stopChild(activator, 'SIGKILL'); });
    const output = outcomeOf(activator);
    for (let i = 0; i < 100 && !existsSync(path.join(dir, 'a.sock')); i++) await new Promise((r) => setTimeout(r, 20));
    await requestOn(path.join(dir, 'a.sock'), 'GET', '/v1/version').catch(() => undefined);
    const { code, stderr } = await output;
    t.equal(code, 1, 'exit 1');
    t.match(stderr, /socket activation passed 2 sockets \(x, y\) and none is named "control"/);
  });

  await t.test('SIGHUP: RELOADING=1, then READY=1; an added pool is served, a changed one is refused with a log line, a bad config changes nothing', async (t) => {
    const reloadDir = path.join(dir, 'reload');
    await mkdir(path.join(reloadDir, 'p1'), { recursive: true });
    await mkdir(path.join(reloadDir, 'p2'), { recursive: true });
    const reloadSpec = { dir: reloadDir, pools: [{ name: 'p1', path: path.join(reloadDir, 'p1') }] };
    const reloadConfig = await writeAgentConfig(reloadSpec);
    const listener = await NotifyListener.start(t, path.join(reloadDir, 'notify.sock'));
    const agent = spawnAgent(['--config', reloadConfig], { NOTIFY_SOCKET: listener.address });
    t.teardown(async () => { await stopChild(agent, 'SIGKILL'); });
    const output = outcomeOf(agent);
    await listener.next('READY', '1');
    const socket = path.join(reloadDir, 'control.sock');
    const poolNames = async (): Promise<string[]> => (await requestOn(socket, 'GET', '/v1/pools')).body.map((p: { name: string }) => p.name);

    // Add p2 and change p1's path: p2 is opened, p1 stays as it was.
    await writeAgentConfig({ ...reloadSpec, pools: [{ name: 'p1', path: path.join(reloadDir, 'elsewhere') }, { name: 'p2', path: path.join(reloadDir, 'p2') }] });
    let from = listener.messages.length;
    agent.kill('SIGHUP');
    const reloadingAt = await listener.next('RELOADING', '1', 10_000, from);
    t.match(reloadingAt.fields.MONOTONIC_USEC, /^\d+$/, 'RELOADING=1 carries MONOTONIC_USEC');
    const readyAgain = await listener.next('READY', '1', 10_000, listener.messages.indexOf(reloadingAt));
    t.match(readyAgain.fields.STATUS, /serving 2 pool\(s\)/);
    t.same(await poolNames(), ['p1', 'p2'], 'p2 is served');
    t.equal((await requestOn(socket, 'PUT', '/v1/volumes/r1', { tenant: 't', pool: 'p2', sizeBytes: 1048576 })).status, 201, 'a volume in the added pool');

    // A config that does not parse: nothing changes, READY=1 all the same.
    await writeFile(reloadConfig, '[[pools]]\nname = "p1"\nbackend = "zfs"\n');
    from = listener.messages.length;
    agent.kill('SIGHUP');
    await listener.next('READY', '1', 10_000, from);
    t.same(await poolNames(), ['p1', 'p2'], 'still both pools');
    t.equal(await stopChild(agent), 0);
    const { stdout } = await output;
    t.match(stdout, /reload: pool p1 changed: changing a pool needs a restart/, 'the refused change is logged');
    t.match(stdout, /reload: pool added/);
    t.match(stdout, /reload refused: the config is not valid/);
  });
}
