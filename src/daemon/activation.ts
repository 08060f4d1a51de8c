// Which socket systemd passed (socket activation) serves what, by its
// FileDescriptorName= ($LISTEN_FDNAMES):
// - `control`: the control API, instead of binding `[control].socket`. With
//   no socket named `control`, a single socket not named `nbd` is taken as it
//   (`systemd-socket-activate -l PATH` names it after the unit).
// - `nbd` (any number of them): each serves the `[nbd].listen` entry bound to
//   the same address, read from the kernel (getsockname): a unix socket by
//   its path, a TCP socket by its IP address and port (the entry must be
//   written as an IP literal, not a host name). Entries no passed socket
//   matches are bound by the agent as usual.
// Anything else is refused at start-up: a passed socket nobody serves would
// accept connections that are never answered.
import { isIP } from 'node:net';

import type { SocketName } from '../native/addon-types.js';
import { native } from '../native/binding.js';
import type { ListenAddress } from '../exports/nbd/listen-address.js';
import type { ListenedSocket } from './systemd.js';

export class ActivationError extends Error {
  override name = 'ActivationError';
}

export interface ActivatedSockets {
  control?: ListenedSocket;
  /** Passed listening descriptors by the index of the `[nbd].listen` entry they serve. */
  nbd: Map<number, number>;
}

function describe(name: SocketName): string {
  if (name.family === 'unix') return name.path ? `unix:${name.path}` : 'an unbound unix socket';
  if (name.family === 'inet') return `tcp:${name.address}:${name.port}`;
  if (name.family === 'inet6') return `tcp:[${name.address}]:${name.port}`;
  return 'a socket that is neither unix nor TCP';
}

function sameAddress(entry: ListenAddress, name: SocketName): boolean {
  if (entry.kind === 'unix') return name.family === 'unix' && name.path === entry.path;
  if (name.family !== 'inet' && name.family !== 'inet6') return false;
  return isIP(entry.host) !== 0 && entry.port === name.port && entry.host.toLowerCase() === name.address.toLowerCase();
}

export function assignListened(
  listened: readonly ListenedSocket[], nbdListen: readonly ListenAddress[], socketName: (fd: number) => SocketName = native.socketName,
): ActivatedSockets {
  const nbd = new Map<number, number>();
  for (const socket of listened.filter((s) => s.name === 'nbd')) {
    const name = socketName(socket.fd);
    const index = nbdListen.findIndex((entry) => sameAddress(entry, name));
    if (index < 0) throw new ActivationError(`socket activation passed fd ${socket.fd} named "nbd", bound to ${describe(name)}, which no [nbd].listen entry names`);
    if (nbd.has(index)) throw new ActivationError(`socket activation passed two "nbd" sockets for ${describe(name)}`);
    nbd.set(index, socket.fd);
  }
  const rest = listened.filter((s) => s.name !== 'nbd');
  const control = rest.find((s) => s.name === 'control') ?? (rest.length === 1 ? rest[0] : undefined);
  if (rest.length > 0 && !control) {
    throw new ActivationError(`socket activation passed ${rest.length} sockets (${rest.map((s) => s.name).join(', ')}) and none is named "control" (FileDescriptorName=control)`);
  }
  const unserved = rest.filter((s) => s !== control);
  if (unserved.length > 0) {
    throw new ActivationError(`socket activation passed sockets named ${unserved.map((s) => `"${s.name}"`).join(', ')}: only "control" and "nbd" are served`);
  }
  return { ...(control ? { control } : {}), nbd };
}
