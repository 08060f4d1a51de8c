// A minimal NBD client for tests that need what real clients will not send:
// out-of-range requests, unknown commands, oversized options and payloads,
// half handshakes. It speaks the fixed newstyle handshake and simple or
// structured replies (NetworkBlockDevice/nbd doc/proto.md), and nothing more.
import { connect } from 'node:net';
import type { Socket } from 'node:net';

import {
  Command, HandshakeFlag, IHAVEOPT, NBD_MAGIC, Option, OPTION_REPLY_MAGIC, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
} from '../../src/exports/nbd/protocol.js';
import { SocketReader } from '../../src/exports/nbd/socket-reader.js';

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export interface SimpleReplyHeader {
  error: number;
  cookie: bigint;
}

export class RawNbdClient {
  readonly reader: SocketReader;
  private cookie = 1n;

  private constructor(readonly socket: Socket) {
    this.reader = new SocketReader(socket);
  }

  /** A unix socket path, or a TCP address. */
  static async connect(to: string | { host: string; port: number }): Promise<RawNbdClient> {
    const socket = typeof to === 'string' ? connect(to) : connect(to.port, to.host);
    socket.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawNbdClient(socket);
  }

  /** Reads the greeting and sends the client flags; resolves the server's handshake flags. */
  async greet(clientFlags = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES): Promise<number> {
    const greeting = await this.reader.read(18);
    if (greeting.readBigUInt64BE(0) !== NBD_MAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('not an NBD newstyle server');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags, 0);
    this.socket.write(flags);
    return greeting.readUInt16BE(16);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(IHAVEOPT, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(declaredLength, 12);
    this.socket.write(Buffer.concat([header, data]));
  }

  async optionReply(): Promise<OptionReply> {
    const header = await this.reader.read(20);
    if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error('bad option reply magic');
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: await this.reader.read(header.readUInt32BE(16)) };
  }

  /** Option replies up to and including the final one (ACK or an error). */
  async optionReplies(): Promise<OptionReply[]> {
    const replies: OptionReply[] = [];
    for (;;) {
      const reply = await this.optionReply();
      replies.push(reply);
      if (reply.type === 1 || reply.type >= 0x80000000) return replies;
    }
  }

  /** STRUCTURED_REPLY, SET_META_CONTEXT base:allocation (optional), GO `name`: the transmission phase. */
  async open(name: string, options: { structured?: boolean; allocation?: boolean } = {}): Promise<OptionReply[]> {
    await this.greet();
    if (options.structured ?? true) {
      this.sendOption(Option.STRUCTURED_REPLY);
      await this.optionReplies();
    }
    if (options.allocation) {
      this.sendOption(Option.SET_META_CONTEXT, metaContextData(name, ['base:allocation']));
      await this.optionReplies();
    }
    this.sendOption(Option.GO, goData(name));
    return this.optionReplies();
  }

  /** Sends a request header (and payload); resolves its cookie. */
  request(type: number, offset: bigint | number, length: number, flags = 0, payload?: Buffer): bigint {
    const header = Buffer.alloc(28);
    const cookie = this.cookie++;
    header.writeUInt32BE(REQUEST_MAGIC, 0);
    header.writeUInt16BE(flags, 4);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(cookie, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    this.socket.write(payload ? Buffer.concat([header, payload]) : header);
    return cookie;
  }

  /** One structured reply chunk. */
  async chunk(): Promise<Chunk> {
    const header = await this.reader.read(20);
    if (header.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC) throw new Error(`not a structured reply: 0x${header.readUInt32BE(0).toString(16)}`);
    return { flags: header.readUInt16BE(4), type: header.readUInt16BE(6), cookie: header.readBigUInt64BE(8), payload: await this.reader.read(header.readUInt32BE(16)) };
  }

  /** A simple reply's header (a read's data follows it on the stream). */
  async simpleReply(): Promise<SimpleReplyHeader> {
    const header = await this.reader.read(16);
    if (header.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error('not a simple reply');
    return { error: header.readUInt32BE(4), cookie: header.readBigUInt64BE(8) };
  }

  disconnect(): void {
    this.request(Command.DISC, 0, 0);
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export function goData(name: string, infoRequests: number[] = []): Buffer {
  const encoded = Buffer.from(name);
  const data = Buffer.alloc(4 + encoded.length + 2 + 2 * infoRequests.length);
  data.writeUInt32BE(encoded.length, 0);
  encoded.copy(data, 4);
  data.writeUInt16BE(infoRequests.length, 4 + encoded.length);
  infoRequests.forEach((request, i) => data.writeUInt16BE(request, 6 + encoded.length + 2 * i));
  return data;
}

export function metaContextData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const u32 = (n: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n, 0);
    return b;
  };
  parts.push(u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length));
  for (const query of queries) parts.push(u32(Buffer.byteLength(query)), Buffer.from(query));
  return Buffer.concat(parts);
}
