// Node's own TLS server in PSK mode in front of an NBD server on a unix
// socket, for client tests while the agent's server has no TLS of its own:
// it plays the server's side of the handshake up to NBD_OPT_STARTTLS (a
// greeting, the ACK), hands the socket to a node:tls server (tls.Server's
// 'connection' event, as STARTTLS servers do), then opens the backend,
// answers its greeting with the client flags, and pipes the two. A client
// sees one NBD server whose options are negotiated under TLS.
import type { Socket } from 'node:net';
import { connect, createServer } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import type { TlsOptions, TLSSocket } from 'node:tls';

import type { Test } from 'tap';

import { HandshakeFlag, IHAVEOPT, NBD_MAGIC, Option, optionReply, Reply } from '../../src/exports/nbd/protocol.js';

export interface TlsFront {
  port: number;
  /** TLS sessions the front completed. */
  sessions: TLSSocket[];
}

/** Exactly `bytes` bytes from a socket, then the socket is left alone (no listener, paused). */
function readExactly(socket: Socket, bytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      if (got.length < bytes) return;
      done();
      if (got.length > bytes) reject(new Error(`${got.length - bytes} bytes more than expected`));
      else resolve(got);
    };
    const onEnd = (): void => { done(); reject(new Error('closed')); };
    const done = (): void => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onEnd);
      socket.pause();
    };
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', onEnd);
  });
}

export async function startTlsFront(t: Test, backendSocket: string, psk: { identity: string; key: Buffer }, tls: TlsOptions = {}): Promise<TlsFront> {
  const sessions: TLSSocket[] = [];
  const secureServer = createTlsServer({ ...tls, pskCallback: (_socket, identity) => (identity === psk.identity ? psk.key : null) }, (secure) => {
    sessions.push(secure);
    secure.on('error', () => undefined);
    const backend = connect(backendSocket);
    backend.on('error', () => secure.destroy());
    void readExactly(backend, 18).then(() => {
      const flags = Buffer.alloc(4);
      flags.writeUInt32BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 0);
      backend.write(flags);
      secure.pipe(backend);
      backend.pipe(secure);
      backend.resume();
      secure.on('close', () => backend.destroy());
      backend.on('close', () => secure.destroy());
    }, () => secure.destroy());
  });
  secureServer.on('tlsClientError', () => undefined);
  const plainServer = createServer((plain) => {
    plain.on('error', () => undefined);
    const greeting = Buffer.alloc(18);
    greeting.writeBigUInt64BE(NBD_MAGIC, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
    plain.write(greeting);
    void readExactly(plain, 4 + 16).then((request) => {
      if (request.readBigUInt64BE(4) !== IHAVEOPT || request.readUInt32BE(12) !== Option.STARTTLS || request.readUInt32BE(16) !== 0) {
        plain.destroy();
        return;
      }
      plain.write(optionReply(Option.STARTTLS, Reply.ACK));
      secureServer.emit('connection', plain);
    }, () => plain.destroy());
  });
  await new Promise<void>((resolve) => plainServer.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    for (const session of sessions) session.destroy();
    await new Promise<void>((resolve) => plainServer.close(() => resolve()));
  });
  return { port: (plainServer.address() as { port: number }).port, sessions };
}
