import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import t from 'tap';

import { failpoint, FAILPOINT_TRACE_ENV, FAILPOINTS_ENV, parseFailpoints } from '../../src/common/failpoints.js';

const moduleUrl = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'common', 'failpoints.js')).href;

t.test('the variable parses into named actions; a malformed entry is an error', async (t) => {
  t.same([...parseFailpoints('thin.after-message=kill, thin.before-commit=error:EIO')], [
    ['thin.after-message', { kind: 'kill', hit: 1 }], ['thin.before-commit', { kind: 'error', code: 'EIO', hit: 1 }],
  ]);
  t.same([...parseFailpoints('file.renamed@3=kill')], [['file.renamed', { kind: 'kill', hit: 3 }]]);
  t.same([...parseFailpoints(undefined)], []);
  t.same([...parseFailpoints('')], []);
  t.same([...parseFailpoints('clone.copying@2=hold:/tmp/held')], [['clone.copying', { kind: 'hold', path: '/tmp/held', hit: 2 }]]);
  for (const bad of ['thin.x', 'thin.x=explode', 'thin.x=hold:relative', 'thin.x=hold:', 'thin.x=error:ENOTANERRNO', 'Thin=kill', 'thin.x@0=kill', 'thin.x@=kill', 'thin.x@2']) {
    t.throws(() => parseFailpoints(bad), { message: `${FAILPOINTS_ENV}: "${bad}" is not NAME[@N]=kill, NAME[@N]=error:ECODE or NAME[@N]=hold:/PATH` }, bad);
  }
});

t.test('unarmed, a failpoint does nothing', async (t) => {
  t.doesNotThrow(() => failpoint('thin.after-message'));
});

/** Passes the points `names` in order in a fresh process armed with `armed`; prints each outcome. */
function runArmed(armed: string, ...names: string[]): ReturnType<typeof spawnSync> {
  return runWith({ [FAILPOINTS_ENV]: armed }, names);
}

function runWith(env: NodeJS.ProcessEnv, names: string[]): ReturnType<typeof spawnSync> {
  const script = `import { failpoint } from ${JSON.stringify(moduleUrl)};
    for (const name of ${JSON.stringify(names)}) {
      try { failpoint(name); console.log('passed'); } catch (e) { console.log(e.code, e.syscall, e.path); }
    }`;
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([key]) => key !== FAILPOINTS_ENV && key !== FAILPOINT_TRACE_ENV));
  return spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...inherited, ...env } });
}

t.test('armed: kill dies by SIGKILL at once, error throws a Node-shaped error, others pass', async (t) => {
  const killed = runArmed('a.b=kill', 'a.b');
  t.equal(killed.signal, 'SIGKILL');
  t.equal(killed.stdout, '', 'nothing after the failpoint ran');
  t.equal(runArmed('a.b=error:EIO', 'a.b').stdout, 'EIO failpoint a.b\n');
  t.equal(runArmed('a.b=kill', 'c.d').stdout, 'passed\n');
});

t.test('NAME@N acts on the Nth pass only; earlier passes go on', async (t) => {
  t.equal(runArmed('a.b@3=error:EIO', 'a.b', 'c.d', 'a.b', 'a.b', 'a.b').stdout, 'passed\npassed\npassed\nEIO failpoint a.b\npassed\n');
  const killed = runArmed('a.b@2=kill', 'a.b', 'a.b', 'a.b');
  t.equal(killed.signal, 'SIGKILL');
  t.equal(killed.stdout, 'passed\n', 'the first pass went on, the second died');
});

t.test('the trace lists every point reached, in order, up to and including a kill', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'failpoint-trace-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const trace = path.join(dir, 'trace');
  const traced = runWith({ [FAILPOINT_TRACE_ENV]: trace }, ['a.b', 'c.d', 'a.b']);
  t.equal(traced.stdout, 'passed\npassed\npassed\n', 'tracing alone changes nothing');
  t.equal(await readFile(trace, 'utf8'), 'a.b\nc.d\na.b\n');
  await rm(trace);
  const killed = runWith({ [FAILPOINT_TRACE_ENV]: trace, [FAILPOINTS_ENV]: 'c.d=kill' }, ['a.b', 'c.d', 'e.f']);
  t.equal(killed.signal, 'SIGKILL');
  t.equal(await readFile(trace, 'utf8'), 'a.b\nc.d\n');
});

t.test('hold: the work waits at the point until the test removes the file, or stops when cancelled; a synchronous point cannot hold', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'failpoint-hold-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const held = path.join(dir, 'held');
  const script = `import { failpointAsync, failpoint } from ${JSON.stringify(moduleUrl)};
    import { existsSync, rmSync } from 'node:fs';
    const started = Date.now();
    setTimeout(() => { console.log('file there:', existsSync(${JSON.stringify(held)})); rmSync(${JSON.stringify(held)}); }, 300);
    await failpointAsync('a.b');
    console.log('went on after', Date.now() - started >= 300 ? 'the release' : 'nothing');
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('cancelled')), 100);
    await failpointAsync('c.d', controller.signal).then(() => console.log('not stopped'), (e) => console.log('stopped:', e.message));
    try { failpoint('e.f'); } catch (e) { console.log(e.message); }`;
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([key]) => key !== FAILPOINTS_ENV && key !== FAILPOINT_TRACE_ENV));
  const env = { ...inherited, [FAILPOINTS_ENV]: `a.b=hold:${held},c.d=hold:${held}2,e.f=hold:${held}3` };
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env });
  t.equal(run.stdout, `file there: true\nwent on after the release\nstopped: cancelled\nfailpoint e.f is reached synchronously: it cannot hold (${FAILPOINTS_ENV})\n`, run.stderr);
});
