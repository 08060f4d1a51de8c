// `volagent` agent commands as a user runs them (a real process), against a
// scripted fake agent on a unix socket: the requests each command makes, its
// human and --json output, exit statuses for every kind of answer, following
// a 202 operation, and Ctrl-C cancelling it. The real daemon is exercised by
// test/privileged/cli-agent.test.ts.
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import type { Test } from 'tap';

import { tempDir } from '../helpers/temp-dir.js';

const bin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'volagent.js');
const GiB = 2 ** 30;

interface Recorded {
  method: string;
  url: string;
  body: unknown;
}

interface Answer {
  status: number;
  body?: unknown;
  /** Sent as it is, instead of JSON. */
  raw?: string;
}

type Handler = (request: Recorded, agent: FakeAgent) => Answer | Promise<Answer>;

interface FakeAgent {
  socket: string;
  requests: Recorded[];
  connections: number;
  /** Requests as "METHOD url" lines. */
  calls(): string[];
}

async function fakeAgent(t: Test, handler: Handler): Promise<FakeAgent> {
  const dir = await tempDir(t, 'volagent-cli-');
  const agent: FakeAgent = {
    socket: path.join(dir, 'control.sock'),
    requests: [],
    connections: 0,
    calls: () => agent.requests.map((r) => `${r.method} ${r.url}`),
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const recorded = { method: req.method!, url: req.url!, body: text ? JSON.parse(text) : undefined };
      agent.requests.push(recorded);
      void Promise.resolve(handler(recorded, agent)).then((answer) => {
        const payload = answer.raw ?? (answer.body === undefined ? '' : JSON.stringify(answer.body));
        res.writeHead(answer.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
        res.end(payload);
      });
    });
  });
  server.on('connection', () => { agent.connections += 1; });
  await new Promise<void>((resolve) => server.listen(agent.socket, resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  return agent;
}

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface RunOptions {
  env?: NodeJS.ProcessEnv;
  /** Called once the process runs; may send it signals. */
  onSpawn?: (child: ReturnType<typeof spawn>) => void;
}

function volagent(args: string[], options: RunOptions = {}): Promise<Outcome> {
  const env = { ...process.env, ...options.env };
  if (!options.env || !('VOLAGENT_SOCKET' in options.env)) delete env.VOLAGENT_SOCKET;
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env, cwd: path.dirname(bin) });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  options.onSpawn?.(child);
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

const volume = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  id: 'v1', pool: 'default', tenant: 't1', kind: 'volume', sizeBytes: 10 * GiB, allocatedBytes: 0, state: 'available',
  cloneMethod: 'create', readOnly: false, createdAt: '2025-01-02T03:04:05.000Z', ...over,
});

const snapshot = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  id: 's1', volume: 'v1', pool: 'default', tenant: 't1', sizeBytes: 10 * GiB, allocatedBytes: 4096, state: 'available',
  cloneMethod: 'reflink', readOnly: true, createdAt: '2025-01-02T03:04:06.000Z', ...over,
});

const operation = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  id: 'op-1', kind: 'clone', target: 'v2', state: 'running', doneBytes: 0, totalBytes: 4 * GiB,
  createdAt: '2025-01-02T03:04:07.000Z', updatedAt: '2025-01-02T03:04:07.000Z', ...over,
});

const notFound = (what: string): Answer => ({ status: 404, body: { error: { code: 'ROUTE_NOT_FOUND', message: `unexpected ${what}`, details: {} } } });

t.test('pools: a table of name, backend, capabilities, capacity; --json is the body as sent', async (t) => {
  const pools = [
    { name: 'default', backend: 'file', capabilities: { reflink: true, constantTimeClone: true }, capacity: { totalBytes: 100 * GiB, usedBytes: 1536, freeBytes: 100 * GiB - 1536 } },
    { name: 'thin0', backend: 'thin', capabilities: { reflink: false, constantTimeClone: true }, capacity: { totalBytes: 2048, usedBytes: 0, freeBytes: 2048, dataPercent: 0 }, health: { mode: 'rw', needsCheck: false, lowWater: false } },
    { name: 'thin1', backend: 'thin', capabilities: { reflink: true, constantTimeClone: true }, capacity: { totalBytes: 2048, usedBytes: 2048, freeBytes: 0, dataPercent: 100 }, health: { mode: 'out_of_data_space', needsCheck: true, lowWater: true } },
  ];
  const agent = await fakeAgent(t, (r) => (r.url === '/v1/pools' ? { status: 200, body: pools } : notFound(r.url)));
  const human = await volagent(['pools', '--socket', agent.socket]);
  t.equal(human.code, 0, human.stderr);
  t.equal(human.stdout, [
    'NAME     BACKEND  REFLINK  CONSTANT-TIME    TOTAL     USED       FREE  HEALTH',
    'default  file     yes      yes            100 GiB  1.5 KiB  100.0 GiB  -',
    'thin0    thin     no       yes            2.0 KiB      0 B    2.0 KiB  rw',
    'thin1    thin     yes      yes            2.0 KiB  2.0 KiB        0 B  out_of_data_space,low-water,needs-check',
    '',
  ].join('\n'));
  const json = await volagent(['--json', `--socket=${agent.socket}`, 'pools']);
  t.equal(json.code, 0);
  t.same(JSON.parse(json.stdout), pools);
  t.equal(json.stdout.split('\n').length, 2, 'one line of JSON');
  t.same(agent.calls(), ['GET /v1/pools', 'GET /v1/pools']);
});

t.test('ls: filters become the query; table columns as documented', async (t) => {
  const agent = await fakeAgent(t, () => ({ status: 200, body: [volume(), volume({ id: 'img', kind: 'image', readOnly: true, cloneMethod: 'reflink', allocatedBytes: GiB, source: { volume: 'v1' } })] }));
  const r = await volagent(['--socket', agent.socket, 'ls', '--pool', 'default', '--tenant', 't1', '--kind', 'image']);
  t.equal(r.code, 0, r.stderr);
  t.same(agent.calls(), ['GET /v1/volumes?pool=default&tenant=t1&kind=image']);
  t.equal(r.stdout, [
    'ID   POOL     TENANT  KIND        SIZE  ALLOCATED  STATE      METHOD   RO',
    'v1   default  t1      volume  10.0 GiB        0 B  available  create   no',
    'img  default  t1      image   10.0 GiB    1.0 GiB  available  reflink  yes',
    '',
  ].join('\n'));
  await volagent(['ls', '--socket', agent.socket]);
  t.equal(agent.calls()[1], 'GET /v1/volumes', 'no filters, no query');
});

t.test('show: the volume as fields, then its snapshots; --json is the volume as sent', async (t) => {
  const agent = await fakeAgent(t, (r) => {
    if (r.url === '/v1/volumes/v1') return { status: 200, body: volume({ source: { snapshot: 's0' }, cloneMethod: 'reflink' }) };
    if (r.url === '/v1/volumes/v1/snapshots') return { status: 200, body: [snapshot()] };
    return notFound(r.url);
  });
  const r = await volagent(['show', 'v1', '--socket', agent.socket]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, [
    'id:        v1',
    'pool:      default',
    'tenant:    t1',
    'kind:      volume',
    'size:      10.0 GiB (10737418240 bytes)',
    'allocated: 0 B',
    'state:     available',
    'source:    snapshot s0',
    'method:    reflink',
    'read-only: no',
    'created:   2025-01-02T03:04:05.000Z',
    'snapshots:',
    '  ID  VOLUME      SIZE  ALLOCATED  STATE      METHOD   CREATED',
    '  s1  v1      10.0 GiB    4.0 KiB  available  reflink  2025-01-02T03:04:06.000Z',
    '',
  ].join('\n'));
  const json = await volagent(['show', 'v1', '--json', '--socket', agent.socket]);
  t.same(JSON.parse(json.stdout), volume({ source: { snapshot: 's0' }, cloneMethod: 'reflink' }));
  t.same(agent.calls(), ['GET /v1/volumes/v1', 'GET /v1/volumes/v1/snapshots', 'GET /v1/volumes/v1']);
});

t.test('create: PUT with the size in bytes; 201 created, 200 identical', async (t) => {
  let status = 201;
  const agent = await fakeAgent(t, () => ({ status, body: volume({ pool: 'fast' }) }));
  const r = await volagent(['create', 'v1', '--size', '10GiB', '--tenant', 't1', '--pool', 'fast', '--socket', agent.socket]);
  t.equal(r.code, 0, r.stderr);
  t.same(agent.requests[0], { method: 'PUT', url: '/v1/volumes/v1', body: { tenant: 't1', sizeBytes: 10 * GiB, pool: 'fast' } });
  t.equal(r.stdout, 'created v1: 10.0 GiB in pool fast, tenant t1\n');
  status = 200;
  const again = await volagent(['create', 'v1', '--size', '10737418240', '--tenant', 't1', '--socket', agent.socket]);
  t.same(agent.requests[1]!.body, { tenant: 't1', sizeBytes: 10 * GiB }, 'no pool: the agent chooses');
  t.equal(again.stdout, 'v1: 10.0 GiB in pool fast, tenant t1 (it existed already, identical)\n');
});

t.test('clone: a constant-time clone answers at once', async (t) => {
  const made = volume({ id: 'v2', source: { volume: 'v1' }, cloneMethod: 'reflink' });
  const agent = await fakeAgent(t, () => ({ status: 201, body: made }));
  const r = await volagent(['clone', 'v1', 'v2', '--tenant', 't1', '--socket', agent.socket]);
  t.equal(r.code, 0, r.stderr);
  t.same(agent.requests[0], { method: 'PUT', url: '/v1/volumes/v2', body: { tenant: 't1', source: { volume: 'v1' } } }, 'no ?wait');
  t.equal(r.stdout, 'created v2: 10.0 GiB in pool default, tenant t1, from volume v1, by reflink\n');
  const s = await volagent(['clone', 's1', 'v3', '--tenant', 't1', '--from-snapshot', '--size', '20GiB', '--json', '--socket', agent.socket]);
  t.equal(s.code, 0, s.stderr);
  t.same(agent.requests[1]!.body, { tenant: 't1', source: { snapshot: 's1' }, sizeBytes: 20 * GiB });
  t.same(JSON.parse(s.stdout), made);
});

/** A copy clone: 202, then `polls` GETs of the running operation, then `end`. */
function copyingAgent(t: Test, end: Record<string, unknown>, polls = 2): Promise<FakeAgent> {
  let seen = 0;
  return fakeAgent(t, (r) => {
    if (r.method === 'PUT') return { status: 202, body: { operation: operation(), volume: volume({ id: 'v2', state: 'creating', cloneMethod: null, operation: 'op-1' }) } };
    if (r.method === 'GET' && r.url === '/v1/operations/op-1') {
      seen += 1;
      return { status: 200, body: seen <= polls ? operation({ doneBytes: seen * GiB }) : operation({ doneBytes: 4 * GiB, ...end }) };
    }
    if (r.method === 'GET' && r.url === '/v1/volumes/v2') return { status: 200, body: volume({ id: 'v2', source: { volume: 'v1' }, cloneMethod: 'copy_file_range' }) };
    return notFound(`${r.method} ${r.url}`);
  });
}

t.test('clone: a 202 operation is followed until it succeeds, then the volume is shown', async (t) => {
  const agent = await copyingAgent(t, { state: 'succeeded' });
  const r = await volagent(['clone', 'v1', 'v2', '--tenant', 't1', '--socket', agent.socket]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'created v2: 10.0 GiB in pool default, tenant t1, from volume v1, by copy_file_range\n');
  t.equal(r.stderr, '', 'no progress bar when stderr is not a terminal');
  t.same(agent.calls(), ['PUT /v1/volumes/v2', 'GET /v1/operations/op-1', 'GET /v1/operations/op-1', 'GET /v1/operations/op-1', 'GET /v1/volumes/v2']);

  const json = await volagent(['clone', 'v1', 'v2', '--tenant', 't1', '--json', '--socket', agent.socket]);
  t.equal(json.code, 0);
  t.same(JSON.parse(json.stdout), volume({ id: 'v2', source: { volume: 'v1' }, cloneMethod: 'copy_file_range' }), '--json: the finished volume only');
});

t.test('clone --no-wait prints the operation and returns', async (t) => {
  const agent = await copyingAgent(t, { state: 'succeeded' });
  const r = await volagent(['clone', 'v1', 'v2', '--tenant', 't1', '--no-wait', '--socket', agent.socket]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'clone of volume v1 to v2 started as operation op-1; follow it with: volagent ops op-1\n');
  const json = await volagent(['clone', 'v1', 'v2', '--tenant', 't1', '--no-wait', '--json', '--socket', agent.socket]);
  t.match(JSON.parse(json.stdout), { operation: { id: 'op-1', state: 'running' }, volume: { id: 'v2', state: 'creating' } }, 'the 202 body as sent');
  t.same(agent.calls(), ['PUT /v1/volumes/v2', 'PUT /v1/volumes/v2'], 'nothing polled');
});

t.test('clone: a failed operation exits 1 with its error', async (t) => {
  const error = { code: 'INSUFFICIENT_SPACE', message: 'pool default is out of space' };
  const agent = await copyingAgent(t, { state: 'failed', error }, 1);
  const r = await volagent(['clone', 'v1', 'v2', '--tenant', 't1', '--socket', agent.socket]);
  t.equal(r.code, 1);
  t.equal(r.stderr, 'volagent: INSUFFICIENT_SPACE: clone of volume v1 to v2 failed: pool default is out of space\n');
  t.equal(r.stdout, '');
  const json = await volagent(['clone', 'v1', 'v2', '--tenant', 't1', '--json', '--socket', agent.socket]);
  t.equal(json.code, 1);
  t.match(JSON.parse(json.stdout), { id: 'op-1', state: 'failed', error }, '--json: the operation as the agent sent it');
  t.notOk(agent.calls().includes('GET /v1/volumes/v2'), 'the volume is not read');
});

t.test('clone: Ctrl-C cancels the operation, waits for the agent, exits 1', async (t) => {
  let deleted = 0;
  const agent = await fakeAgent(t, (r) => {
    if (r.method === 'PUT') return { status: 202, body: { operation: operation(), volume: volume({ id: 'v2', state: 'creating' }) } };
    if (r.method === 'GET') return { status: 200, body: operation({ doneBytes: GiB }) };
    if (r.method === 'DELETE' && r.url === '/v1/operations/op-1') {
      deleted += 1;
      return new Promise((resolve) => setTimeout(() => resolve({ status: 200, body: operation({ state: 'cancelled', error: { code: 'OPERATION_CANCELLED', message: 'cancelled' } }) }), 300));
    }
    return notFound(r.url);
  });
  const r = await volagent(['clone', 'v1', 'v2', '--tenant', 't1', '--socket', agent.socket], {
    onSpawn: (child) => {
      const timer = setInterval(() => {
        if (agent.calls().filter((c) => c === 'GET /v1/operations/op-1').length >= 2) {
          clearInterval(timer);
          child.kill('SIGINT');
        }
      }, 20);
    },
  });
  t.equal(r.code, 1);
  t.equal(r.stderr, 'volagent: OPERATION_CANCELLED: clone of volume v1 to v2 cancelled; nothing was left behind\n');
  t.equal(deleted, 1, 'one DELETE /v1/operations/op-1');
  t.equal(agent.calls().at(-1), 'DELETE /v1/operations/op-1', 'nothing after the cancel');
});

t.test('clone: a second Ctrl-C stops waiting for a slow cancel', async (t) => {
  const agent = await fakeAgent(t, (r) => {
    if (r.method === 'PUT') return { status: 202, body: { operation: operation(), volume: volume({ id: 'v2', state: 'creating' }) } };
    if (r.method === 'GET') return { status: 200, body: operation() };
    return new Promise<Answer>(() => {}); // the cancel never answers
  });
  const r = await volagent(['clone', 'v1', 'v2', '--tenant', 't1', '--socket', agent.socket], {
    onSpawn: (child) => {
      const timer = setInterval(() => {
        if (agent.calls().includes('DELETE /v1/operations/op-1')) {
          clearInterval(timer);
          child.kill('SIGINT');
        } else if (agent.calls().includes('GET /v1/operations/op-1') && !child.killed) {
          child.kill('SIGINT');
        }
      }, 20);
    },
  });
  t.equal(r.code, 1);
  t.equal(r.stderr, 'volagent: INTERRUPTED: stopped waiting; the agent is still cancelling operation op-1 (see: volagent ops op-1)\n');
});

t.test('resize: POST the size in bytes', async (t) => {
  const agent = await fakeAgent(t, () => ({ status: 200, body: volume({ sizeBytes: 20 * GiB }) }));
  const r = await volagent(['resize', 'v1', '--size', '20G', '--socket', agent.socket]);
  t.equal(r.code, 0, r.stderr);
  t.same(agent.requests, [{ method: 'POST', url: '/v1/volumes/v1/resize', body: { sizeBytes: 20 * GiB } }]);
  t.equal(r.stdout, 'v1: 20.0 GiB (21474836480 bytes)\n');
});

t.test('snapshot: made at once, or followed like a clone; snapshots lists; rm-snapshot deletes', async (t) => {
  let copy = false;
  let polled = 0;
  const agent = await fakeAgent(t, (r) => {
    if (r.method === 'PUT') {
      return copy ? { status: 202, body: { operation: operation({ kind: 'snapshot', target: 'v1/s2' }), snapshot: snapshot({ id: 's2', state: 'creating' }) } }
        : { status: 201, body: snapshot() };
    }
    if (r.url === '/v1/operations/op-1') return { status: 200, body: operation({ kind: 'snapshot', state: ++polled > 1 ? 'succeeded' : 'running' }) };
    if (r.url === '/v1/volumes/v1/snapshots/s2') return { status: 200, body: snapshot({ id: 's2', cloneMethod: 'copy_file_range' }) };
    if (r.url === '/v1/volumes/v1/snapshots') return { status: 200, body: [snapshot()] };
    if (r.method === 'DELETE') return { status: 204 };
    return notFound(r.url);
  });
  const made = await volagent(['snapshot', 'v1', 's1', '--socket', agent.socket]);
  t.equal(made.code, 0, made.stderr);
  t.equal(made.stdout, 'created snapshot s1 of v1: 10.0 GiB in pool default, by reflink\n');
  t.same(agent.requests[0], { method: 'PUT', url: '/v1/volumes/v1/snapshots/s1', body: undefined }, 'no body');
  copy = true;
  const copied = await volagent(['snapshot', 'v1', 's2', '--socket', agent.socket]);
  t.equal(copied.code, 0, copied.stderr);
  t.equal(copied.stdout, 'created snapshot s2 of v1: 10.0 GiB in pool default, by copy_file_range\n');
  const list = await volagent(['snapshots', 'v1', '--socket', agent.socket]);
  t.match(list.stdout, /^ID  VOLUME      SIZE  ALLOCATED  STATE      METHOD   CREATED\ns1  v1      10\.0 GiB/);
  const rm = await volagent(['rm-snapshot', 'v1', 's1', '--socket', agent.socket]);
  t.equal(rm.code, 0);
  t.equal(rm.stdout, 'deleted snapshot s1 of v1\n');
  t.same(agent.calls(), [
    'PUT /v1/volumes/v1/snapshots/s1', 'PUT /v1/volumes/v1/snapshots/s2', 'GET /v1/operations/op-1', 'GET /v1/operations/op-1',
    'GET /v1/volumes/v1/snapshots/s2', 'GET /v1/volumes/v1/snapshots', 'DELETE /v1/volumes/v1/snapshots/s1',
  ]);
});

t.test('rm: DELETE, 204; --json prints nothing (the agent sent no body)', async (t) => {
  const agent = await fakeAgent(t, () => ({ status: 204 }));
  const r = await volagent(['rm', 'v1', '--socket', agent.socket]);
  t.equal(r.code, 0);
  t.equal(r.stdout, 'deleted v1\n');
  const json = await volagent(['rm', 'v1', '--json', '--socket', agent.socket]);
  t.equal(json.stdout, '');
  t.same(agent.calls(), ['DELETE /v1/volumes/v1', 'DELETE /v1/volumes/v1']);
});

t.test('ops lists and shows operations; cancel DELETEs one', async (t) => {
  const failed = operation({ id: 'op-2', state: 'failed', doneBytes: GiB, error: { code: 'INSUFFICIENT_SPACE', message: 'full' } });
  const agent = await fakeAgent(t, (r) => {
    if (r.url === '/v1/operations') return { status: 200, body: [operation({ doneBytes: GiB }), failed] };
    if (r.method === 'GET' && r.url === '/v1/operations/op-2') return { status: 200, body: failed };
    if (r.method === 'DELETE' && r.url === '/v1/operations/op-1') return { status: 200, body: operation({ state: 'cancelled' }) };
    if (r.method === 'DELETE' && r.url === '/v1/operations/op-2') return { status: 200, body: failed };
    return notFound(r.url);
  });
  const list = await volagent(['ops', '--socket', agent.socket]);
  t.equal(list.stdout, [
    'ID    KIND   TARGET  STATE          PROGRESS  CREATED                   ERROR',
    'op-1  clone  v2      running  25% of 4.0 GiB  2025-01-02T03:04:07.000Z',
    'op-2  clone  v2      failed   25% of 4.0 GiB  2025-01-02T03:04:07.000Z  INSUFFICIENT_SPACE',
    '',
  ].join('\n'));
  const one = await volagent(['ops', 'op-2', '--socket', agent.socket]);
  t.match(one.stdout, /^id:       op-2\n.*\nstate:    failed\nprogress: 25% of 4\.0 GiB \(1073741824\/4294967296 bytes\)\n.*error:    INSUFFICIENT_SPACE: full\n$/s);
  const cancel = await volagent(['cancel', 'op-1', '--socket', agent.socket]);
  t.equal(cancel.stdout, 'cancelled operation op-1 (clone v2); nothing was left behind\n');
  const ended = await volagent(['cancel', 'op-2', '--socket', agent.socket]);
  t.equal(ended.code, 0);
  t.equal(ended.stdout, 'operation op-2 (clone v2) had already ended: failed\n');
});

t.test('check: one line per difference, then clean or the count; exit 1 while differences remain', async (t) => {
  const differences = [
    { kind: 'orphan', pool: 'default', object: 'x.raw', detail: 'no row names this object' },
    { kind: 'operation', operation: 'op-9', detail: 'left running' },
  ];
  const agent = await fakeAgent(t, (r) => (r.method === 'GET'
    ? { status: 200, body: { clean: false, repaired: false, differences } }
    : { status: 200, body: { clean: true, repaired: true, differences: differences.map((d) => ({ ...d, action: d.kind === 'orphan' ? 'removed' : 'finished' })) } }));
  const check = await volagent(['check', '--socket', agent.socket]);
  t.equal(check.code, 1);
  t.equal(check.stdout, 'orphan default x.raw: no row names this object\noperation - op-9: left running\n2 differences\n');
  const repair = await volagent(['check', '--repair', '--socket', agent.socket]);
  t.equal(repair.code, 0);
  t.equal(repair.stdout, 'orphan default x.raw: no row names this object [removed]\noperation - op-9: left running [finished]\nclean (2 differences repaired)\n');
  t.same(agent.calls(), ['GET /v1/check', 'POST /v1/check/repair']);
});

t.test('check: clean', async (t) => {
  const agent = await fakeAgent(t, () => ({ status: 200, body: { clean: true, repaired: false, differences: [] } }));
  const r = await volagent(['check', '--socket', agent.socket]);
  t.equal(r.code, 0);
  t.equal(r.stdout, 'clean\n');
});

t.test('version', async (t) => {
  const agent = await fakeAgent(t, () => ({ status: 200, body: { version: '9.8.7', api: 1 } }));
  const r = await volagent(['version', '--socket', agent.socket]);
  t.equal(r.code, 0);
  t.match(r.stdout, /^agent 9\.8\.7 \(API 1\), client \d+\.\d+\.\d+\n$/);
});

t.test('agent errors: one line CODE: message, exit status by HTTP status, --json adds the body on stdout', async (t) => {
  const cases: Array<[number, string, number]> = [
    [400, 'INVALID_SIZE', 2], [403, 'TENANT_FORBIDDEN', 6], [404, 'VOLUME_NOT_FOUND', 3], [409, 'VOLUME_EXISTS', 4],
    [413, 'PAYLOAD_TOO_LARGE', 2], [422, 'UNSUPPORTED_FOR_POOL', 2], [500, 'INTERNAL', 1], [507, 'INSUFFICIENT_SPACE', 1],
  ];
  let current = cases[0]!;
  const agent = await fakeAgent(t, () => ({ status: current[0], body: { error: { code: current[1], message: `${current[1]} happened`, details: { volume: 'v2' } } } }));
  for (const c of cases) {
    current = c;
    const [status, code, exit] = c;
    const r = await volagent(['clone', 'v1', 'v2', '--tenant', 't1', '--socket', agent.socket]);
    t.equal(r.code, exit, `${status} ${code} exits ${exit}`);
    t.equal(r.stderr, `volagent: ${code}: ${code} happened\n`);
    t.equal(r.stdout, '');
    const json = await volagent(['show', 'v2', '--json', '--socket', agent.socket]);
    t.equal(json.code, exit);
    t.same(JSON.parse(json.stdout), { error: { code, message: `${code} happened`, details: { volume: 'v2' } } });
    t.equal(json.stderr, `volagent: ${code}: ${code} happened\n`);
  }
});

t.test('an answer that is not JSON is an agent fault (exit 1)', async (t) => {
  const agent = await fakeAgent(t, () => ({ status: 502, raw: '<html>bad gateway</html>' }));
  const r = await volagent(['pools', '--socket', agent.socket]);
  t.equal(r.code, 1);
  t.match(r.stderr, /^volagent: BAD_RESPONSE: GET \/v1\/pools: the agent answered 502 with a body that is not JSON: <html>bad gateway<\/html>\n$/);
});

t.test('usage errors exit 2 before anything is contacted', async (t) => {
  const agent = await fakeAgent(t, () => ({ status: 500, body: { error: { code: 'INTERNAL', message: 'should not be asked', details: {} } } }));
  const s = agent.socket;
  const cases: Array<[string[], RegExp]> = [
    [['create', 'v1', '--tenant', 't1', '--socket', s], /^volagent: --size is required; usage: volagent create ID \(--size SIZE \| --from-image IMAGE \[--size SIZE\]\) --tenant TENANT/],
    [['create', 'v1', '--size', '1GiB', '--socket', s], /^volagent: --tenant is required; usage: /],
    [['create', 'v1', '--size', 'ten', '--tenant', 't1', '--socket', s], /^volagent: --size: not a size: "ten"/],
    [['create', '--size', '1GiB', '--tenant', 't1', '--socket', s], /^volagent: usage: volagent create /],
    [['clone', 'v1', '--tenant', 't1', '--socket', s], /^volagent: usage: volagent clone SOURCE ID /],
    [['clone', 'v1', 'v2', 'v3', '--tenant', 't1', '--socket', s], /^volagent: usage: volagent clone /],
    [['clone', 'v1', 'v2', '--socket', s], /^volagent: --tenant is required/],
    [['resize', 'v1', '--socket', s], /^volagent: --size is required/],
    [['resize', 'v1', '--size', '1.5', '--socket', s], /^volagent: --size: not a whole number of bytes/],
    [['ls', '--kind', 'disk', '--socket', s], /^volagent: --kind must be volume or image/],
    [['ls', 'extra', '--socket', s], /^volagent: usage: volagent ls /],
    [['show', '--socket', s], /^volagent: usage: volagent show ID/],
    [['snapshot', 'v1', '--socket', s], /^volagent: usage: volagent snapshot VOLUME SID/],
    [['rm', '--socket', s], /^volagent: usage: volagent rm ID/],
    [['ops', 'a', 'b', '--socket', s], /^volagent: usage: volagent ops \[ID\]/],
    [['cancel', '--socket', s], /^volagent: usage: volagent cancel OPERATION/],
    [['check', '--repiar', '--socket', s], /^volagent: Unknown option '--repiar'/],
    [['pools', '--socket'], /^volagent: Option '--socket <value>' argument missing/],
    [['--socket'], /^volagent: --socket needs a path\n$/],
    [['--verbose', 'pools'], /^volagent: unknown option '--verbose' before the command/],
    [['--socket', s], /^usage: volagent \[--socket PATH\] \[--json\] COMMAND/],
    [['destroy', '--socket', s], /^volagent: unknown command 'destroy'\n/],
  ];
  for (const [args, stderr] of cases) {
    const r = await volagent(args);
    t.equal(r.code, 2, `exit 2: ${args.join(' ')}`);
    t.match(r.stderr, stderr);
    t.equal(r.stdout, '');
  }
  const json = await volagent(['create', 'v1', '--json', '--socket', s]);
  t.equal(json.code, 2);
  t.match(JSON.parse(json.stdout), { error: { code: 'USAGE', message: /^--tenant is required/ } }, '--json: the error as JSON too');
  t.equal(agent.connections, 0, 'the agent was never contacted');
});

t.test('help goes to stdout and exits 0, without contacting the agent', async (t) => {
  const agent = await fakeAgent(t, () => ({ status: 500 }));
  for (const args of [['--help'], ['help'], ['help', 'clone'], ['clone', '--help'], ['--socket', agent.socket, 'ls', '-h']]) {
    const r = await volagent(args);
    t.equal(r.code, 0, args.join(' '));
    t.match(r.stdout, /^usage: volagent /);
  }
  t.equal(agent.connections, 0);
});

t.test('agent unreachable: exit 5, one line naming the socket and saying the agent is not running', async (t) => {
  const dir = await tempDir(t);
  const missing = path.join(dir, 'nope', 'control.sock');
  const r = await volagent(['ls', '--socket', missing]);
  t.equal(r.code, 5);
  t.equal(r.stderr, `volagent: AGENT_UNREACHABLE: no agent socket at ${missing} (from --socket): the agent is not running, or listens elsewhere\n`);
  t.equal(r.stdout, '');

  const env = await volagent(['version'], { env: { VOLAGENT_SOCKET: missing } });
  t.equal(env.code, 5);
  t.match(env.stderr, `no agent socket at ${missing} (from $VOLAGENT_SOCKET)`);

  const stale = path.join(dir, 'stale.sock');
  await writeFile(stale, '');
  const refused = await volagent(['pools', '--socket', stale]);
  t.equal(refused.code, 5);
  t.equal(refused.stderr, `volagent: AGENT_UNREACHABLE: nothing listens on ${stale} (from --socket): the socket is stale, the agent is not running\n`);

  const json = await volagent(['--json', 'pools', '--socket', missing]);
  t.equal(json.code, 5);
  t.same(JSON.parse(json.stdout), { error: { code: 'AGENT_UNREACHABLE', message: r.stderr.slice('volagent: AGENT_UNREACHABLE: '.length, -1), details: { socket: missing, errno: 'ENOENT' } } });
});

t.test('--socket after the command wins over one before it and over $VOLAGENT_SOCKET', async (t) => {
  const agent = await fakeAgent(t, () => ({ status: 200, body: { version: '1.0.0', api: 1 } }));
  const r = await volagent(['--socket', '/nonexistent.sock', 'version', '--socket', agent.socket], { env: { VOLAGENT_SOCKET: '/also-not.sock' } });
  t.equal(r.code, 0, r.stderr);
  const env = await volagent(['version'], { env: { VOLAGENT_SOCKET: agent.socket } });
  t.equal(env.code, 0, env.stderr);
  t.equal(agent.connections, 2);
});
