// volagentd as a process: the embedded default (what `npm start` runs) works
// from an empty directory and stops cleanly on SIGTERM and SIGINT; start-up
// fails fast, with the file, key or path named, on a bad config, a missing
// pool, a socket path that is not a socket, or another agent on the socket.
import { existsSync } from 'node:fs';
import { mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { outcomeOf, requestOn, spawnAgent, VOLAGENTD, writeAgentConfig } from '../helpers/agent.js';
import { tempDir } from '../helpers/temp-dir.js';
import { spawn } from 'node:child_process';

async function waitForSocket(socket: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      if ((await requestOn(socket, 'GET', '/v1/version')).status === 200) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`${socket} did not answer`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`the embedded default runs from an empty directory; ${signal} exits 0 and removes the socket`, async (t) => {
    const dir = await tempDir(t);
    const child = spawn(process.execPath, [VOLAGENTD], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VOLAGENT_LOG_LEVEL: 'info' } });
    t.teardown(() => { child.kill('SIGKILL'); });
    const outcome = outcomeOf(child);
    const socket = path.join(dir, 'var', 'control.sock');
    await waitForSocket(socket);
    t.equal((await stat(socket)).mode & 0o777, 0o660, 'socket mode 0660');
    const pools = await requestOn(socket, 'GET', '/v1/pools');
    t.match(pools.body, [{ name: 'default', backend: 'file' }]);
    const made = await requestOn(socket, 'PUT', '/v1/volumes/first', { tenant: 'me', sizeBytes: 1024 * 1024 });
    t.equal(made.status, 201);
    t.ok(existsSync(path.join(dir, 'var', 'pools', 'default', 'objects', 'first.raw')));
    t.ok(existsSync(path.join(dir, 'var', 'catalog.db')));
    child.kill(signal);
    const { code, stdout } = await outcome;
    t.equal(code, 0);
    t.notOk(existsSync(socket), 'socket removed');
    const lines = stdout.trim().split('\n').map((l) => JSON.parse(l));
    const request = lines.find((l) => l.route === '/v1/volumes/:id');
    t.match(request, { level: 'info', method: 'PUT', route: '/v1/volumes/:id', status: 201, volume: 'first' });
    t.type(request.ms, 'number');
    t.ok(lines.some((l) => l.msg === 'volagentd stopped' && l.reason === signal));
  });
}

t.test('a bad config: exit 2, the file and the key named, nothing made', async (t) => {
  const dir = await tempDir(t);
  const config = path.join(dir, 'bad.toml');
  await writeFile(config, `[control]\nsocket = "${dir}/s.sock"\n[catalog]\npath = "${dir}/c.db"\n[nbd]\nlisten = []\n[[pools]]\nname = "p"\nbackend = "tape"\npath = "${dir}"\n`);
  const { code, stderr } = await outcomeOf(spawnAgent(['--config', config]));
  t.equal(code, 2);
  t.match(stderr, `${config}: pools[0].backend: must be one of "file", "thin", "lvm" (got "tape")`);
  t.same((await readdir(dir)).sort(), ['bad.toml']);
});

t.test('a missing pool path: exit 1 naming the pool and the path; no socket, no catalog', async (t) => {
  const dir = await tempDir(t);
  const config = await writeAgentConfig({ dir, pools: [{ name: 'gone', path: path.join(dir, 'nowhere') }] });
  const { code, stderr } = await outcomeOf(spawnAgent(['--config', config]));
  t.equal(code, 1);
  t.match(stderr, /pool gone at .*nowhere: ENOENT/);
  t.notOk(existsSync(path.join(dir, 'control.sock')));
  t.notOk(existsSync(path.join(dir, 'catalog.db')));
});

t.test('a socket path that is not a socket is never removed: exit 1', async (t) => {
  const dir = await tempDir(t);
  await mkdir(path.join(dir, 'pool'));
  await writeFile(path.join(dir, 'control.sock'), 'precious');
  const config = await writeAgentConfig({ dir, pools: [{ name: 'p', path: path.join(dir, 'pool') }] });
  const { code, stderr } = await outcomeOf(spawnAgent(['--config', config]));
  t.equal(code, 1);
  t.match(stderr, /control\.sock exists and is not a socket/);
  t.equal((await stat(path.join(dir, 'control.sock'))).size, 8);
});

t.test('a second agent on a live socket refuses to start; the first keeps serving', async (t) => {
  const dir = await tempDir(t);
  await mkdir(path.join(dir, 'pool'));
  const config = await writeAgentConfig({ dir, pools: [{ name: 'p', path: path.join(dir, 'pool') }] });
  const first = spawnAgent(['--config', config]);
  t.teardown(() => { first.kill('SIGKILL'); });
  const firstOutcome = outcomeOf(first);
  await waitForSocket(path.join(dir, 'control.sock'));
  const second = await outcomeOf(spawnAgent(['--config', config]));
  t.equal(second.code, 1);
  t.match(second.stderr, /another agent is listening there/);
  t.equal((await requestOn(path.join(dir, 'control.sock'), 'GET', '/v1/version')).status, 200);
  first.kill('SIGTERM');
  t.equal((await firstOutcome).code, 0);
});

t.test('usage errors exit 2', async (t) => {
  const { code, stderr } = await outcomeOf(spawnAgent(['--bogus']));
  t.equal(code, 2);
  t.match(stderr, /usage: volagentd \[--config FILE\]/);
});
