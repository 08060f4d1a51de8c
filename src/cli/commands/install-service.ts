// `volagent install-service [--root DIR] [--force]`: puts the systemd units in
// place (systemd/ in this package), without the agent:
// - /etc/systemd/system/volagentd.service, rendered with this node binary and
//   this package's directory, and volagentd.socket;
// - /etc/sysusers.d/volagent.conf (the volagent group that may connect);
// - /etc/volagent/volagent.toml, a starter config, unless one exists;
// - volagentd.service.d/pools.conf, from that config: the ReadWritePaths= and
//   DeviceAllow= each pool's backend asks for (PoolBackend.serviceAccess: a
//   file pool's directory, a thin pool's devices); the unit itself allows
//   nothing site-specific under ProtectSystem=strict and DevicePolicy=closed.
// `--root` installs under another root (an image, a test). Nothing is started:
// the command prints the systemctl lines to run.
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { ConfigError, loadConfig, parseConfig } from '../../daemon/config.js';
import type { AgentConfig } from '../../daemon/config.js';
import { backendOf } from '../../pools/index.js';
import type { Command } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode, UsageError } from '../exit-codes.js';

const usage = 'volagent install-service [--root DIR] [--force] [--json]';

/** dist/src/cli/commands/ -> the package root. */
const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
const UNIT_DIR = 'etc/systemd/system';
const CONFIG_FILE = 'etc/volagent/volagent.toml';
const DEFAULT_POOL = '/var/lib/volagent/pools/default';

const STARTER_CONFIG = `# volagent's config (docs/config.md in the package lists every key).
# The control socket is made by volagentd.socket; [control].socket names the
# same path for the CLI.
[control]
socket = "/run/volagent/control.sock"
# Who may connect, besides the socket's mode (root and the volagent group):
# allow = [{ uid = 0, role = "admin" }, { gid = 998, role = "admin" }, { uid = 1001, role = "reader" }]

[catalog]
path = "/var/lib/volagent/catalog.db"

[nbd]
listen = ["unix:/run/volagent/nbd.sock"]

[[pools]]
name = "default"
backend = "file"
path = "${DEFAULT_POOL}"
`;

/** systemd quoting for one path in a list setting (specifiers and spaces). */
function unitPath(p: string): string {
  const escaped = p.replace(/%/g, '%%');
  return /\s|"/.test(escaped) ? `"${escaped.replace(/(["\\])/g, '\\$1')}"` : escaped;
}

/** The drop-in that lets the service reach the config's pools. */
export function poolsDropIn(config: AgentConfig): string {
  const lines = ['# Written by `volagent install-service` from the config; run it again after changing pools.', '[Service]'];
  for (const pool of config.pools) {
    const access = backendOf(pool).serviceAccess(pool);
    for (const writable of access.readWritePaths) lines.push(`ReadWritePaths=${unitPath(writable)}`);
    for (const device of access.devices) lines.push(`DeviceAllow=${unitPath(device)} rw`);
    for (const group of access.deviceGroups ?? []) lines.push(`DeviceAllow=${group} rw`);
  }
  // Two pools of one backend may ask for the same access.
  return `${[...new Set(lines)].join('\n')}\n`;
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(() => true, () => false);
}

export const installServiceCommand: Command = {
  usage,
  summary: 'install the systemd units, the sysusers entry and a starter config (does not start anything)',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, { root: { type: 'string' }, force: { type: 'boolean' } }, [0, 0]);
    const root = path.resolve(cmd.string('root') ?? '/');
    if (!(await exists(root))) throw new UsageError(`--root ${root} does not exist`);
    const under = (relative: string): string => path.join(root, relative);
    const written: string[] = [];
    const write = async (relative: string, text: string, mode = 0o644): Promise<void> => {
      await mkdir(path.dirname(under(relative)), { recursive: true });
      await writeFile(under(relative), text, { mode });
      written.push(`/${relative}`);
    };

    // The config first: a bad one is refused before anything is written.
    const keptConfig = (await exists(under(CONFIG_FILE))) && !cmd.flag('force');
    let config: AgentConfig;
    try {
      config = keptConfig ? await loadConfig(under(CONFIG_FILE)) : parseConfig(STARTER_CONFIG, `/${CONFIG_FILE}`, '/');
    } catch (error) {
      if (error instanceof ConfigError) throw new UsageError(`nothing written: the config the pool paths come from is not valid: ${error.message}`);
      throw error;
    }

    const template = await readFile(path.join(PACKAGE_ROOT, 'systemd', 'volagentd.service.in'), 'utf8');
    await write(`${UNIT_DIR}/volagentd.service`, template.replaceAll('@NODE@', process.execPath).replaceAll('@PACKAGE@', PACKAGE_ROOT));
    await write(`${UNIT_DIR}/volagentd.socket`, await readFile(path.join(PACKAGE_ROOT, 'systemd', 'volagentd.socket'), 'utf8'));
    await write('etc/sysusers.d/volagent.conf', await readFile(path.join(PACKAGE_ROOT, 'systemd', 'volagent.sysusers.conf'), 'utf8'));

    if (!keptConfig) {
      await write(CONFIG_FILE, STARTER_CONFIG, 0o640);
      await mkdir(under(DEFAULT_POOL), { recursive: true, mode: 0o750 });
    }
    await write(`${UNIT_DIR}/volagentd.service.d/pools.conf`, poolsDropIn(config));

    const next = ['systemd-sysusers', 'systemctl daemon-reload', 'systemctl enable --now volagentd.socket volagentd.service'];
    if (cmd.json) {
      printJson({ root, written, configKept: keptConfig, next });
    } else {
      for (const file of written) print(`wrote ${root === '/' ? file : path.join(root, file)}`);
      if (keptConfig) print(`kept the existing /${CONFIG_FILE} (--force replaces it)`);
      print(`then: ${next.join(' && ')}`);
    }
    return ExitCode.ok;
  },
};
