// Which passed socket serves what (src/daemon/activation.ts): `control` for
// the control API (or the only socket not named nbd), `nbd` for the
// [nbd].listen entry bound to the same address; anything else is refused.
import t from 'tap';

import type { SocketName } from '../../src/native/addon-types.js';
import { ActivationError, assignListened } from '../../src/daemon/activation.js';
import type { ListenAddress } from '../../src/exports/nbd/listen-address.js';

const listen: ListenAddress[] = [
  { kind: 'unix', path: '/run/volagent/nbd.sock' }, { kind: 'tcp', host: '127.0.0.1', port: 10809 }, { kind: 'tcp', host: '::1', port: 10810 },
];
const names: Record<number, SocketName> = {
  3: { family: 'unix', path: '/run/volagent/control.sock' },
  4: { family: 'unix', path: '/run/volagent/nbd.sock' },
  5: { family: 'inet', address: '127.0.0.1', port: 10809 },
  6: { family: 'inet6', address: '::1', port: 10810 },
  7: { family: 'inet', address: '127.0.0.1', port: 9999 },
};
const nameOf = (fd: number): SocketName => names[fd]!;

t.test('nbd sockets are matched to [nbd].listen entries by address; control by name', async (t) => {
  const passed = assignListened([{ fd: 3, name: 'control' }, { fd: 4, name: 'nbd' }, { fd: 5, name: 'nbd' }, { fd: 6, name: 'nbd' }], listen, nameOf);
  t.same(passed.control, { fd: 3, name: 'control' });
  t.same([...passed.nbd], [[0, 4], [1, 5], [2, 6]]);
});

t.test('only nbd sockets: the agent binds its control socket itself; a lone socket of another name is the control socket', async (t) => {
  const onlyNbd = assignListened([{ fd: 4, name: 'nbd' }], listen, nameOf);
  t.equal(onlyNbd.control, undefined);
  t.same([...onlyNbd.nbd], [[0, 4]]);
  t.same(assignListened([{ fd: 3, name: 'volagentd.socket' }], listen, nameOf).control, { fd: 3, name: 'volagentd.socket' });
  t.same(assignListened([], listen, nameOf), { nbd: new Map() });
});

t.test('refused: an nbd socket no entry names, two for one entry, sockets nobody serves', async (t) => {
  t.throws(() => assignListened([{ fd: 7, name: 'nbd' }], listen, nameOf),
    new ActivationError('socket activation passed fd 7 named "nbd", bound to tcp:127.0.0.1:9999, which no [nbd].listen entry names'));
  t.throws(() => assignListened([{ fd: 4, name: 'nbd' }, { fd: 4, name: 'nbd' }], listen, nameOf),
    new ActivationError('socket activation passed two "nbd" sockets for unix:/run/volagent/nbd.sock'));
  t.throws(() => assignListened([{ fd: 3, name: 'control' }, { fd: 5, name: 'metrics' }], listen, nameOf),
    new ActivationError('socket activation passed sockets named "metrics": only "control" and "nbd" are served'));
  t.throws(() => assignListened([{ fd: 3, name: 'x' }, { fd: 5, name: 'y' }], listen, nameOf),
    new ActivationError('socket activation passed 2 sockets (x, y) and none is named "control" (FileDescriptorName=control)'));
  t.throws(() => assignListened([{ fd: 5, name: 'nbd' }], [{ kind: 'tcp', host: 'localhost', port: 10809 }], nameOf),
    { message: /which no \[nbd\]\.listen entry names/ }, 'a host name never matches: entries are matched by IP literal');
});
