// volagentd's configuration (docs/config.md lists every key): TOML,
// validated whole at start-up. Every error names the file and the key, e.g.
//   /etc/volagent/volagent.toml: pools[1].block_size: must be a multiple of 64KiB
// Relative paths are resolved against the config file's directory (the
// embedded default's, against the working directory).
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

import { parse as parseToml } from 'smol-toml';

import type { AllowRule } from '../api/peer-auth.js';
import { DEFAULT_KEEP_FINISHED_OPERATIONS } from '../catalog/catalog.js';
import type { ListenAddress } from '../exports/nbd/listen-address.js';
import type { NbdTlsConfig } from '../exports/nbd/tls.js';
import { backendNamed, backendNames } from '../pools/index.js';
import type { ConfigTable, ImageCacheConfig, PoolConfig } from '../pools/pool-config.js';
import { parseBytes } from '../common/bytes.js';

export type { ImageCacheConfig, PoolConfig } from '../pools/pool-config.js';

export interface AgentConfig {
  /** The file read, or "<embedded default>". */
  source: string;
  control: { socket: string; allow: AllowRule[] };
  catalog: { path: string };
  /**
   * `allow_list`: NBD_OPT_LIST names the exports (off: export ids are not to be guessed).
   * `socket_mode` and `socket_group` (resolved to a gid at start-up): the unix
   * sockets' mode and group, set when the agent binds them (mode 0660 when not
   * given) and, only when given, on a passed path socket too (exports/nbd/server.ts).
   * `tls`: the credentials every TCP address requires (exports/nbd/tls.ts);
   * without them a TCP address is refused unless `plaintext_tcp` allows it.
   */
  nbd: { listen: ListenAddress[]; allowList: boolean; socketMode?: number; socketGroup?: number; tls?: NbdTlsConfig; plaintextTcp: boolean };
  pools: PoolConfig[];
  /** Tenant that owns internal Image-Volumes. */
  internalTenant: string;
  /** How long delete and resize wait for clones reading their volume before VOLUME_BUSY (`[agent] lock_wait_ms`). */
  lockWaitMs: number;
  /** Ended operations the catalog keeps, the most recently ended (`[agent] keep_finished_operations`); running ones are always kept. */
  keepFinishedOperations: number;
}

export const DEFAULT_LOCK_WAIT_MS = 2000;

/** A group's gid by name (getent(1), so NSS groups count), or undefined when there is no such group. */
export type GroupResolver = (name: string) => number | undefined;

export const resolveGroupByGetent: GroupResolver = (name) => {
  let line: string;
  try {
    line = execFileSync('getent', ['group', '--', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch (error) {
    // getent exits 2 when the key is not found.
    if ((error as { status?: number }).status === 2) return undefined;
    throw error;
  }
  const gid = Number(line.split(':')[2]);
  return Number.isSafeInteger(gid) ? gid : undefined;
};

export const EMBEDDED_DEFAULT_SOURCE = '<embedded default>';

export const EMBEDDED_DEFAULT_TOML = `
[control]
socket = "./var/control.sock"

[catalog]
path = "./var/catalog.db"

[nbd]
listen = ["unix:./var/nbd.sock"]

[[pools]]
name = "default"
backend = "file"
path = "./var/pools/default"
`;

export class ConfigError extends Error {
  override name = 'ConfigError';
  constructor(readonly source: string, readonly key: string, problem: string) {
    super(`${source}: ${key ? `${key}: ` : ''}${problem}`);
  }
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

type Table = Record<string, unknown>;

function isTable(value: unknown): value is Table {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/** Reads one TOML table, remembering the keys taken so leftovers can be reported as unknown. */
class TableReader implements ConfigTable {
  private readonly taken = new Set<string>();

  constructor(private readonly values: Table, private readonly where: string, private readonly source: string, private readonly baseDir: string) {}

  fail(key: string, problem: string): never {
    throw new ConfigError(this.source, this.keyPath(key), problem);
  }

  keyPath(key: string): string {
    return this.where ? `${this.where}.${key}` : key;
  }

  private take(key: string): unknown {
    this.taken.add(key);
    return this.values[key];
  }

  has(key: string): boolean {
    return this.values[key] !== undefined;
  }

  /** The value as written, without taking it. */
  peek(key: string): unknown {
    return this.values[key];
  }

  string(key: string, fallback?: string): string {
    const value = this.take(key) ?? fallback;
    if (value === undefined) this.fail(key, 'is required');
    if (typeof value !== 'string' || value.length === 0) this.fail(key, 'must be a non-empty string');
    if (value.includes('\0')) this.fail(key, 'must not contain NUL');
    return value;
  }

  name(key: string): string {
    const value = this.string(key);
    if (!NAME.test(value)) this.fail(key, `must match ${NAME.source}`);
    return value;
  }

  path(key: string, fallback?: string): string {
    return path.resolve(this.baseDir, this.string(key, fallback));
  }

  integer(key: string, min: number, max: number): number | undefined {
    const value = this.take(key);
    if (value === undefined) return undefined;
    const n = typeof value === 'bigint' ? Number(value) : value;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) this.fail(key, `must be an integer from ${min} to ${max}`);
    return n;
  }

  bytes(key: string, fallback?: string): number | undefined {
    const value = this.take(key) ?? fallback;
    if (value === undefined) return undefined;
    if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
    if (typeof value !== 'string') this.fail(key, 'must be a size: bytes, or a string like "64KiB"');
    try {
      return parseBytes(value);
    } catch (error) {
      return this.fail(key, (error as Error).message);
    }
  }

  boolean(key: string, fallback: boolean): boolean {
    const value = this.take(key) ?? fallback;
    if (typeof value !== 'boolean') this.fail(key, 'must be true or false');
    return value;
  }

  percent(key: string, fallback: string): number {
    const value = this.take(key) ?? fallback;
    const match = typeof value === 'string' ? /^(\d+(?:\.\d+)?)%$/.exec(value.trim()) : null;
    const n = match ? Number(match[1]) : NaN;
    if (!(n >= 0 && n <= 100)) this.fail(key, 'must be a percentage like "10%"');
    return n;
  }

  table(key: string): TableReader {
    const value = this.take(key) ?? {};
    if (!isTable(value)) this.fail(key, 'must be a table');
    return new TableReader(value, this.keyPath(key), this.source, this.baseDir);
  }

  optionalTable(key: string): TableReader | undefined {
    return this.has(key) ? this.table(key) : (this.take(key), undefined);
  }

  array(key: string): unknown[] {
    const value = this.take(key) ?? [];
    if (!Array.isArray(value)) this.fail(key, 'must be an array');
    return value;
  }

  element(key: string, index: number, value: unknown): TableReader {
    const at = `${this.keyPath(key)}[${index}]`;
    if (!isTable(value)) throw new ConfigError(this.source, at, 'must be a table');
    return new TableReader(value, at, this.source, this.baseDir);
  }

  /** Call after reading: any key not read is a typo or a setting this version lacks. */
  done(): void {
    for (const key of Object.keys(this.values)) {
      if (!this.taken.has(key)) this.fail(key, 'unknown key');
    }
  }
}

function parseListen(text: string, reader: TableReader, key: string): ListenAddress {
  if (text.startsWith('unix:')) {
    const socketPath = text.slice('unix:'.length);
    if (!socketPath || socketPath.startsWith('@')) reader.fail(key, `"${text}": a unix address is a filesystem path (never abstract)`);
    return { kind: 'unix', path: socketPath };
  }
  // An IPv6 address may carry a zone (`[fe80::1%eth0]`): link-local addresses need one.
  const tcp = /^tcp:(\[[0-9a-fA-F:.]+(?:%[A-Za-z0-9._-]{1,15})?\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text);
  const port = tcp ? Number(tcp[2]) : NaN;
  // Port 0: the kernel chooses one; export URIs carry the port it chose.
  if (!tcp || port < 0 || port > 65535) return reader.fail(key, `"${text}": must be "unix:/path" or "tcp:host:port"`);
  return { kind: 'tcp', host: tcp[1]!.replace(/^\[|\]$/g, ''), port };
}

function readImageCache(reader: TableReader): ImageCacheConfig | undefined {
  const cache = reader.optionalTable('image_cache');
  if (!cache) return undefined;
  const maxBytes = cache.bytes('max_bytes');
  const maxCount = cache.integer('max_count', 0, 1_000_000);
  cache.done();
  return { ...(maxBytes !== undefined ? { maxBytes } : {}), ...(maxCount !== undefined ? { maxCount } : {}) };
}

function readPool(pool: TableReader): PoolConfig {
  const name = pool.name('name');
  const backendName = pool.string('backend');
  const backend = backendNamed(backendName);
  if (!backend) return pool.fail('backend', `must be one of ${backendNames().map((known) => JSON.stringify(known)).join(', ')} (got ${JSON.stringify(backendName)})`);
  const common: PoolConfig = { name, backend: backendName };
  const maxImageBytes = pool.bytes('max_image_bytes');
  if (maxImageBytes !== undefined) common.maxImageBytes = maxImageBytes;
  const imageCache = readImageCache(pool);
  if (imageCache) common.imageCache = imageCache;
  const result = backend.readConfig(pool, common);
  pool.done();
  return result;
}

const MAX_ID = 2 ** 32 - 2;

/** `socket_group`: a gid, or a group name resolved now (an unknown name is a config error). */
function readSocketGroup(nbd: TableReader, resolveGroup: GroupResolver): number | undefined {
  const raw = nbd.peek('socket_group');
  if (raw === undefined || typeof raw === 'number' || typeof raw === 'bigint') return nbd.integer('socket_group', 0, MAX_ID);
  const name = nbd.string('socket_group');
  if (/^\d+$/.test(name)) {
    const gid = Number(name);
    if (gid > MAX_ID) nbd.fail('socket_group', `must be a group name or a gid from 0 to ${MAX_ID}`);
    return gid;
  }
  const gid = resolveGroup(name);
  if (gid === undefined) nbd.fail('socket_group', `no group named "${name}" on this host`);
  return gid;
}

/** `tls`: PSK (`psk_file`) or X.509 (`cert_file`, `key_file`, `ca_file`); the files are read at start-up (exports/nbd/tls.ts). */
function readNbdTls(nbd: TableReader): NbdTlsConfig | undefined {
  const tls = nbd.optionalTable('tls');
  if (!tls) return undefined;
  const x509Keys = ['cert_file', 'key_file', 'ca_file'];
  let config: NbdTlsConfig;
  if (tls.has('psk_file')) {
    const other = x509Keys.find((key) => tls.has(key));
    if (other) tls.fail(other, 'cannot be combined with psk_file: TLS is either PSK or X.509');
    config = { kind: 'psk', pskFile: tls.path('psk_file') };
  } else if (x509Keys.some((key) => tls.has(key))) {
    config = { kind: 'x509', certFile: tls.path('cert_file'), keyFile: tls.path('key_file'), caFile: tls.path('ca_file') };
  } else {
    return tls.fail('psk_file', 'is required, or cert_file, key_file and ca_file (X.509)');
  }
  tls.done();
  return config;
}

/** `socket_mode`: an octal string of permission bits ("0660"); TOML integers are refused (660 would be decimal). */
function readSocketMode(nbd: TableReader): number | undefined {
  if (!nbd.has('socket_mode')) return undefined;
  const text = nbd.string('socket_mode');
  if (!/^0?[0-7]{3}$/.test(text)) nbd.fail('socket_mode', `must be an octal string of permission bits like "0660" (got ${JSON.stringify(text)})`);
  return parseInt(text, 8);
}

/** Validates parsed TOML into an AgentConfig; group names are resolved with `resolveGroup`. */
export function readConfig(document: Table, source: string, baseDir: string, resolveGroup: GroupResolver = resolveGroupByGetent): AgentConfig {
  const top = new TableReader(document, '', source, baseDir);

  const control = top.table('control');
  const socket = control.path('socket', '/run/volagent/control.sock');
  const allow = control.array('allow').map((value, i) => {
    const rule = control.element('allow', i, value);
    const uid = rule.integer('uid', 0, 2 ** 32 - 2);
    const gid = rule.integer('gid', 0, 2 ** 32 - 2);
    const role = rule.string('role');
    if (role !== 'admin' && role !== 'reader' && role !== 'tenant') rule.fail('role', 'must be "admin", "reader" or "tenant"');
    const tenant = rule.has('tenant') ? rule.name('tenant') : undefined;
    if (role === 'tenant' && tenant === undefined) rule.fail('tenant', 'is required for role "tenant" (the tenant the peer is bound to)');
    if (role !== 'tenant' && tenant !== undefined) rule.fail('tenant', 'is only for role "tenant"');
    if ((uid === undefined) === (gid === undefined)) throw new ConfigError(source, `control.allow[${i}]`, 'needs exactly one of uid or gid');
    rule.done();
    return { ...(uid !== undefined ? { uid } : {}), ...(gid !== undefined ? { gid } : {}), role, ...(tenant !== undefined ? { tenant } : {}) } as AllowRule;
  });
  control.done();

  const catalog = top.table('catalog');
  const catalogPath = catalog.path('path', '/var/lib/volagent/catalog.db');
  catalog.done();

  const nbd = top.table('nbd');
  const listen = nbd.array('listen').map((value, i) => {
    const key = `listen[${i}]`;
    if (typeof value !== 'string') return nbd.fail(key, 'must be a string');
    const address = parseListen(value, nbd, key);
    return address.kind === 'unix' ? { kind: 'unix' as const, path: path.resolve(baseDir, address.path) } : address;
  });
  const allowList = nbd.boolean('allow_list', false);
  const socketMode = readSocketMode(nbd);
  const socketGroup = readSocketGroup(nbd, resolveGroup);
  const tls = readNbdTls(nbd);
  const plaintextTcp = nbd.boolean('plaintext_tcp', false);
  if (tls && plaintextTcp) nbd.fail('plaintext_tcp', 'contradicts [nbd] tls: with tls set, every TCP address requires TLS');
  const firstTcp = listen.findIndex((address) => address.kind === 'tcp');
  if (firstTcp >= 0 && !tls && !plaintextTcp) {
    nbd.fail(`listen[${firstTcp}]`, 'a TCP address needs [nbd] tls (psk_file, or cert_file, key_file and ca_file), or plaintext_tcp = true to serve exports unencrypted (one-host development)');
  }
  nbd.done();

  const agent = top.optionalTable('agent');
  const internalTenant = agent?.has('internal_tenant') ? agent.name('internal_tenant') : 'volagent-internal';
  allow.forEach((rule, i) => {
    if (rule.tenant === internalTenant) {
      throw new ConfigError(source, `control.allow[${i}].tenant`, `is the internal tenant (${internalTenant}): only an admin acts as the internal tenant`);
    }
  });
  const lockWaitMs = agent?.integer('lock_wait_ms', 0, 600_000) ?? DEFAULT_LOCK_WAIT_MS;
  const keepFinishedOperations = agent?.integer('keep_finished_operations', 0, 10_000_000) ?? DEFAULT_KEEP_FINISHED_OPERATIONS;
  agent?.done();

  const pools = top.array('pools').map((value, i) => readPool(top.element('pools', i, value)));
  if (pools.length === 0) top.fail('pools', 'at least one pool is required');
  const seen = new Set<string>();
  pools.forEach((pool, i) => {
    if (seen.has(pool.name)) throw new ConfigError(source, `pools[${i}].name`, `duplicate pool name "${pool.name}"`);
    seen.add(pool.name);
  });
  top.done();

  return {
    source, control: { socket, allow }, catalog: { path: catalogPath },
    nbd: {
      listen, allowList, ...(socketMode !== undefined ? { socketMode } : {}), ...(socketGroup !== undefined ? { socketGroup } : {}),
      ...(tls ? { tls } : {}), plaintextTcp,
    },
    pools, internalTenant, lockWaitMs, keepFinishedOperations,
  };
}

/** Parses TOML text; syntax errors keep the parser's line and column. */
export function parseConfig(text: string, source: string, baseDir: string, resolveGroup?: GroupResolver): AgentConfig {
  let document: Table;
  try {
    document = parseToml(text) as Table;
  } catch (error) {
    throw new ConfigError(source, '', `not valid TOML: ${(error as Error).message.split('\n')[0]}`);
  }
  return readConfig(document, source, baseDir, resolveGroup);
}

/** The config in `file`, or the embedded default (paths under the working directory) when no file is given. */
export async function loadConfig(file?: string): Promise<AgentConfig> {
  if (file === undefined) return parseConfig(EMBEDDED_DEFAULT_TOML, EMBEDDED_DEFAULT_SOURCE, process.cwd());
  const absolute = path.resolve(file);
  let text: string;
  try {
    text = await readFile(absolute, 'utf8');
  } catch (error) {
    throw new ConfigError(absolute, '', `cannot read: ${(error as Error).message}`);
  }
  return parseConfig(text, absolute, path.dirname(absolute));
}
