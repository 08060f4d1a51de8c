// One NBD client connection (NetworkBlockDevice/nbd doc/proto.md): the fixed
// newstyle handshake, then the transmission phase. Requests are served
// concurrently and answered as they finish (replies may come out of order;
// each reply is written whole). A bad magic, a client that does not finish
// the handshake in time, or option data over the limit ends the connection;
// a bad request gets an error and the connection stays usable. Write-type
// commands pass the export's write gate (write-gate.ts) before they start: a
// held gate delays them and their replies, and a write still held when its
// client goes away without DISC is dropped unanswered; after DISC the
// connection ends once every request it took, held ones included, has been
// performed. On a listener with TLS (tls.ts) the server is in the
// protocol's FORCEDTLS mode: until NBD_OPT_STARTTLS has upgraded the
// connection, every other option gets NBD_REP_ERR_TLS_REQD (EXPORT_NAME,
// which cannot be refused, ends the connection), so no export is named,
// listed or served in plain text.
import type { Socket } from 'node:net';

import { BufferPool } from './buffer-pool.js';
import type { ExportTarget } from './target.js';
import { FastZeroUnsupportedError } from './target.js';
import type { NbdTls } from './tls.js';
import type { WriteGate } from './write-gate.js';
import { WriteAbandonedError } from './write-gate.js';
import {
  AllocationState, BASE_ALLOCATION, Command, CommandFlag, HANDSHAKE_TIMEOUT_MS, HandshakeFlag, IHAVEOPT, Info, MAX_OPTION_DATA_BYTES,
  MAX_PAYLOAD_BYTES, NBD_MAGIC, NbdErrno, Option, OPTION_HEADER_BYTES, optionReply, parseRequest, Reply, ReplyFlag, ReplyType, REQUEST_HEADER_BYTES,
  simpleReply, structuredReplyHeader, TransmissionFlag,
} from './protocol.js';
import type { NbdErrnoName, Request } from './protocol.js';
import { ConnectionClosedError, SocketReader } from './socket-reader.js';

/** An export as the server finds it by name. */
export interface ExportHandle {
  name: string;
  description?: string;
  target: ExportTarget;
  /**
   * Called when a connection attaches to the export, with how to end it (the
   * export is going away); the returned function is called when it detaches.
   */
  attach(end: () => void): () => void;
  /** The gate the export's write-type commands pass (write-gate.ts); none: they never wait. */
  writeGate?: WriteGate;
}

export interface ConnectionOptions {
  lookup(name: string): ExportHandle | undefined;
  /** NBD_OPT_LIST answers with the export names (otherwise it is refused: names are not to be guessed). */
  allowList: boolean;
  exportNames(): string[];
  handshakeTimeoutMs?: number;
  /** Bytes of requests in progress on one connection before the next request is read. */
  maxInFlightBytes?: number;
}

/** The one meta context this server offers, and its id on the wire. */
const ALLOCATION_CONTEXT_ID = 1;
const MIN_BLOCK = 1;
const PREFERRED_BLOCK = 4096;
const DEFAULT_IN_FLIGHT_BYTES = 16 * 1024 * 1024;
/** Read buffers kept for reuse, shared by every connection of the process. */
const readBuffers = new BufferPool(32 * 1024 * 1024);
const KNOWN_CLIENT_FLAGS = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES;

/** Flags each command accepts. */
const ALLOWED_FLAGS: Record<number, number> = {
  [Command.READ]: CommandFlag.DF,
  [Command.WRITE]: CommandFlag.FUA,
  [Command.DISC]: 0,
  [Command.FLUSH]: 0,
  [Command.TRIM]: CommandFlag.FUA,
  [Command.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO,
  [Command.BLOCK_STATUS]: CommandFlag.REQ_ONE,
};

/** An option the server answers with an error reply (`reply`: one of Reply.ERR_*); the handshake goes on. */
class OptionError extends Error {
  constructor(readonly reply: number, message: string) {
    super(message);
  }
}

class RequestError extends Error {
  constructor(readonly errno: NbdErrnoName, message: string) {
    super(message);
  }
}

/** Ends the connection without a reply (the protocol leaves no way to answer). */
class ProtocolViolation extends Error {}

function transmissionFlags(target: ExportTarget): number {
  let flags = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA | TransmissionFlag.SEND_DF;
  if (target.readOnly) flags |= TransmissionFlag.READ_ONLY;
  else {
    flags |= TransmissionFlag.SEND_WRITE_ZEROES;
    if (target.canTrim) flags |= TransmissionFlag.SEND_TRIM;
    if (target.canFastZero) flags |= TransmissionFlag.SEND_FAST_ZERO;
  }
  if (target.multiConn) flags |= TransmissionFlag.CAN_MULTI_CONN;
  return flags;
}

/** Splits option data into its fields, or says the client sent a malformed option. */
class OptionData {
  private at = 0;
  constructor(private readonly data: Buffer) {}
  u16(): number { this.need(2); const v = this.data.readUInt16BE(this.at); this.at += 2; return v; }
  u32(): number { this.need(4); const v = this.data.readUInt32BE(this.at); this.at += 4; return v; }
  string(length: number): string { this.need(length); const v = this.data.toString('utf8', this.at, this.at + length); this.at += length; return v; }
  done(): void { if (this.at !== this.data.length) throw new OptionError(Reply.ERR_INVALID, 'trailing option data'); }
  private need(bytes: number): void { if (this.at + bytes > this.data.length) throw new OptionError(Reply.ERR_INVALID, 'option data too short'); }
}

export class NbdConnection {
  private socket: Socket;
  private reader: SocketReader;
  /** The connection was upgraded by STARTTLS. */
  private secured = false;
  private structured = false;
  /** Export name the meta context was selected for, with base:allocation on or off. */
  private metaContext: { exportName: string; allocation: boolean } | undefined;
  private handle: ExportHandle | undefined;
  private detach: (() => void) | undefined;
  private inFlightBytes = 0;
  private readonly inFlight = new Set<Promise<void>>();
  private spaceWaiter: (() => void) | undefined;
  private drainWait: Promise<void> | undefined;
  /** Aborted when the socket closes before DISC: a write held at the export's gate is then dropped unanswered. */
  private readonly closed = new AbortController();
  /** DISC was received: the requests taken before it are all performed. */
  private disconnecting = false;

  /** `tls`: the listener's credentials; the client must STARTTLS before anything else. */
  constructor(socket: Socket, private readonly options: ConnectionOptions, private readonly tls?: NbdTls) {
    this.socket = socket;
    this.reader = new SocketReader(socket);
    socket.setNoDelay?.(true);
    socket.once('close', () => { if (!this.disconnecting) this.closed.abort(); });
  }

  /** Ends the connection at once (the server is closing). */
  destroy(): void {
    this.socket.destroy();
  }

  /** Serves the connection to its end; never rejects. */
  async serve(): Promise<void> {
    const timer = setTimeout(() => this.destroy(), this.options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS);
    try {
      const handle = await this.handshake();
      clearTimeout(timer);
      if (!handle) return;
      this.handle = handle;
      this.detach = handle.attach(() => this.socket.destroy());
      await this.transmission(handle.target);
    } catch (error) {
      if (!(error instanceof ConnectionClosedError) && !(error instanceof ProtocolViolation)) throw error;
    } finally {
      clearTimeout(timer);
      await Promise.allSettled([...this.inFlight]);
      this.detach?.();
      this.socket.destroy();
    }
  }

  // --- handshake ---

  /** The export chosen by EXPORT_NAME or GO, or undefined when the client aborted. */
  private async handshake(): Promise<ExportHandle | undefined> {
    const greeting = Buffer.alloc(18);
    greeting.writeBigUInt64BE(NBD_MAGIC, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
    this.socket.write(greeting);
    const clientFlags = (await this.reader.read(4)).readUInt32BE(0);
    if ((clientFlags & ~KNOWN_CLIENT_FLAGS) !== 0 || (clientFlags & HandshakeFlag.FIXED_NEWSTYLE) === 0) {
      throw new ProtocolViolation('unknown client flags, or not fixed newstyle');
    }
    const noZeroes = (clientFlags & HandshakeFlag.NO_ZEROES) !== 0;
    for (;;) {
      const header = await this.reader.read(OPTION_HEADER_BYTES);
      if (header.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolViolation('bad option magic');
      const option = header.readUInt32BE(8);
      const length = header.readUInt32BE(12);
      if (length > MAX_OPTION_DATA_BYTES) {
        if (option === Option.EXPORT_NAME) throw new ProtocolViolation('export name too long');
        await this.reader.discard(length);
        this.reply(option, Reply.ERR_TOO_BIG, Buffer.from(`option data over ${MAX_OPTION_DATA_BYTES} bytes`));
        continue;
      }
      const data = await this.reader.read(length);
      if (this.tls && !this.secured) {
        if (option === Option.STARTTLS) {
          if (data.length !== 0) {
            this.reply(option, Reply.ERR_INVALID, Buffer.from('STARTTLS takes no data'));
            continue;
          }
          this.reply(option, Reply.ACK);
          await this.startTls(this.tls);
          continue;
        }
        if (option === Option.ABORT) {
          this.reply(option, Reply.ACK);
          return undefined;
        }
        if (option === Option.EXPORT_NAME) throw new ProtocolViolation('EXPORT_NAME before STARTTLS'); // it has no error reply
        this.reply(option, Reply.ERR_TLS_REQD, Buffer.from('this server requires TLS: send NBD_OPT_STARTTLS first'));
        continue;
      }
      if (option === Option.EXPORT_NAME) {
        const handle = this.options.lookup(data.toString('utf8'));
        if (!handle) throw new ProtocolViolation('no such export'); // EXPORT_NAME has no error reply: the server closes
        const reply = Buffer.alloc(noZeroes ? 10 : 134);
        reply.writeBigUInt64BE(BigInt(handle.target.sizeBytes), 0);
        reply.writeUInt16BE(transmissionFlags(handle.target), 8);
        this.socket.write(reply);
        return this.keepMetaContextFor(handle);
      }
      if (option === Option.ABORT) {
        this.reply(option, Reply.ACK);
        return undefined;
      }
      try {
        const chosen = await this.negotiate(option, data);
        if (chosen) return this.keepMetaContextFor(chosen);
      } catch (error) {
        if (!(error instanceof OptionError)) throw error;
        this.reply(option, error.reply, Buffer.from(error.message));
      }
    }
  }

  /** Answers one option; resolves the export when the option is GO and it succeeded. */
  private async negotiate(option: number, data: Buffer): Promise<ExportHandle | undefined> {
    switch (option) {
      case Option.LIST: {
        if (data.length !== 0) throw new OptionError(Reply.ERR_INVALID, 'LIST takes no data');
        if (!this.options.allowList) {
          this.reply(option, Reply.ERR_POLICY, Buffer.from('export names are not listed'));
          return undefined;
        }
        for (const name of this.options.exportNames()) {
          const encoded = Buffer.from(name);
          const entry = Buffer.alloc(4 + encoded.length);
          entry.writeUInt32BE(encoded.length, 0);
          encoded.copy(entry, 4);
          this.reply(option, Reply.SERVER, entry);
        }
        this.reply(option, Reply.ACK);
        return undefined;
      }
      case Option.STRUCTURED_REPLY:
        if (data.length !== 0) throw new OptionError(Reply.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        if (this.structured) throw new OptionError(Reply.ERR_INVALID, 'structured replies are already on');
        this.structured = true;
        this.reply(option, Reply.ACK);
        return undefined;
      case Option.INFO:
      case Option.GO:
        return this.infoOrGo(option, data);
      case Option.LIST_META_CONTEXT:
      case Option.SET_META_CONTEXT:
        this.metaContextOption(option, data);
        return undefined;
      case Option.STARTTLS:
        if (this.secured) throw new OptionError(Reply.ERR_INVALID, 'TLS is already on');
        // A listener without TLS (a unix socket, or TCP allowed in plain text) never offers it.
        throw new OptionError(Reply.ERR_POLICY, 'TLS is not offered on this address');
      default:
        // STARTTLS, EXTENDED_HEADERS and anything newer: not offered.
        this.reply(option, Reply.ERR_UNSUP, Buffer.from(`option ${option} is not supported`));
        return undefined;
    }
  }

  private infoOrGo(option: number, data: Buffer): ExportHandle | undefined {
    const fields = new OptionData(data);
    const name = fields.string(fields.u32());
    const requests = Array.from({ length: fields.u16() }, () => fields.u16());
    fields.done();
    const handle = this.options.lookup(name);
    if (!handle) throw new OptionError(Reply.ERR_UNKNOWN, `no export named ${JSON.stringify(name)}`);
    const { target } = handle;
    const exportInfo = Buffer.alloc(12);
    exportInfo.writeUInt16BE(Info.EXPORT, 0);
    exportInfo.writeBigUInt64BE(BigInt(target.sizeBytes), 2);
    exportInfo.writeUInt16BE(transmissionFlags(target), 10);
    this.reply(option, Reply.INFO, exportInfo);
    const blockSize = Buffer.alloc(14);
    blockSize.writeUInt16BE(Info.BLOCK_SIZE, 0);
    blockSize.writeUInt32BE(MIN_BLOCK, 2);
    blockSize.writeUInt32BE(PREFERRED_BLOCK, 6);
    blockSize.writeUInt32BE(MAX_PAYLOAD_BYTES, 10);
    this.reply(option, Reply.INFO, blockSize);
    if (requests.includes(Info.NAME)) this.reply(option, Reply.INFO, Buffer.concat([u16(Info.NAME), Buffer.from(name)]));
    if (requests.includes(Info.DESCRIPTION) && handle.description) this.reply(option, Reply.INFO, Buffer.concat([u16(Info.DESCRIPTION), Buffer.from(handle.description)]));
    this.reply(option, Reply.ACK);
    return option === Option.GO ? handle : undefined;
  }

  /** LIST_META_CONTEXT / SET_META_CONTEXT: base:allocation is the one context. */
  private metaContextOption(option: number, data: Buffer): void {
    if (option === Option.SET_META_CONTEXT && !this.structured) throw new OptionError(Reply.ERR_INVALID, 'SET_META_CONTEXT needs structured replies first');
    const fields = new OptionData(data);
    const exportName = fields.string(fields.u32());
    const queries = Array.from({ length: fields.u32() }, () => fields.string(fields.u32()));
    fields.done();
    if (!this.options.lookup(exportName)) throw new OptionError(Reply.ERR_UNKNOWN, `no export named ${JSON.stringify(exportName)}`);
    const listing = option === Option.LIST_META_CONTEXT;
    const matches = (query: string): boolean => query === BASE_ALLOCATION || (listing && (query === 'base:' || query === 'base'));
    const allocation = listing ? queries.length === 0 || queries.some(matches) : queries.some(matches);
    if (allocation) {
      const reply = Buffer.alloc(4 + BASE_ALLOCATION.length);
      reply.writeUInt32BE(listing ? 0 : ALLOCATION_CONTEXT_ID, 0);
      reply.write(BASE_ALLOCATION, 4);
      this.reply(option, Reply.META_CONTEXT, reply);
    }
    if (!listing) this.metaContext = { exportName, allocation };
    this.reply(option, Reply.ACK);
  }

  /**
   * Hands the socket to TLS right after the STARTTLS ACK. A client that sent
   * anything after STARTTLS before the handshake broke the protocol; a
   * failed handshake ends the connection (it is too late for plain text).
   */
  private async startTls(tls: NbdTls): Promise<void> {
    if (!this.reader.detach()) throw new ProtocolViolation('data after STARTTLS before the TLS handshake');
    const raw = this.socket;
    let secure;
    try {
      secure = await tls.secureServer(raw);
    } catch {
      throw new ProtocolViolation('the TLS handshake failed');
    }
    secure.on('error', () => undefined); // the reader sees it as ConnectionClosedError
    secure.once('close', () => { if (!this.disconnecting) this.closed.abort(); });
    this.socket = secure;
    this.reader = new SocketReader(secure);
    this.secured = true;
  }

  /** Contexts were selected for one export name; going to another drops them. */
  private keepMetaContextFor(handle: ExportHandle): ExportHandle {
    if (this.metaContext && this.metaContext.exportName !== handle.name) this.metaContext = undefined;
    return handle;
  }

  private reply(option: number, type: number, data?: Buffer): void {
    this.socket.write(optionReply(option, type, data));
  }

  // --- transmission ---

  private async transmission(target: ExportTarget): Promise<void> {
    const maxInFlight = this.options.maxInFlightBytes ?? DEFAULT_IN_FLIGHT_BYTES;
    for (;;) {
      const request = parseRequest(await this.reader.read(REQUEST_HEADER_BYTES));
      if (!request) throw new ProtocolViolation('bad request magic');
      if (request.type === Command.DISC) {
        this.disconnecting = true;
        return; // in-flight requests finish in serve()'s finally
      }
      const payload = request.type === Command.WRITE ? request.length : 0;
      const problem = this.validate(target, request);
      if (problem) {
        if (payload > 0) await this.reader.discard(payload); // refused without buffering
        this.sendError(request, problem);
        continue;
      }
      const bytes = request.type === Command.READ || request.type === Command.WRITE ? request.length : 0;
      while (this.inFlightBytes > 0 && this.inFlightBytes + bytes > maxInFlight) await new Promise<void>((resolve) => { this.spaceWaiter = resolve; });
      const data = payload > 0 ? await this.reader.read(payload) : undefined;
      this.inFlightBytes += bytes;
      const work = this.execute(target, request, data).finally(() => {
        this.inFlightBytes -= bytes;
        this.inFlight.delete(work);
        const waiter = this.spaceWaiter;
        this.spaceWaiter = undefined;
        waiter?.();
      });
      this.inFlight.add(work);
    }
  }

  /** Why `request` cannot be served, or undefined. The checks the protocol asks for, before any I/O. */
  private validate(target: ExportTarget, request: Request): RequestError | undefined {
    const allowed = ALLOWED_FLAGS[request.type];
    if (allowed === undefined) return new RequestError('EINVAL', `unknown command ${request.type}`);
    if ((request.flags & ~allowed) !== 0) return new RequestError('EINVAL', `flags 0x${request.flags.toString(16)} not valid for command ${request.type}`);
    if (request.type === Command.READ && (request.flags & CommandFlag.DF) !== 0 && !this.structured) return new RequestError('EINVAL', 'DF needs structured replies');
    const writes = request.type === Command.WRITE || request.type === Command.TRIM || request.type === Command.WRITE_ZEROES;
    if (writes && target.readOnly) return new RequestError('EPERM', 'the export is read-only');
    if (request.type === Command.FLUSH) return request.offset === 0n && request.length === 0 ? undefined : new RequestError('EINVAL', 'FLUSH takes no range');
    if (request.type === Command.BLOCK_STATUS && !this.metaContext?.allocation) return new RequestError('EINVAL', 'no meta context was selected');
    if (request.length === 0) return new RequestError('EINVAL', 'zero-length request');
    if ((request.type === Command.READ || request.type === Command.WRITE) && request.length > MAX_PAYLOAD_BYTES) {
      return new RequestError(request.type === Command.WRITE ? 'EINVAL' : 'EOVERFLOW', `over ${MAX_PAYLOAD_BYTES} bytes`);
    }
    if (request.offset + BigInt(request.length) > BigInt(target.sizeBytes)) {
      return new RequestError(writes ? 'ENOSPC' : 'EINVAL', 'past the end of the export');
    }
    if (request.type === Command.WRITE_ZEROES && (request.flags & CommandFlag.FAST_ZERO) !== 0 && !target.canFastZero) {
      return new RequestError('ENOTSUP', 'fast zero is not supported on this export');
    }
    return undefined;
  }

  private async execute(target: ExportTarget, request: Request, data: Buffer | undefined): Promise<void> {
    const offset = Number(request.offset);
    const fua = (request.flags & CommandFlag.FUA) !== 0;
    let leave: (() => void) | undefined;
    try {
      if (isWriteType(request.type) && this.handle?.writeGate) leave = await this.handle.writeGate.enter(this.closed.signal);
      switch (request.type) {
        case Command.READ: {
          const buffer = readBuffers.take(request.length);
          let sent = false;
          try {
            await target.read(offset, request.length, buffer);
            sent = true;
            await this.sendData(request, buffer, () => readBuffers.give(buffer));
          } finally {
            if (!sent) readBuffers.give(buffer);
          }
          return;
        }
        case Command.WRITE:
          await target.write(data!, offset, fua);
          break;
        case Command.FLUSH:
          await target.flush();
          break;
        case Command.TRIM:
          await target.trim(offset, request.length, fua);
          break;
        case Command.WRITE_ZEROES:
          await target.zero(offset, request.length, {
            fua, noHole: (request.flags & CommandFlag.NO_HOLE) !== 0, fast: (request.flags & CommandFlag.FAST_ZERO) !== 0,
          });
          break;
        case Command.BLOCK_STATUS: {
          const extents = await target.blockStatus(offset, request.length);
          await this.sendBlockStatus(request, (request.flags & CommandFlag.REQ_ONE) !== 0 ? extents.slice(0, 1) : extents);
          return;
        }
      }
      leave?.();
      leave = undefined;
      this.sendDone(request);
    } catch (error) {
      leave?.();
      if (error instanceof WriteAbandonedError) return; // the client is gone: nothing to answer, nothing written
      this.sendError(request, toRequestError(error));
    }
  }

  /** Writes one reply whole; `written` runs once the socket has taken (or dropped) every byte of it. */
  private write(buffers: Buffer[], written?: () => void): Promise<void> {
    if (this.socket.destroyed) {
      written?.();
      return Promise.resolve();
    }
    this.socket.cork();
    let drained = true;
    buffers.forEach((buffer, i) => {
      drained = i === buffers.length - 1 && written ? this.socket.write(buffer, () => written()) : this.socket.write(buffer);
    });
    this.socket.uncork();
    return drained ? Promise.resolve() : this.drained();
  }

  /** One wait for the socket's next 'drain' (or close), shared by every reply that filled its buffer. */
  private drained(): Promise<void> {
    this.drainWait ??= new Promise((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        this.drainWait = undefined;
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
    return this.drainWait;
  }

  private sendDone(request: Request): void {
    void this.write([this.structured
      ? structuredReplyHeader(request.cookie, ReplyType.NONE, ReplyFlag.DONE, 0)
      : simpleReply(request.cookie, 0)]);
  }

  private sendData(request: Request, data: Buffer, written: () => void): Promise<void> {
    if (!this.structured) return this.write([simpleReply(request.cookie, 0), data], written);
    const offset = Buffer.alloc(8);
    offset.writeBigUInt64BE(request.offset, 0);
    return this.write([structuredReplyHeader(request.cookie, ReplyType.OFFSET_DATA, ReplyFlag.DONE, 8 + data.length), offset, data], written);
  }

  private sendBlockStatus(request: Request, extents: Array<{ length: number; flags: number }>): Promise<void> {
    const payload = Buffer.alloc(4 + 8 * extents.length);
    payload.writeUInt32BE(ALLOCATION_CONTEXT_ID, 0);
    extents.forEach((extent, i) => {
      payload.writeUInt32BE(extent.length, 4 + 8 * i);
      payload.writeUInt32BE(extent.flags & (AllocationState.HOLE | AllocationState.ZERO), 8 + 8 * i);
    });
    return this.write([structuredReplyHeader(request.cookie, ReplyType.BLOCK_STATUS, ReplyFlag.DONE, payload.length), payload]);
  }

  private sendError(request: Request, error: RequestError): void {
    const errno = NbdErrno[error.errno] ?? NbdErrno.EINVAL;
    if (!this.structured) {
      void this.write([simpleReply(request.cookie, errno)]);
      return;
    }
    const message = Buffer.from(error.message.slice(0, 200));
    const payload = Buffer.alloc(6);
    payload.writeUInt32BE(errno, 0);
    payload.writeUInt16BE(message.length, 4);
    void this.write([structuredReplyHeader(request.cookie, ReplyType.ERROR, ReplyFlag.DONE, payload.length + message.length), payload, message]);
  }
}

/** Commands that change the export: they pass its write gate. */
function isWriteType(type: number): boolean {
  return type === Command.WRITE || type === Command.TRIM || type === Command.WRITE_ZEROES;
}

function u16(value: number): Buffer {
  const buffer = Buffer.alloc(2);
  buffer.writeUInt16BE(value, 0);
  return buffer;
}

/** A failure of the target as the wire error the client gets. */
function toRequestError(error: unknown): RequestError {
  if (error instanceof FastZeroUnsupportedError) return new RequestError('ENOTSUP', error.message);
  const code = (error as NodeJS.ErrnoException).code;
  const message = error instanceof Error ? error.message : String(error);
  switch (code) {
    case 'ENOSPC': case 'EDQUOT': return new RequestError('ENOSPC', message);
    case 'EPERM': case 'EACCES': case 'EROFS': return new RequestError('EPERM', message);
    case 'EINVAL': return new RequestError('EINVAL', message);
    case 'ENOMEM': return new RequestError('ENOMEM', message);
    case 'EOPNOTSUPP': case 'ENOTSUP': return new RequestError('ENOTSUP', message);
    default: return new RequestError('EIO', message);
  }
}
