// Bodies the agent refuses from their headers (413 PAYLOAD_TOO_LARGE, 507
// IMAGE_CACHE_FULL) while the client is still sending them: every client
// reads the coded answer, whether it sends the whole body at once, waits for
// 100 Continue, or is curl. Regression test for the `write EPIPE` of
// agent-image-data.test.ts: the agent answered, then destroyed the socket
// with the client's bytes unread, which on a unix socket makes the client's
// next write fail (EPIPE) before it has read the answer. Needs root (a loop
// filesystem for the pools).
import { spawn } from 'node:child_process';
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import path from 'node:path';
import t from 'tap';

import { LINGER_BYTES, LINGER_IDLE_MS, LINGER_MS } from '../../src/api/server.js';
import { poolEntries, readCatalog, startAgent, streamOn } from '../helpers/agent.js';
import { makeLoopFs, TEST_ROOT } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** The body every client sends in full: 64 MiB, far past what the agent drains before answering (4 MiB). */
const BODY_BYTES = 64 * MiB;
/** Rounds of each case: the old agent lost the answer in some rounds, not all. */
const ROUNDS = 10;

interface RawOutcome {
  /** The status line's code, when a whole answer was read. */
  status?: number;
  headers: Record<string, string>;
  body?: any;
  /** The error of the client's socket (EPIPE, ECONNRESET), if any. */
  error?: string;
  /** Body bytes the kernel took from the client before the connection ended. */
  written: number;
  /** The connection ended with end of stream from the agent (its half-close), not a reset. */
  sawEnd: boolean;
}

/**
 * One request on a fresh connection, written raw: `head`, then `bodyBytes`
 * of zeros in 1 MiB writes, all of them whatever the agent answers meanwhile
 * (a client that does not watch for an early answer, and keeps sending after
 * the agent's end of stream), then `after` (a pipelined request), then ends
 * its side unless not `end` (then, after `probeAfterMs`, it writes one more
 * byte to see whether the agent still reads); or, when `forever`, writes until the connection
 * breaks. Reads the whole time; resolves once the
 * connection is closed, with the answer if one was read whole.
 */
function sendRaw(socketPath: string, head: string, bodyBytes: number, { forever = false, after = '', end = true, probeAfterMs = 0, timeoutMs = 30_000 } = {}): Promise<RawOutcome> {
  return new Promise((resolve) => {
    const socket = connect({ path: socketPath, allowHalfOpen: true });
    const received: Buffer[] = [];
    const chunk = Buffer.alloc(MiB);
    let written = 0;
    let error: string | undefined;
    let sawEnd = false;
    const timer = setTimeout(() => socket.destroy(new Error('timed out')), timeoutMs);
    let queued = 0;
    const pump = (): void => {
      while (forever || queued < bodyBytes) {
        const n = forever ? chunk.length : Math.min(chunk.length, bodyBytes - queued);
        queued += n;
        const ok = socket.write(n === chunk.length ? chunk : chunk.subarray(0, n), (err) => { if (!err) written += n; });
        if (!forever && queued >= bodyBytes) {
          if (after) socket.write(after);
          if (end) socket.end();
          else if (probeAfterMs > 0) setTimeout(() => socket.write('x'), probeAfterMs);
          return;
        }
        if (!ok) {
          socket.once('drain', pump);
          return;
        }
      }
    };
    socket.on('data', (data: Buffer) => received.push(data));
    socket.on('end', () => { sawEnd = true; });
    socket.on('error', (err: NodeJS.ErrnoException) => { error = err.code ?? err.message; });
    socket.on('close', () => {
      clearTimeout(timer);
      let text = Buffer.concat(received).toString('latin1');
      // Interim answers (100 Continue) come before the final one.
      while (/^HTTP\/1\.1 1\d\d /.test(text) && text.includes('\r\n\r\n')) text = text.slice(text.indexOf('\r\n\r\n') + 4);
      const split = text.indexOf('\r\n\r\n');
      const headers: Record<string, string> = {};
      let status: number | undefined;
      let body: unknown;
      if (split >= 0) {
        const [statusLine, ...lines] = text.slice(0, split).split('\r\n');
        for (const line of lines) {
          const colon = line.indexOf(':');
          headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
        const rest = text.slice(split + 4);
        const length = Number(headers['content-length']);
        if (Number.isSafeInteger(length) && rest.length >= length) {
          status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(statusLine!)?.[1]);
          try { body = JSON.parse(rest.slice(0, length)); } catch { body = rest; }
        }
      }
      resolve({ ...(status !== undefined ? { status } : {}), headers, body, ...(error !== undefined ? { error } : {}), written, sawEnd });
    });
    socket.write(head);
    pump();
  });
}

/** Runs curl; resolves with its exit code, stdout and stderr. */
function curl(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('curl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

if (!skipUnlessRoot(t)) {
  const fs = await makeLoopFs('ext4', 512 * MiB);
  t.teardown(() => fs.cleanup());
  await mkdir(TEST_ROOT, { recursive: true });
  const smallPool = path.join(fs.mountPoint, 'small');
  const cachePool = path.join(fs.mountPoint, 'cache');
  const dir = path.join(fs.mountPoint, 'agent');
  for (const d of [smallPool, cachePool, dir]) await mkdir(d);
  const agent = await startAgent(t, {
    dir,
    pools: [
      { name: 'small', path: smallPool, maxImageBytes: '1MiB' },
      { name: 'cache', path: cachePool, imageCache: { maxBytes: '8MiB', maxCount: 3 } },
    ],
  });
  const state = async (): Promise<unknown> => ({ small: await poolEntries(smallPool), cache: await poolEntries(cachePool), catalog: readCatalog(agent.catalogPath) });
  const before = await state();

  const refusals = [
    { what: 'an image over max_image_bytes', method: 'PUT', target: '/v1/images/big/data?pool=small&tenant=alice', type: 'application/octet-stream', status: 413, code: 'PAYLOAD_TOO_LARGE' },
    { what: 'a cache entry over max_bytes', method: 'PUT', target: '/v1/images/big/data?pool=cache&tenant=alice&cache=true', type: 'application/octet-stream', status: 507, code: 'IMAGE_CACHE_FULL' },
    { what: 'a JSON body over 1 MiB', method: 'PUT', target: '/v1/volumes/big', type: 'application/json', status: 413, code: 'PAYLOAD_TOO_LARGE' },
  ];

  for (const refusal of refusals) {
    for (const expect of [false, true]) {
      await t.test(`${refusal.what}, 64 MiB declared and sent in full${expect ? ' without waiting for 100 Continue' : ''}: the answer is read every time`, async (t) => {
        const head = `${refusal.method} ${refusal.target} HTTP/1.1\r\nHost: volagent\r\nContent-Type: ${refusal.type}\r\nContent-Length: ${BODY_BYTES}\r\n${expect ? 'Expect: 100-continue\r\n' : ''}\r\n`;
        const outcomes: RawOutcome[] = [];
        for (let round = 0; round < ROUNDS; round++) outcomes.push(await sendRaw(agent.socket, head, BODY_BYTES));
        const lost = outcomes.filter((o) => o.status === undefined).map((o) => `${o.error ?? 'no error'} after ${o.written} bytes`);
        t.same(lost, [], `every one of ${ROUNDS} clients read an answer`);
        t.same(outcomes.map((o) => o.status), outcomes.map(() => refusal.status));
        t.same(outcomes.map((o) => o.body?.error?.code), outcomes.map(() => refusal.code));
        t.same(outcomes.map((o) => o.headers.connection), outcomes.map(() => 'close'), 'the answer says the connection closes');
        t.same(outcomes.map((o) => o.error), outcomes.map(() => undefined), 'no client saw EPIPE or a reset');
        t.same(outcomes.map((o) => o.written), outcomes.map(() => BODY_BYTES), 'the agent read and dropped the whole body');
        t.same(outcomes.map((o) => o.sawEnd), outcomes.map(() => true), 'the agent half-closed: end of stream after the answer');
        t.same(await state(), before, 'nothing in the pools or the catalog');
      });
    }
  }

  await t.test('the test helper (node:http) reads the answer of a refused 64 MiB upload every time', async (t) => {
    const body = Buffer.alloc(BODY_BYTES);
    const answers: unknown[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      answers.push(await streamOn(agent.socket, 'PUT', '/v1/images/big/data?pool=cache&tenant=alice&cache=true', body, { headers: { 'content-length': BODY_BYTES } })
        .then((reply) => [reply.status, reply.body?.error?.code], (error: NodeJS.ErrnoException) => error.code ?? error.message));
    }
    t.same(answers, answers.map(() => [507, 'IMAGE_CACHE_FULL']));
    t.same(await state(), before);
  });

  await t.test('curl -T of a 64 MiB file gets the coded answer, with and without Expect: 100-continue', async (t) => {
    const file = path.join(fs.mountPoint, 'big.raw');
    await writeFile(file, '');
    await truncate(file, BODY_BYTES);
    t.teardown(() => truncate(file, 0));
    const out = path.join(fs.mountPoint, 'curl-answer.json');
    for (const expect of [[], ['-H', 'Expect:']]) {
      for (let round = 0; round < ROUNDS; round++) {
        const result = await curl(['-sS', '--unix-socket', agent.socket, '-T', file, ...expect, '-o', out, '-w', '%{http_code}', 'http://volagent/v1/images/big/data?pool=small&tenant=alice']);
        t.same({ code: result.code, status: result.stdout, stderr: result.stderr }, { code: 0, status: '413', stderr: '' }, `curl ${expect.join(' ')} round ${round}`);
        t.equal(JSON.parse(await readFile(out, 'utf8')).error.code, 'PAYLOAD_TOO_LARGE');
      }
    }
    t.same(await state(), before);
  });

  await t.test('a client that keeps sending after its answer is cut off: the lingering close is bounded', async (t) => {
    const started = Date.now();
    const outcome = await sendRaw(agent.socket, `PUT /v1/images/big/data?pool=small&tenant=alice HTTP/1.1\r\nHost: volagent\r\nContent-Length: ${64 * GiB}\r\n\r\n`, 64 * GiB, { forever: true });
    const ms = Date.now() - started;
    t.equal(outcome.status, 413, 'it read its answer');
    t.equal(outcome.body?.error?.code, 'PAYLOAD_TOO_LARGE');
    t.not(outcome.error, undefined, `then the agent cut the connection (${outcome.error})`);
    t.ok(outcome.written <= LINGER_BYTES + 8 * MiB, `after it read at most LINGER_BYTES (the client wrote ${outcome.written} bytes)`);
    t.ok(ms < 10_000, `within the lingering time (${ms} ms)`);
    t.same(await state(), before);
  });

  await t.test('a request pipelined after a refused body is not served: the refusal was the connection\'s last answer', async (t) => {
    const json = JSON.stringify({ tenant: 'alice', sizeBytes: MiB });
    const after = `PUT /v1/volumes/pipelined HTTP/1.1\r\nHost: volagent\r\nContent-Type: application/json\r\nContent-Length: ${json.length}\r\n\r\n${json}`;
    const outcome = await sendRaw(agent.socket, `PUT /v1/images/big/data?pool=small&tenant=alice HTTP/1.1\r\nHost: volagent\r\nContent-Length: ${BODY_BYTES}\r\n\r\n`, BODY_BYTES, { after });
    t.equal(outcome.status, 413);
    t.equal(outcome.error, undefined);
    t.same(await state(), before, 'no volume "pipelined"');
    t.equal((await agent.request('GET', '/v1/volumes/pipelined')).status, 404);
  });

  await t.test('a client that stops sending part-way and never closes is cut off after LINGER_IDLE_MS', async (t) => {
    const outcome = await sendRaw(agent.socket, `PUT /v1/images/big/data?pool=small&tenant=alice HTTP/1.1\r\nHost: volagent\r\nContent-Length: ${BODY_BYTES}\r\n\r\n`, 8 * MiB, { end: false, probeAfterMs: LINGER_IDLE_MS + 1000 });
    t.equal(outcome.status, 413);
    t.equal(outcome.written, 8 * MiB);
    t.equal(outcome.sawEnd, true);
    t.equal(outcome.error, 'EPIPE', `a byte sent ${LINGER_IDLE_MS + 1000} ms later (under LINGER_MS, ${LINGER_MS}) finds the connection closed`);
  });
}
