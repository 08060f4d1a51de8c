// The Cinder driver's Python tests (integrations/cinder/tests) run by Debian's
// Python with Debian's Cinder, as cinder-volume runs the driver, and reported
// to tap one assertion per Python test by name: a failure, an error or a skip
// in Python is a failure here. Used by the openstack lane (test discovery over
// file pools) and by a VM guest (test/vm/guest/lvm-driver.ts: an lvm pool).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

import type { Test } from 'tap';

import { REPO_ROOT } from './agent.js';

export const SYSTEM_PYTHON = '/usr/bin/python3';
export const DRIVER_PATH = path.join(REPO_ROOT, 'integrations', 'cinder');

/** Why Debian's Cinder cannot be imported here, or undefined. */
export function cinderMissing(): string | undefined {
  if (!existsSync(SYSTEM_PYTHON)) return `needs ${SYSTEM_PYTHON}`;
  if (!existsSync('/usr/lib/python3/dist-packages/cinder/tests/unit/test.py')) return "needs Debian's python3-cinder";
  return undefined;
}

/** Runs `python3 -m unittest -v ARGS` in the driver's directory; its exit code and its output (stdout and stderr). */
export function runDriverUnittest(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(SYSTEM_PYTHON, ['-m', 'unittest', ...args], {
      cwd: DRIVER_PATH, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1', ...env },
    });
    let text = '';
    child.stdout.on('data', (d: Buffer) => { text += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { text += d.toString(); });
    child.once('error', reject);
    child.once('close', (exit) => resolve({ code: exit, output: text }));
  });
}

/** One tap assertion per test of a `unittest -v` run, then that every test ran is reported and python exited 0. */
export function reportUnittest(t: Test, { code, output }: { code: number | null; output: string }): void {
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
