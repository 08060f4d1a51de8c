// `volagent copy` as a user runs it: a real process, its output and exit status.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

import { documentedCloneMethod } from '../helpers/clone-method.js';
import { tempDir } from '../helpers/temp-dir.js';

const bin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'volagent.js');

function volagent(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout, stderr });
    });
  });
}

t.test('copy --json reports the method and sizes, and the copy is exact', async (t) => {
  const dir = await tempDir(t);
  const src = path.join(dir, 'src');
  await writeFile(src, Buffer.alloc(100_000, 3));
  const r = await volagent(['copy', '--json', src, path.join(dir, 'dst')]);
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as Record<string, unknown>;
  t.match(out, { source: src, destination: path.join(dir, 'dst'), bytesTotal: 100_000, method: await documentedCloneMethod(dir) });
  t.type(out.ms, 'number');
  t.same(await readFile(path.join(dir, 'dst')), await readFile(src));
});

t.test('human output names the method', async (t) => {
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'src'), 'abc');
  const r = await volagent(['copy', path.join(dir, 'src'), path.join(dir, 'dst')]);
  t.equal(r.code, 0);
  t.match(r.stdout, new RegExp(`^${await documentedCloneMethod(dir)}: .* -> .*, 3 B \\(\\d+ B copied\\) in [\\d.]+ ms\\n$`));
});

t.test('bad input: one-line error, distinct exit status, nothing created', async (t) => {
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'src'), 'abc');
  await writeFile(path.join(dir, 'taken'), 'keep');
  await mkdir(path.join(dir, 'sub'));
  const cases: Array<[string[], number, RegExp]> = [
    [['copy', path.join(dir, 'missing'), path.join(dir, 'new')], 3, /^volagent: ENOENT: no such file or directory, open '.*missing'\n$/],
    [['copy', path.join(dir, 'src'), path.join(dir, 'taken')], 4, /^volagent: EEXIST: file already exists, open '.*taken'\n$/],
    [['copy', path.join(dir, 'sub'), path.join(dir, 'new')], 4, /^volagent: EISDIR: illegal operation on a directory, open '.*sub'\n$/],
    [['copy', path.join(dir, 'src'), path.join(dir, 'sub')], 4, /^volagent: EISDIR: .*sub'\n$/],
    [['copy', path.join(dir, 'src')], 2, /^volagent: usage: volagent copy SOURCE DESTINATION \[--json\]\n$/],
    [['copy', '--bogus', 'a', 'b'], 2, /^volagent: Unknown option '--bogus'/],
    [['frobnicate'], 2, /^volagent: unknown command 'frobnicate'\n/],
  ];
  for (const [args, code, stderr] of cases) {
    const r = await volagent(args);
    t.equal(r.code, code, `exit ${code} for ${args.join(' ')}`);
    t.match(r.stderr, stderr);
    t.equal(r.stdout, '');
  }
  t.notOk(existsSync(path.join(dir, 'new')), 'nothing created');
  t.equal(await readFile(path.join(dir, 'taken'), 'utf8'), 'keep', 'existing file untouched');
});
