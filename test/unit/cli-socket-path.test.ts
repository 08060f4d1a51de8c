// Where `volagent` looks for the control socket (docs/design.md "Processes, files,
// defaults"): --socket, $VOLAGENT_SOCKET, ./var/control.sock if it exists,
// /run/volagent/control.sock.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { DEFAULT_SOCKET, describeSource, resolveSocket } from '../../src/cli/socket-path.js';
import { tempDir } from '../helpers/temp-dir.js';

const local = (cwd: string): string => path.join(cwd, 'var', 'control.sock');

t.test('the order: option, environment, working directory, default', async (t) => {
  const cwd = '/srv/x';
  const everywhere = { cwd, exists: (f: string) => f === local(cwd) };
  t.same(resolveSocket({ ...everywhere, option: '/o.sock', env: { VOLAGENT_SOCKET: '/e.sock' } }), { path: '/o.sock', source: 'option' });
  t.same(resolveSocket({ ...everywhere, env: { VOLAGENT_SOCKET: '/e.sock' } }), { path: '/e.sock', source: 'environment' });
  t.same(resolveSocket({ ...everywhere, env: {} }), { path: 'var/control.sock', source: 'working-directory' });
  t.same(resolveSocket({ cwd, exists: () => false, env: {} }), { path: DEFAULT_SOCKET, source: 'default' });
  t.equal(DEFAULT_SOCKET, '/run/volagent/control.sock');
});

t.test('an empty --socket or $VOLAGENT_SOCKET counts as unset', async (t) => {
  t.same(resolveSocket({ option: '', env: { VOLAGENT_SOCKET: '' }, cwd: '/nowhere', exists: () => false }), { path: DEFAULT_SOCKET, source: 'default' });
  t.same(resolveSocket({ option: '', env: { VOLAGENT_SOCKET: '/e.sock' }, cwd: '/nowhere', exists: () => false }).source, 'environment');
});

t.test('paths are kept as given (sun_path is 107 bytes; a deep cwd must not lengthen them)', async (t) => {
  t.same(resolveSocket({ option: 'rel/c.sock', env: {} }), { path: 'rel/c.sock', source: 'option' });
  t.same(resolveSocket({ env: { VOLAGENT_SOCKET: 'e.sock' } }), { path: 'e.sock', source: 'environment' });
});

t.test('./var/control.sock is looked for in the real working directory by default', async (t) => {
  const dir = await tempDir(t);
  t.equal(resolveSocket({ cwd: dir, env: {} }).source, 'default', 'absent: the default');
  await mkdir(path.join(dir, 'var'));
  await writeFile(local(dir), '');
  t.same(resolveSocket({ cwd: dir, env: {} }), { path: 'var/control.sock', source: 'working-directory' });
});

t.test('each source is described for messages', async (t) => {
  t.equal(describeSource('option'), 'from --socket');
  t.equal(describeSource('environment'), 'from $VOLAGENT_SOCKET');
  t.equal(describeSource('working-directory'), 'in the working directory');
  t.match(describeSource('default'), /^the default; set --socket or \$VOLAGENT_SOCKET/);
});
