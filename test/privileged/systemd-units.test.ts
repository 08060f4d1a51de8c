// The systemd units as `volagent install-service` puts them in place (under a
// temporary --root): rendered with this node and this package, checked by
// systemd's own `systemd-analyze verify` (no warning allowed) and
// `systemd-analyze security --offline=true`, whose exposure score may not get
// worse than EXPOSURE_LIMIT. A config's pools become the drop-in's
// ReadWritePaths= and DeviceAllow=; a bad config writes nothing.
// The privileged lane installs the systemd package (systemd-analyze).
import { spawn } from 'node:child_process';
import { mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { REPO_ROOT, VOLAGENT } from '../helpers/agent.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { tempDir } from '../helpers/temp-dir.js';

/** The exposure systemd-analyze gave the unit when this was written (3.0 "OK"); lower is better. */
const EXPOSURE_LIMIT = 3.0;

function run(command: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr })));
}

async function filesUnder(root: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else found.push(path.relative(root, full));
    }
  };
  await walk(root);
  return found.sort();
}

if (!skipUnlessRoot(t)) {
  const install = (root: string, ...extra: string[]) => run(process.execPath, [VOLAGENT, 'install-service', '--root', root, ...extra]);
  const unitDir = (root: string): string => path.join(root, 'etc/systemd/system');
  const verify = (root: string) => run('systemd-analyze', ['verify', path.join(unitDir(root), 'volagentd.socket'), path.join(unitDir(root), 'volagentd.service')]);

  await t.test('a fresh install: units, sysusers entry, starter config; systemd-analyze verify finds nothing to say', async (t) => {
    const root = await tempDir(t, 'volagent-install-');
    const result = await install(root);
    t.equal(result.code, 0, result.stderr);
    t.same(await filesUnder(root), [
      'etc/systemd/system/volagentd.service', 'etc/systemd/system/volagentd.service.d/pools.conf', 'etc/systemd/system/volagentd.socket',
      'etc/sysusers.d/volagent.conf', 'etc/volagent/volagent.toml',
    ]);
    t.ok((await stat(path.join(root, 'var/lib/volagent/pools/default'))).isDirectory(), "the starter config's pool directory");
    const service = await readFile(path.join(unitDir(root), 'volagentd.service'), 'utf8');
    t.match(service, `ExecStart=${process.execPath} ${REPO_ROOT}/bin/volagentd.js --config /etc/volagent/volagent.toml`);
    t.notMatch(service, /@[A-Z]+@/, 'every placeholder rendered');
    for (const setting of [
      'Type=notify', 'NotifyAccess=main', /WatchdogSec=\d+s/, 'Restart=on-failure', 'StateDirectory=volagent', 'RuntimeDirectory=volagent',
      'ProtectSystem=strict', 'ProtectHome=yes', 'PrivateTmp=yes', 'NoNewPrivileges=yes',
      'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK', 'DevicePolicy=closed',
      'DeviceAllow=/dev/mapper/control rw', 'DeviceAllow=/dev/loop-control rw', 'DeviceAllow=block-loop rw', 'DeviceAllow=block-device-mapper rwm',
      /CapabilityBoundingSet=CAP_SYS_ADMIN CAP_MKNOD [A-Z_ ]+\n/,
    ]) t.match(service, setting, `the service has ${setting}`);
    t.notMatch(service, /^MemoryDenyWriteExecute=/m, 'not MemoryDenyWriteExecute (V8 writes code)');
    const socket = await readFile(path.join(unitDir(root), 'volagentd.socket'), 'utf8');
    for (const setting of ['ListenStream=/run/volagent/control.sock', 'SocketMode=0660', 'SocketGroup=volagent', 'FileDescriptorName=control']) t.match(socket, setting);
    t.match(await readFile(path.join(root, 'etc/sysusers.d/volagent.conf'), 'utf8'), /^g volagent - -$/m);
    t.match(await readFile(path.join(unitDir(root), 'volagentd.service.d/pools.conf'), 'utf8'), /^ReadWritePaths=\/var\/lib\/volagent\/pools\/default$/m);
    const verified = await verify(root);
    t.equal(verified.code, 0, verified.stderr);
    t.equal(verified.stderr.trim(), '', 'no warning from systemd-analyze verify');
    t.equal(verified.stdout.trim(), '');
  });

  await t.test(`systemd-analyze security --offline: exposure at most ${EXPOSURE_LIMIT}`, async (t) => {
    const root = await tempDir(t, 'volagent-install-');
    t.equal((await install(root)).code, 0);
    const security = await run('systemd-analyze', ['security', '--offline=true', path.join(unitDir(root), 'volagentd.service')]);
    t.equal(security.code, 0, security.stderr);
    const exposure = Number(/Overall exposure level for volagentd\.service: ([\d.]+)/.exec(security.stdout)?.[1]);
    t.comment(`systemd-analyze security exposure: ${exposure} (limit ${EXPOSURE_LIMIT})`);
    t.ok(Number.isFinite(exposure), 'a score was printed');
    t.ok(exposure <= EXPOSURE_LIMIT, `exposure ${exposure} <= ${EXPOSURE_LIMIT}`);
  });

  await t.test("an existing config is kept; its pools become the drop-in's ReadWritePaths= and DeviceAllow=", async (t) => {
    const root = await tempDir(t, 'volagent-install-');
    await mkdir(path.join(root, 'etc/volagent'), { recursive: true });
    const config = [
      '[[pools]]', 'name = "fast"', 'backend = "file"', 'path = "/srv/volagent/fast"', '',
      '[[pools]]', 'name = "thin0"', 'backend = "thin"', 'data_device = "/dev/vdb"', 'metadata_device = "/dev/vdc"', '',
      '[[pools]]', 'name = "dev"', 'backend = "thin"', 'data_device = "/srv/volagent/data.img"', 'metadata_device = "/dev/vdd"', '',
    ].join('\n');
    await writeFile(path.join(root, 'etc/volagent/volagent.toml'), config);
    const result = await install(root);
    t.equal(result.code, 0, result.stderr);
    t.match(result.stdout, /kept the existing \/etc\/volagent\/volagent\.toml/);
    t.equal(await readFile(path.join(root, 'etc/volagent/volagent.toml'), 'utf8'), config, 'the config is untouched');
    const dropIn = await readFile(path.join(unitDir(root), 'volagentd.service.d/pools.conf'), 'utf8');
    t.same(dropIn.split('\n').filter((line) => /^(ReadWritePaths|DeviceAllow)=/.test(line)), [
      'ReadWritePaths=/srv/volagent/fast', 'DeviceAllow=/dev/vdb rw', 'DeviceAllow=/dev/vdc rw', 'ReadWritePaths=/srv/volagent/data.img', 'DeviceAllow=/dev/vdd rw',
    ]);
    const verified = await verify(root);
    t.equal(verified.code, 0);
    t.equal(verified.stderr.trim(), '', 'the drop-in verifies too');
    const again = await install(root);
    t.equal(again.code, 0, 'a second install is fine');
    t.equal(await readFile(path.join(unitDir(root), 'volagentd.service.d/pools.conf'), 'utf8'), dropIn, 'and writes the same');
  });

  await t.test('a bad config: exit 2 with the reason, and nothing is written', async (t) => {
    const root = await tempDir(t, 'volagent-install-');
    await mkdir(path.join(root, 'etc/volagent'), { recursive: true });
    await writeFile(path.join(root, 'etc/volagent/volagent.toml'), '[[pools]]\nname = "x"\nbackend = "zfs"\n');
    const result = await install(root);
    t.equal(result.code, 2);
    t.match(result.stderr, /nothing written: the config the pool paths come from is not valid: .*backend/);
    t.same(await filesUnder(root), ['etc/volagent/volagent.toml'], 'only the config that was there');
    const missing = await install(path.join(root, 'nope'));
    t.equal(missing.code, 2);
    t.match(missing.stderr, /--root .*nope does not exist/);
  });
}
