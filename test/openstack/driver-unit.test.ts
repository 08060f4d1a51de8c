// The Cinder driver's own unit tests (integrations/cinder/tests), run by
// Debian's Python with Debian's Cinder, as cinder-volume runs the driver.
// Each of its tests is reported here by name, so a failure or a skip in
// Python is a failure of this lane.
import { spawn } from 'node:child_process';
import t from 'tap';

import { DRIVER_PATH, stackMissing, SYSTEM_PYTHON } from '../helpers/openstack.js';

const missing = stackMissing();
if (missing) {
  t.fail(`the driver's unit tests cannot run here: ${missing}`);
} else {
  const { code, output } = await new Promise<{ code: number | null; output: string }>((resolve) => {
    const child = spawn(SYSTEM_PYTHON, ['-m', 'unittest', 'discover', '-s', 'tests', '-t', '.', '-v'], {
      cwd: DRIVER_PATH, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
    });
    let text = '';
    child.stdout.on('data', (d: Buffer) => { text += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { text += d.toString(); });
    child.once('close', (exit) => resolve({ code: exit, output: text }));
  });
  // unittest -v: one line per test, "name (module.Class.name) ... ok|FAIL|ERROR|skipped '...'".
  const results = [...output.matchAll(/^(\w+) \(([\w.]+)\)(?:\n.*?)? \.\.\. (ok|FAIL|ERROR|skipped.*|expected failure|unexpected success)$/gm)];
  for (const [, name, where, verdict] of results) {
    t.equal(verdict, 'ok', where!.endsWith(`.${name}`) ? where! : `${where}.${name}`);
  }
  const ran = Number(/^Ran (\d+) tests? in/m.exec(output)?.[1] ?? 0);
  t.ok(ran > 0, `python ran ${ran} tests`);
  t.equal(results.length, ran, 'every test python ran is reported above');
  t.equal(code, 0, `python -m unittest exited ${code}${code === 0 ? '' : `:\n${output.slice(-4000)}`}`);
}
