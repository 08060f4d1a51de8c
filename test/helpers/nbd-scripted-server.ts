// A scripted NBD server for client tests: each connection runs a test's
// script, which plays the server's side with the helpers of Peer (the
// handshake as configured, requests, chunks of every kind, raw bytes), so a
// test can send what real servers never send on demand.
import { createServer } from 'node:net';
import type { Socket } from 'node:net';
import path from 'node:path';

import type { Test } from 'tap';

import {
  BASE_ALLOCATION, HandshakeFlag, IHAVEOPT, Info, NBD_MAGIC, Option, optionReply, parseRequest, Reply, ReplyFlag, ReplyType,
  structuredReplyHeader, TransmissionFlag,
} from '../../src/exports/nbd/protocol.js';
import type { Request } from '../../src/exports/nbd/protocol.js';
import { SocketReader } from '../../src/exports/nbd/socket-reader.js';
import { tempDir } from './temp-dir.js';

export const SIZE = 1024 * 1024;
export const FLAGS = TransmissionFlag.HAS_FLAGS | TransmissionFlag.READ_ONLY;
export const CONTEXT_ID = 7;

export interface Negotiation {
  structured?: boolean;
  allocation?: boolean;
  /** 'unsup': GO answered ERR_UNSUP (the client falls back to EXPORT_NAME). */
  go?: 'ok' | 'unsup';
  exports?: string[];
  blockSize?: [number, number, number];
  size?: number;
  description?: string;
}

/** The server's side of one connection, driven by a test's script. */
export class Peer {
  readonly reader: SocketReader;
  readonly options: number[] = [];
  readonly closed: Promise<void>;

  constructor(readonly socket: Socket) {
    this.reader = new SocketReader(socket);
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  async greet(): Promise<number> {
    const greeting = Buffer.alloc(18);
    greeting.writeBigUInt64BE(NBD_MAGIC, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
    this.socket.write(greeting);
    return (await this.reader.read(4)).readUInt32BE(0);
  }

  async option(): Promise<{ option: number; data: Buffer }> {
    const header = await this.reader.read(16);
    const option = header.readUInt32BE(8);
    this.options.push(option);
    return { option, data: await this.reader.read(header.readUInt32BE(12)) };
  }

  reply(option: number, type: number, data?: Buffer): void {
    this.socket.write(optionReply(option, type, data));
  }

  /** Answers options until the client enters transmission (true) or gives up (false). */
  async negotiate(how: Negotiation = {}): Promise<boolean> {
    await this.greet();
    for (;;) {
      const { option, data } = await this.option();
      if (option === Option.STRUCTURED_REPLY) this.reply(option, how.structured === false ? Reply.ERR_UNSUP : Reply.ACK);
      else if (option === Option.SET_META_CONTEXT) {
        if (how.allocation === false) this.reply(option, Reply.ERR_UNSUP);
        else {
          const context = Buffer.alloc(4 + BASE_ALLOCATION.length);
          context.writeUInt32BE(CONTEXT_ID, 0);
          context.write(BASE_ALLOCATION, 4);
          this.reply(option, Reply.META_CONTEXT, context);
          this.reply(option, Reply.ACK);
        }
      } else if (option === Option.GO) {
        const name = data.toString('utf8', 4, 4 + data.readUInt32BE(0));
        if (how.go === 'unsup') this.reply(option, Reply.ERR_UNSUP);
        else if (!(how.exports ?? ['vol']).includes(name)) this.reply(option, Reply.ERR_UNKNOWN, Buffer.from(`no ${name}`));
        else {
          const info = Buffer.alloc(12);
          info.writeUInt16BE(Info.EXPORT, 0);
          info.writeBigUInt64BE(BigInt(how.size ?? SIZE), 2);
          info.writeUInt16BE(FLAGS, 10);
          this.reply(option, Reply.INFO, info);
          if (how.blockSize) {
            const sizes = Buffer.alloc(14);
            sizes.writeUInt16BE(Info.BLOCK_SIZE, 0);
            how.blockSize.forEach((value, i) => sizes.writeUInt32BE(value, 2 + 4 * i));
            this.reply(option, Reply.INFO, sizes);
          }
          if (how.description) this.reply(option, Reply.INFO, Buffer.concat([Buffer.from([0, Info.DESCRIPTION]), Buffer.from(how.description)]));
          this.reply(option, Reply.ACK);
          return true;
        }
      } else if (option === Option.EXPORT_NAME) {
        if (!(how.exports ?? ['vol']).includes(data.toString('utf8'))) {
          this.socket.destroy();
          return false;
        }
        const answer = Buffer.alloc(10);
        answer.writeBigUInt64BE(BigInt(how.size ?? SIZE), 0);
        answer.writeUInt16BE(FLAGS, 8);
        this.socket.write(answer);
        return true;
      } else if (option === Option.ABORT) {
        this.reply(option, Reply.ACK);
        this.socket.end();
        return false;
      } else {
        this.reply(option, Reply.ERR_UNSUP);
      }
    }
  }

  async request(): Promise<Request> {
    return parseRequest(await this.reader.read(28))!;
  }

  chunk(cookie: bigint, type: number, payload: Buffer, done = true): void {
    this.socket.write(Buffer.concat([structuredReplyHeader(cookie, type, done ? ReplyFlag.DONE : 0, payload.length), payload]));
  }

  data(cookie: bigint, offset: number, bytes: Buffer, done = true): void {
    const at = Buffer.alloc(8);
    at.writeBigUInt64BE(BigInt(offset), 0);
    this.chunk(cookie, ReplyType.OFFSET_DATA, Buffer.concat([at, bytes]), done);
  }

  hole(cookie: bigint, offset: number, length: number, done = true): void {
    const payload = Buffer.alloc(12);
    payload.writeBigUInt64BE(BigInt(offset), 0);
    payload.writeUInt32BE(length, 8);
    this.chunk(cookie, ReplyType.OFFSET_HOLE, payload, done);
  }

  error(cookie: bigint, errno: number, message: string, done = true, errorOffset?: number): void {
    const text = Buffer.from(message);
    const payload = Buffer.alloc(6 + text.length + (errorOffset === undefined ? 0 : 8));
    payload.writeUInt32BE(errno, 0);
    payload.writeUInt16BE(text.length, 4);
    text.copy(payload, 6);
    if (errorOffset !== undefined) payload.writeBigUInt64BE(BigInt(errorOffset), 6 + text.length);
    this.chunk(cookie, errorOffset === undefined ? ReplyType.ERROR : ReplyType.ERROR_OFFSET, payload, done);
  }

  status(cookie: bigint, extents: Array<[number, number]>, context = CONTEXT_ID, done = true): void {
    const payload = Buffer.alloc(4 + 8 * extents.length);
    payload.writeUInt32BE(context, 0);
    extents.forEach(([length, flags], i) => {
      payload.writeUInt32BE(length, 4 + 8 * i);
      payload.writeUInt32BE(flags, 8 + 8 * i);
    });
    this.chunk(cookie, ReplyType.BLOCK_STATUS, payload, done);
  }
}

/** A server on a unix socket whose every connection runs `script`; its failures fail the test. */
export async function scripted(t: Test, script: (peer: Peer) => Promise<void>): Promise<{ uri: string; peers: Peer[] }> {
  const dir = await tempDir(t, 'volagent-nbd-client-');
  const socketPath = path.join(dir, 's.sock');
  const peers: Peer[] = [];
  const running: Array<Promise<void>> = [];
  const server = createServer((socket) => {
    const peer = new Peer(socket);
    peers.push(peer);
    running.push(script(peer).catch((error: unknown) => {
      if (!socket.destroyed) t.error(error, 'the scripted server');
    }));
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  t.teardown(async () => {
    for (const peer of peers) peer.socket.destroy();
    await Promise.all(running);
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { uri: `nbd+unix:///vol?socket=${socketPath}`, peers };
}

