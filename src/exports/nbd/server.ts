// The NBD server: listens on the addresses of `[nbd].listen` (unix socket
// paths and TCP host:port) and serves each connection (connection.ts) with the
// exports its `lookup` finds. Closing stops listening and ends every
// connection.
import { chmod } from 'node:fs/promises';
import type { Server, Socket } from 'node:net';
import { createServer } from 'node:net';

import { prepareSocketPath } from '../../daemon/control-socket.js';
import type { ListenAddress } from '../../daemon/config.js';
import type { ConnectionOptions } from './connection.js';
import { NbdConnection } from './connection.js';

/** The unix socket is for the host's clients (qemu, nbdcopy run as root or the service's group). */
const UNIX_SOCKET_MODE = 0o660;

export interface BoundAddress {
  address: ListenAddress;
  /** For TCP with port 0: the port the kernel chose. */
  port?: number;
}

export class NbdServer {
  private readonly servers: Server[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly serving = new Set<Promise<void>>();

  constructor(private readonly options: ConnectionOptions) {}

  /** Listens on every address; on a failure, closes what was opened and rejects. */
  async listen(addresses: ListenAddress[]): Promise<BoundAddress[]> {
    const bound: BoundAddress[] = [];
    try {
      for (const address of addresses) bound.push(await this.listenOn(address));
    } catch (error) {
      await this.close();
      throw error;
    }
    return bound;
  }

  private async listenOn(address: ListenAddress): Promise<BoundAddress> {
    const server = createServer((socket) => this.accept(socket));
    this.servers.push(server);
    if (address.kind === 'unix') await prepareSocketPath(address.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = (): void => {
        server.off('error', reject);
        resolve();
      };
      if (address.kind === 'unix') server.listen(address.path, done);
      else server.listen(address.port, address.host, done);
    });
    if (address.kind === 'unix') {
      await chmod(address.path, UNIX_SOCKET_MODE);
      return { address };
    }
    const info = server.address();
    return { address, ...(info && typeof info === 'object' ? { port: info.port } : {}) };
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('error', () => undefined); // the connection sees it as ConnectionClosedError
    const served = new NbdConnection(socket, this.options).serve()
      .catch(() => undefined)
      .finally(() => {
        this.sockets.delete(socket);
        this.serving.delete(served);
      });
    this.serving.add(served);
  }

  connectionCount(): number {
    return this.sockets.size;
  }

  async close(): Promise<void> {
    await Promise.all(this.servers.splice(0).map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    for (const socket of this.sockets) socket.destroy();
    await Promise.allSettled([...this.serving]);
  }
}
