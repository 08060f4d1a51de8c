// The NBD server: listens on the addresses of `[nbd].listen` (unix socket
// paths and TCP host:port), or on listeners systemd passed for them, and
// serves each connection (connection.ts) with the exports its `lookup`
// finds. With TLS credentials (tls.ts), every TCP address requires TLS
// (STARTTLS first); unix sockets stay plain, guarded by their mode and
// group. Closing stops listening and ends every connection; a socket file the
// server bound is removed then (libuv unlinks what it bound), a passed one is
// left to its owner.
import { chmod, chown } from 'node:fs/promises';
import type { Server, Socket } from 'node:net';
import { createServer } from 'node:net';

import { prepareSocketPath } from '../../common/unix-socket-path.js';
import type { ListenAddress } from './listen-address.js';
import type { ConnectionOptions } from './connection.js';
import { NbdConnection } from './connection.js';
import type { NbdTls } from './tls.js';

/** The unix socket is for the host's clients (qemu, nbdcopy run as root or the socket's group). */
export const DEFAULT_UNIX_SOCKET_MODE = 0o660;

export interface BoundAddress {
  address: ListenAddress;
  /** For TCP with port 0: the port the kernel chose. */
  port?: number;
  /** Served on a listener systemd passed (socket activation), not bound by the agent. */
  passed?: boolean;
}

export interface NbdListenOptions {
  /** Mode of the unix sockets: applied to what the agent binds (DEFAULT_UNIX_SOCKET_MODE when absent), and to passed path sockets when given. */
  socketMode?: number;
  /** Group (gid) of the unix sockets, applied like socketMode; absent: the agent's own group, or the passed socket's. */
  socketGroup?: number;
  /** Listening descriptors passed for some of the addresses, by their index in `addresses`. */
  passed?: ReadonlyMap<number, number>;
  /** TLS for every TCP address: clients must STARTTLS. Absent: TCP is plain text. */
  tls?: NbdTls;
}

export class NbdServer {
  private readonly servers: Server[] = [];
  private readonly connections = new Set<NbdConnection>();
  private readonly serving = new Set<Promise<void>>();

  constructor(private readonly options: ConnectionOptions) {}

  /** Listens on every address; on a failure, closes what was opened and rejects. */
  async listen(addresses: ListenAddress[], options: NbdListenOptions = {}): Promise<BoundAddress[]> {
    const bound: BoundAddress[] = [];
    try {
      for (const [i, address] of addresses.entries()) bound.push(await this.listenOn(address, options, options.passed?.get(i)));
    } catch (error) {
      await this.close();
      throw error;
    }
    return bound;
  }

  private async listenOn(address: ListenAddress, options: NbdListenOptions, passedFd: number | undefined): Promise<BoundAddress> {
    const tls = address.kind === 'tcp' ? options.tls : undefined;
    const server = createServer((socket) => this.accept(socket, tls));
    this.servers.push(server);
    // A passed listener is bound and listening already; its path is in use by it, never prepared or replaced.
    if (address.kind === 'unix' && passedFd === undefined) await prepareSocketPath(address.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = (): void => {
        server.off('error', reject);
        resolve();
      };
      if (passedFd !== undefined) server.listen({ fd: passedFd }, done);
      else if (address.kind === 'unix') server.listen(address.path, done);
      else server.listen(address.port, address.host, done);
    });
    const passed = passedFd !== undefined ? { passed: true } : {};
    if (address.kind === 'unix') {
      // Before the agent says READY: a client never meets the socket with another mode or group.
      // On a passed socket only what the config sets explicitly overrides systemd's SocketMode=/SocketGroup=.
      if (options.socketGroup !== undefined) await chown(address.path, -1, options.socketGroup);
      const mode = passedFd === undefined ? options.socketMode ?? DEFAULT_UNIX_SOCKET_MODE : options.socketMode;
      if (mode !== undefined) await chmod(address.path, mode);
      return { address, ...passed };
    }
    const info = server.address();
    return { address, ...(info && typeof info === 'object' ? { port: info.port } : {}), ...passed };
  }

  private accept(socket: Socket, tls: NbdTls | undefined): void {
    socket.on('error', () => undefined); // the connection sees it as ConnectionClosedError
    const connection = new NbdConnection(socket, this.options, tls);
    this.connections.add(connection);
    const served = connection.serve()
      .catch(() => undefined)
      .finally(() => {
        this.connections.delete(connection);
        this.serving.delete(served);
      });
    this.serving.add(served);
  }

  connectionCount(): number {
    return this.connections.size;
  }

  async close(): Promise<void> {
    await Promise.all(this.servers.splice(0).map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    for (const connection of this.connections) connection.destroy();
    await Promise.allSettled([...this.serving]);
  }
}
