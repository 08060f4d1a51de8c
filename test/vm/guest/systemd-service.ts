// Guest-only tap file, run as a systemd service inside a VM whose PID 1 is
// the host root's systemd (test/vm/systemd-service.test.ts, init: 'systemd').
// volagentd is installed the way an operator does it (`volagent install-service`,
// systemd-sysusers, systemctl) and runs under the hardened unit, with a thin
// pool on the guest's own disks (vda data, vdb metadata) and a file pool:
// started through its socket, READY only when serving, thin volumes, clones
// and an NBD export under DevicePolicy=closed and ProtectSystem=strict, a
// reload, a watchdog restart after the agent is frozen, and a clean stop.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import { requestOn } from '../../helpers/agent.js';
import { inVmGuest, repoRoot } from '../../helpers/vm.js';

const PACKAGE = '/opt/volagent';
const SOCKET = '/run/volagent/control.sock';
const MiB = 1024 * 1024;

function sh(command: string, args: string[]): { code: number | null; stdout: string; stderr: string } {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  return { code: result.status, stdout: result.stdout ?? '', stderr: result.stderr ?? '' };
}

/** `systemctl show -p ...` as an object. */
function show(unit: string, ...properties: string[]): Record<string, string> {
  const { stdout } = sh('systemctl', ['show', unit, ...properties.flatMap((p) => ['-p', p])]);
  return Object.fromEntries(stdout.trim().split('\n').filter(Boolean).map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/systemd-service.test.ts');
} else {
  t.setTimeout(480_000);

  await t.test('installed as an operator does: install-service, sysusers, daemon-reload; the units verify', async (t) => {
    // The package where packages live (the repo is bound there: under /tmp, PrivateTmp= would hide it).
    await mkdir(PACKAGE, { recursive: true });
    t.equal(sh('mount', ['--bind', repoRoot, PACKAGE]).code, 0, 'the package at /opt/volagent');
    const config = [
      '[control]', `socket = "${SOCKET}"`, '', '[catalog]', 'path = "/var/lib/volagent/catalog.db"', '',
      '[nbd]', 'listen = ["unix:/run/volagent/nbd.sock"]', '',
      '[[pools]]', 'name = "files"', 'backend = "file"', 'path = "/srv/volagent/files"', '',
      '[[pools]]', 'name = "thin0"', 'backend = "thin"', 'data_device = "/dev/vda"', 'metadata_device = "/dev/vdb"', 'block_size = "64KiB"', '',
    ].join('\n');
    await mkdir('/etc/volagent', { recursive: true });
    await writeFile('/etc/volagent/volagent.toml', config);
    await mkdir('/srv/volagent/files', { recursive: true });
    const installed = sh(process.execPath, [path.join(PACKAGE, 'bin', 'volagent.js'), 'install-service']);
    t.equal(installed.code, 0, installed.stderr);
    t.match(await readFile('/etc/systemd/system/volagentd.service.d/pools.conf', 'utf8'), /DeviceAllow=\/dev\/vda rw\nDeviceAllow=\/dev\/vdb rw/);
    // A short watchdog for the test (the unit ships 30 s).
    await mkdir('/etc/systemd/system/volagentd.service.d', { recursive: true });
    await writeFile('/etc/systemd/system/volagentd.service.d/test.conf', '[Service]\nWatchdogSec=4s\nTimeoutAbortSec=3s\nRestartSec=1s\n');
    t.equal(sh('systemd-sysusers', []).code, 0, 'systemd-sysusers');
    t.equal(sh('getent', ['group', 'volagent']).code, 0, 'the volagent group exists');
    t.equal(sh('systemctl', ['daemon-reload']).code, 0);
    const verified = sh('systemd-analyze', ['verify', 'volagentd.socket', 'volagentd.service']);
    t.equal(verified.code, 0, verified.stderr);
  });

  await t.test('the socket starts the service; READY=1 comes once it serves; the control socket is 0660 root:volagent', async (t) => {
    t.equal(sh('systemctl', ['start', 'volagentd.socket']).code, 0);
    const mode = sh('stat', ['-c', '%a %U %G', SOCKET]).stdout.trim();
    t.equal(mode, '660 root volagent');
    // The first connection activates the service: it is answered once the agent serves.
    const version = await requestOn(SOCKET, 'GET', '/v1/version');
    t.equal(version.status, 200, version.text);
    await waitFor('volagentd active', () => show('volagentd.service', 'ActiveState').ActiveState === 'active');
    const state = show('volagentd.service', 'ActiveState', 'SubState', 'StatusText', 'MainPID', 'Type', 'NRestarts');
    t.match(state, { ActiveState: 'active', SubState: 'running', Type: 'notify', NRestarts: '0' });
    t.match(state.StatusText, /^serving 2 pool\(s\), \d+ volume\(s\), \d+ export\(s\)$/, 'STATUS= reached systemd');
    // The sandbox is in force, seen from outside the agent's process.
    const status = await readFile(`/proc/${state.MainPID}/status`, 'utf8');
    t.match(status, /^CapBnd:\s+000000000820000f$/m, 'capability bounding set: CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER SYS_ADMIN MKNOD');
    t.match(status, /^NoNewPrivs:\s+1$/m);
    const mounts = (await readFile(`/proc/${state.MainPID}/mountinfo`, 'utf8')).split('\n');
    t.ok(mounts.some((line) => / \/usr [^ ]* ro[, ]/.test(line) || / \/ [^ ]* ro[, ]/.test(line)), 'the system is read-only for it (ProtectSystem=strict)');
    t.ok(mounts.some((line) => / \/srv\/volagent\/files [^ ]* rw[, ]/.test(line)), 'but its file pool is writable (ReadWritePaths=)');
    const pools = (await requestOn(SOCKET, 'GET', '/v1/pools')).body as Array<{ name: string; health?: { mode: string } }>;
    t.same(pools.map((p) => p.name), ['files', 'thin0']);
    t.match(pools[1], { health: { mode: 'rw' } }, 'the thin pool is up: device-mapper works under DevicePolicy=closed');
  });

  await t.test('under the hardening: thin volumes and snapshots, a file clone, an NBD export read by nbdcopy', async (t) => {
    t.equal((await requestOn(SOCKET, 'PUT', '/v1/volumes/t1', { tenant: 'x', pool: 'thin0', sizeBytes: 8 * MiB })).status, 201);
    const node = '/dev/volagent/thin0/t1';
    t.ok(existsSync(node), 'the agent made the node (mknod under DeviceAllow=block-device-mapper rwm)');
    const dd = sh('dd', ['if=/dev/urandom', `of=${node}`, 'bs=1M', 'count=2', 'oflag=direct']);
    t.equal(dd.code, 0, dd.stderr);
    const clone = await requestOn(SOCKET, 'PUT', '/v1/volumes/t2', { tenant: 'x', source: { volume: 't1' } });
    t.equal(clone.status, 201, clone.text);
    t.equal(clone.body.cloneMethod, 'thin_snapshot');
    t.equal((await requestOn(SOCKET, 'PUT', '/v1/volumes/f1', { tenant: 'x', pool: 'files', sizeBytes: 4 * MiB })).status, 201, 'a file volume (ReadWritePaths= from the drop-in)');
    t.equal((await requestOn(SOCKET, 'PUT', '/v1/volumes/f2?wait=true', { tenant: 'x', source: { volume: 'f1' } })).status, 201);
    const exported = await requestOn(SOCKET, 'POST', '/v1/volumes/t2/exports', { protocol: 'nbd', readOnly: true });
    t.equal(exported.status, 201, exported.text);
    const copy = sh('nbdcopy', [exported.body.uri, '/tmp/t2.raw']);
    t.equal(copy.code, 0, copy.stderr);
    const same = sh('cmp', ['-n', String(2 * MiB), '/tmp/t2.raw', node]);
    t.equal(same.code, 0, 'the export reads what the origin held');
    t.equal((await requestOn(SOCKET, 'DELETE', `/v1/exports/${exported.body.id}`)).status, 204);
    const metrics = await requestOn(SOCKET, 'GET', '/metrics');
    t.match(metrics.text, /volagent_clone_duration_seconds_count\{method="thin_snapshot"\} 1/);
  });

  await t.test('systemctl reload: RELOADING=1 then READY=1, the service stays up with the same pid', async (t) => {
    const before = show('volagentd.service', 'MainPID').MainPID;
    const reloaded = sh('systemctl', ['reload', 'volagentd.service']);
    t.equal(reloaded.code, 0, reloaded.stderr);
    const after = show('volagentd.service', 'ActiveState', 'MainPID');
    t.match(after, { ActiveState: 'active', MainPID: before });
  });

  await t.test('a frozen agent misses its watchdog pings: systemd restarts it and everything is there again', async (t) => {
    const before = show('volagentd.service', 'MainPID').MainPID;
    t.equal(sh('systemctl', ['kill', '--signal=SIGSTOP', 'volagentd.service']).code, 0, 'the agent is frozen (no more pings)');
    await waitFor('a restart by the watchdog', () => {
      const now = show('volagentd.service', 'NRestarts', 'MainPID', 'ActiveState');
      return now.NRestarts === '1' && now.MainPID !== before && now.MainPID !== '0' && now.ActiveState === 'active';
    }, 90_000);
    const journal = sh('journalctl', ['-u', 'volagentd.service', '--no-pager', '-o', 'cat']).stdout;
    t.match(journal, /[Ww]atchdog timeout/, 'systemd says why');
    const volumes = (await requestOn(SOCKET, 'GET', '/v1/volumes')).body as Array<{ id: string; state: string }>;
    t.same(volumes.map((v) => v.id).sort(), ['f1', 'f2', 't1', 't2'], 'every volume, after the restart');
    t.ok(volumes.every((v) => v.state === 'available'));
    t.ok(existsSync('/dev/volagent/thin0/t2'), 'thin volumes active again');
  });

  await t.test('systemctl stop: STOPPING, a clean exit, the socket stays for the next start', async (t) => {
    t.equal(sh('systemctl', ['stop', 'volagentd.service']).code, 0);
    const state = show('volagentd.service', 'ActiveState', 'Result', 'ExecMainStatus');
    t.match(state, { ActiveState: 'inactive', Result: 'success', ExecMainStatus: '0' });
    t.ok(existsSync(SOCKET), 'the socket unit keeps the socket');
    t.equal((await requestOn(SOCKET, 'GET', '/v1/version')).status, 200, 'a new connection starts it again');
    t.equal(sh('systemctl', ['stop', 'volagentd.service', 'volagentd.socket']).code, 0);
  });
}
