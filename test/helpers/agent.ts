// A real volagentd for tests: its own config, catalog and socket under a
// test directory, started as a child process (`bin/volagentd.js`), talked to
// over the unix socket with node:http. Teardown kills it if it still runs.
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import type { ClientRequest, IncomingMessage } from 'node:http';
import { request as httpRequest } from 'node:http';
import type { Readable } from 'node:stream';
import { existsSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import BetterSqlite3 from 'better-sqlite3';
import type { Test } from 'tap';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const VOLAGENTD = path.join(REPO_ROOT, 'bin', 'volagentd.js');
export const VOLAGENT = path.join(REPO_ROOT, 'bin', 'volagent.js');

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** Parsed JSON, or undefined for an empty body. */
  body: any;
  text: string;
}

export interface RequestOptions {
  /** Sent as it is instead of JSON.stringify(body). */
  raw?: string | Buffer;
  headers?: Record<string, string | number>;
}

/** Reads an answer whole: its status, headers, text and JSON (undefined when empty or not JSON). */
export function replyOf(res: IncomingMessage): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (chunk: Buffer) => chunks.push(chunk));
    res.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      let parsed: unknown;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        parsed = undefined;
      }
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed, text });
    });
    res.on('error', reject);
  });
}

/**
 * Sends `req` and settles with its answer. The agent may answer before the
 * body is sent (a refusal from the headers, `Connection: close`) and then
 * close: a write that fails after the answer began (EPIPE) does not lose the
 * answer, which settles the promise; an error before any answer rejects it.
 */
function answerOf(req: ClientRequest, resolve: (reply: Reply) => void, reject: (error: Error) => void): void {
  let answered = false;
  req.on('response', (res: IncomingMessage) => {
    answered = true;
    replyOf(res).then(resolve, reject);
  });
  req.on('error', (error) => {
    if (!answered) reject(error);
  });
}

/** One HTTP request on a unix socket. */
export function requestOn(socketPath: string, method: string, urlPath: string, body?: unknown, options: RequestOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const payload = options.raw ?? (body === undefined ? undefined : JSON.stringify(body));
    const headers: Record<string, string | number> = { ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}), ...options.headers };
    const req = httpRequest({ socketPath, method, path: urlPath, headers, agent: false });
    answerOf(req, resolve, reject);
    req.end(payload);
  });
}

export interface FilePoolSpec {
  name: string;
  path: string;
  /** TOML values, as written: `max_image_bytes = "4MiB"`. */
  maxImageBytes?: string;
  imageCache?: { maxBytes?: string; maxCount?: number };
}

export interface ThinPoolSpec {
  name: string;
  backend: 'thin';
  dataDevice: string;
  metadataDevice: string;
  deviceDir: string;
  /** TOML values, as written: `"64KiB"`, `"10%"`. */
  blockSize?: string;
  lowWater?: string;
  minFree?: string;
  errorIfNoSpace?: boolean;
  maxImageBytes?: string;
}

export interface LvmPoolSpec {
  name: string;
  backend: 'lvm';
  vg: string;
  thinPool: string;
  /** TOML values, as written: `"10%"`. */
  lowWater?: string;
  minFree?: string;
  maxImageBytes?: string;
  imageCache?: { maxBytes?: string; maxCount?: number };
}

export type PoolSpec = FilePoolSpec | ThinPoolSpec | LvmPoolSpec;

function lvmPoolLines(p: LvmPoolSpec): string[] {
  const optional: Array<[string, string | undefined]> = [['low_water', p.lowWater], ['min_free', p.minFree], ['max_image_bytes', p.maxImageBytes]];
  return [
    '[[pools]]', `name = ${JSON.stringify(p.name)}`, 'backend = "lvm"', `vg = ${JSON.stringify(p.vg)}`, `thin_pool = ${JSON.stringify(p.thinPool)}`,
    ...optional.filter(([, value]) => value !== undefined).map(([key, value]) => `${key} = ${JSON.stringify(value)}`),
    ...imageCacheLines(p.imageCache), '',
  ];
}

function imageCacheLines(cache: { maxBytes?: string; maxCount?: number } | undefined): string[] {
  return cache
    ? [`image_cache = { ${[
      ...(cache.maxBytes !== undefined ? [`max_bytes = ${JSON.stringify(cache.maxBytes)}`] : []),
      ...(cache.maxCount !== undefined ? [`max_count = ${cache.maxCount}`] : []),
    ].join(', ')} }`]
    : [];
}

function thinPoolLines(p: ThinPoolSpec): string[] {
  const optional: Array<[string, string | boolean | undefined]> = [
    ['block_size', p.blockSize], ['low_water', p.lowWater], ['min_free', p.minFree], ['error_if_no_space', p.errorIfNoSpace], ['max_image_bytes', p.maxImageBytes],
  ];
  return [
    '[[pools]]', `name = ${JSON.stringify(p.name)}`, 'backend = "thin"', `data_device = ${JSON.stringify(p.dataDevice)}`,
    `metadata_device = ${JSON.stringify(p.metadataDevice)}`, `device_dir = ${JSON.stringify(p.deviceDir)}`,
    ...optional.filter(([, value]) => value !== undefined).map(([key, value]) => `${key} = ${JSON.stringify(value)}`), '',
  ];
}

function poolLines(p: PoolSpec): string[] {
  if ('backend' in p) return p.backend === 'lvm' ? lvmPoolLines(p) : thinPoolLines(p);
  const cache = imageCacheLines(p.imageCache);
  return [
    '[[pools]]', `name = ${JSON.stringify(p.name)}`, 'backend = "file"', `path = ${JSON.stringify(p.path)}`,
    ...(p.maxImageBytes !== undefined ? [`max_image_bytes = ${JSON.stringify(p.maxImageBytes)}`] : []),
    ...cache, '',
  ];
}

export interface AgentSpec {
  dir: string;
  pools: PoolSpec[];
  lockWaitMs?: number;
  /** Extra environment (VOLAGENT_FAILPOINTS). */
  env?: NodeJS.ProcessEnv;
  /** How long start-up may take; default 20 s (a VM under TCG needs more). */
  startTimeoutMs?: number;
  /** NBD addresses besides `unix:<dir>/nbd.sock`, as written in `[nbd].listen` (`tcp:127.0.0.1:0`). */
  nbdListen?: string[];
  /** `[nbd] tls`: a PSK file, or X.509 files. */
  nbdTls?: { pskFile: string } | { certFile: string; keyFile: string; caFile: string };
  /** `[nbd] plaintext_tcp = true`: TCP addresses without TLS. */
  nbdPlaintextTcp?: boolean;
  /** `[control].allow` rules; none: root only. */
  allow?: Array<{ uid?: number; gid?: number; role: 'admin' | 'reader' | 'tenant'; tenant?: string }>;
  /** `[nbd] socket_mode` and `socket_group`, as written in TOML (`"0660"`, `4242` or `"kvm"`). */
  nbdSocket?: { mode?: string; group?: string | number };
  /** `[agent] keep_finished_operations`. */
  keepFinishedOperations?: number;
  /** Starts the agent's process in place of node:child_process `spawn`, e.g. a netns Host's `spawn` (test/helpers/netns.ts). */
  spawn?: SpawnFunction;
}

export type SpawnFunction = (command: string, args: string[], options: SpawnOptions) => ChildProcess;

export interface StreamOptions {
  headers?: Record<string, string | number>;
  /** Called with the request once headers are sent, e.g. to break it off. */
  onRequest?: (request: ClientRequest) => void;
}

/**
 * Sends `data` as the body of one request (chunked unless a content-length
 * header is given) and collects the JSON answer, also when the agent answers
 * before the body is sent and sending it then fails. Only `expect:
 * 100-continue` holds the body back until the agent says to go on.
 */
export function streamOn(socketPath: string, method: string, urlPath: string, data: Readable | Buffer, options: StreamOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers = { 'content-type': 'application/octet-stream', ...options.headers };
    const req = httpRequest({ socketPath, method, path: urlPath, headers, agent: false });
    answerOf(req, resolve, reject);
    const send = (): void => {
      if (Buffer.isBuffer(data)) req.end(data);
      else data.pipe(req);
    };
    if (options.headers?.expect === '100-continue') req.once('continue', send);
    else send();
    options.onRequest?.(req);
  });
}

export interface Download {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  sha256: string;
  bytes: number;
  /** The body when it is small (under 16 MiB); else undefined. */
  body: Buffer | undefined;
}

/** GETs raw bytes, hashing them as they arrive; `onResponse` may pause the stream. */
export function downloadOn(socketPath: string, urlPath: string, headers: Record<string, string> = {}, onResponse?: (res: IncomingMessage) => void): Promise<Download> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath, method: 'GET', path: urlPath, headers, agent: false }, (res) => {
      const hash = createHash('sha256');
      const kept: Buffer[] = [];
      let bytes = 0;
      res.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
        if (bytes <= 16 * 1024 * 1024) kept.push(chunk);
      });
      res.on('end', () => resolve({
        status: res.statusCode ?? 0, headers: res.headers, sha256: hash.digest('hex'), bytes,
        body: bytes <= 16 * 1024 * 1024 ? Buffer.concat(kept) : undefined,
      }));
      res.on('error', reject);
      onResponse?.(res);
    });
    req.on('error', reject);
    req.end();
  });
}

export interface AgentProcess {
  socket: string;
  catalogPath: string;
  configFile: string;
  child: ChildProcess;
  /** Log lines (JSON) the agent wrote to stdout so far. */
  logs: string[];
  stderr: () => string;
  request(method: string, urlPath: string, body?: unknown, options?: RequestOptions): Promise<Reply>;
  /** SIGTERM, then resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** SIGKILL, resolves when it is gone. */
  kill(): Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export async function writeAgentConfig(spec: AgentSpec): Promise<string> {
  const configFile = path.join(spec.dir, 'volagent.toml');
  const lines = [
    '[control]', `socket = ${JSON.stringify(path.join(spec.dir, 'control.sock'))}`,
    ...(spec.allow ? [`allow = [${spec.allow.map((rule) => `{ ${[
      ...(rule.uid !== undefined ? [`uid = ${rule.uid}`] : []), ...(rule.gid !== undefined ? [`gid = ${rule.gid}`] : []), `role = "${rule.role}"`, ...(rule.tenant !== undefined ? [`tenant = "${rule.tenant}"`] : []),
    ].join(', ')} }`).join(', ')}]`] : []), '',
    '[catalog]', `path = ${JSON.stringify(path.join(spec.dir, 'catalog.db'))}`, '',
    '[nbd]', `listen = [${[`unix:${path.join(spec.dir, 'nbd.sock')}`, ...(spec.nbdListen ?? [])].map((a) => JSON.stringify(a)).join(', ')}]`,
    ...(spec.nbdSocket?.mode !== undefined ? [`socket_mode = ${JSON.stringify(spec.nbdSocket.mode)}`] : []),
    ...(spec.nbdSocket?.group !== undefined ? [`socket_group = ${JSON.stringify(spec.nbdSocket.group)}`] : []),
    ...(spec.nbdTls ? [`tls = { ${'pskFile' in spec.nbdTls ? `psk_file = ${JSON.stringify(spec.nbdTls.pskFile)}`
      : `cert_file = ${JSON.stringify(spec.nbdTls.certFile)}, key_file = ${JSON.stringify(spec.nbdTls.keyFile)}, ca_file = ${JSON.stringify(spec.nbdTls.caFile)}`} }`] : []),
    ...(spec.nbdPlaintextTcp ? ['plaintext_tcp = true'] : []), '',
    ...(spec.lockWaitMs !== undefined || spec.keepFinishedOperations !== undefined ? ['[agent]',
      ...(spec.lockWaitMs !== undefined ? [`lock_wait_ms = ${spec.lockWaitMs}`] : []),
      ...(spec.keepFinishedOperations !== undefined ? [`keep_finished_operations = ${spec.keepFinishedOperations}`] : []), ''] : []),
    ...spec.pools.flatMap(poolLines),
  ];
  await writeFile(configFile, lines.join('\n'));
  return configFile;
}

/** Spawns volagentd with `args` (no readiness wait): for start-up failure tests. */
export function spawnAgent(args: string[], env: NodeJS.ProcessEnv = {}, spawnWith: SpawnFunction = spawn): ChildProcess {
  // A test runner started by systemd must not lend the agent its notify socket or passed sockets.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^(NOTIFY_SOCKET|WATCHDOG_(USEC|PID)|LISTEN_(PID|FDS|FDNAMES))$/.test(name)));
  return spawnWith(process.execPath, [VOLAGENTD, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...inherited, ...env } });
}

/** Collects a finished child's output and exit code. */
export function outcomeOf(child: ChildProcess): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
  // 'close', not 'exit': the output pipes may still hold data when the process has exited.
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

/** Starts an agent on `spec` and waits until it answers GET /v1/version. */
export async function startAgent(t: Test, spec: AgentSpec): Promise<AgentProcess> {
  const configFile = await writeAgentConfig(spec);
  const socket = path.join(spec.dir, 'control.sock');
  const child = spawnAgent(['--config', configFile], spec.env, spec.spawn);
  const logs: string[] = [];
  let stderr = '';
  let partial = '';
  child.stdout!.on('data', (d: Buffer) => {
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    logs.push(...lines);
  });
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let running = true;
  void exited.then(() => { running = false; });
  t.teardown(async () => {
    if (running) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const agent: AgentProcess = {
    socket, catalogPath: path.join(spec.dir, 'catalog.db'), configFile, child, logs, stderr: () => stderr, exited,
    request: (method, urlPath, body, options) => requestOn(socket, method, urlPath, body, options),
    stop: async (signal = 'SIGTERM') => {
      child.kill(signal);
      return (await exited).code;
    },
    kill: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
  const startTimeoutMs = spec.startTimeoutMs ?? 20_000;
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    if (!running) throw new Error(`volagentd exited during start-up: ${stderr}${logs.join('\n')}`);
    try {
      const reply = await agent.request('GET', '/v1/version');
      if (reply.status === 200) return agent;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`volagentd did not answer within ${startTimeoutMs / 1000} s: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface CatalogSnapshot {
  volumes: { id: string; state: string; pool: string; size_bytes: number }[];
  snapshots: { volume_id: string; id: string; state: string }[];
  operations: { id: string; state: string }[];
  images: { id: string; state: string; volume_id: string; cached: number }[];
}

/** Reads the catalog directly (read-only; WAL lets it beside the running agent). */
export function readCatalog(file: string): CatalogSnapshot {
  const db = new BetterSqlite3(file, { readonly: true, fileMustExist: true });
  try {
    return {
      volumes: db.prepare('SELECT id, state, pool, size_bytes FROM volumes ORDER BY id').all() as CatalogSnapshot['volumes'],
      snapshots: db.prepare('SELECT volume_id, id, state FROM snapshots ORDER BY volume_id, id').all() as CatalogSnapshot['snapshots'],
      operations: db.prepare('SELECT id, state FROM operations ORDER BY id').all() as CatalogSnapshot['operations'],
      images: db.prepare('SELECT id, state, volume_id, cached FROM images ORDER BY id').all() as CatalogSnapshot['images'],
    };
  } finally {
    db.close();
  }
}

/** Every entry of a file pool's objects directory, temporaries included. */
export async function poolEntries(poolPath: string): Promise<string[]> {
  return (await readdir(path.join(poolPath, 'objects'))).sort();
}

/** Polls GET /v1/operations/{id} until it has ended. */
export async function waitOperation(agent: AgentProcess, id: string): Promise<any> {
  const reply = await agent.request('GET', `/v1/operations/${id}?wait=true`);
  if (reply.status !== 200) throw new Error(`GET operation ${id}: ${reply.status} ${reply.text}`);
  return reply.body;
}

/**
 * Stops `agent` and starts it again on `spec` with its next copy held in the
 * middle (failpoint `clone.copying=hold:FILE`, FILE in `spec.dir`): resolves
 * the new agent and FILE, whose removal lets the copy go on.
 */
export async function restartHoldingNextCopy(t: Test, agent: AgentProcess, spec: AgentSpec, label: string): Promise<{ agent: AgentProcess; held: string }> {
  const held = path.join(spec.dir, `held-${label}`);
  await agent.stop();
  return { agent: await startAgent(t, { ...spec, env: { ...spec.env, VOLAGENT_FAILPOINTS: `clone.copying=hold:${held}` } }), held };
}

/** Resolves once the held copy has reached its failpoint (its FILE exists), within 5 s. */
export async function untilCopyHeld(held: string): Promise<void> {
  for (let i = 0; i < 500 && !existsSync(held); i++) await new Promise((r) => setTimeout(r, 10));
  if (!existsSync(held)) throw new Error(`the copy never reached the held failpoint (${held})`);
}
