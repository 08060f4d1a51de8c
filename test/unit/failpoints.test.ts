import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import t from 'tap';

import { failpoint, FAILPOINTS_ENV, parseFailpoints } from '../../src/faults/failpoints.js';

const moduleUrl = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'faults', 'failpoints.js')).href;

t.test('the variable parses into named actions; a malformed entry is an error', async (t) => {
  t.same([...parseFailpoints('thin.after-message=kill, thin.before-commit=error:EIO')], [
    ['thin.after-message', { kind: 'kill' }], ['thin.before-commit', { kind: 'error', code: 'EIO' }],
  ]);
  t.same([...parseFailpoints(undefined)], []);
  t.same([...parseFailpoints('')], []);
  for (const bad of ['thin.x', 'thin.x=explode', 'thin.x=error:ENOTANERRNO', 'Thin=kill']) {
    t.throws(() => parseFailpoints(bad), { message: new RegExp(`${FAILPOINTS_ENV}: "${bad.replace('.', '\\.')}" is not NAME=kill or NAME=error:ECODE`) }, bad);
  }
});

t.test('unarmed, a failpoint does nothing', async (t) => {
  t.doesNotThrow(() => failpoint('thin.after-message'));
});

function runArmed(armed: string, name: string): ReturnType<typeof spawnSync> {
  const script = `import { failpoint } from ${JSON.stringify(moduleUrl)};
    try { failpoint(${JSON.stringify(name)}); console.log('passed'); } catch (e) { console.log(e.code, e.syscall, e.path); }`;
  return spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, [FAILPOINTS_ENV]: armed } });
}

t.test('armed: kill dies by SIGKILL at once, error throws a Node-shaped error, others pass', async (t) => {
  const killed = runArmed('a.b=kill', 'a.b');
  t.equal(killed.signal, 'SIGKILL');
  t.equal(killed.stdout, '', 'nothing after the failpoint ran');
  t.equal(runArmed('a.b=error:EIO', 'a.b').stdout, 'EIO failpoint a.b\n');
  t.equal(runArmed('a.b=kill', 'c.d').stdout, 'passed\n');
});
