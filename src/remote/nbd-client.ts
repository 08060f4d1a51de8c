// An NBD client (NetworkBlockDevice/nbd doc/proto.md) for reading a peer's
// export: the fixed newstyle handshake, with NBD_OPT_STARTTLS first when the
// URI requires TLS (there is no fallback to plaintext), then
// STRUCTURED_REPLY, SET_META_CONTEXT base:allocation and GO. In the
// transmission phase reads and block-status queries may be in flight
// together (up to maxInFlight): each has a cookie, and replies are matched to
// it in whatever order the server sends them. Anything the server sends that
// the protocol forbids ends the connection with an NbdProtocolError; so does
// an abort of the connect signal (an AbortError) or the server going away
// (NbdConnectionClosedError), for every request still pending.
import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import type { Socket } from 'node:net';
import { connect as netConnect } from 'node:net';
import { checkServerIdentity, connect as tlsConnect } from 'node:tls';
import type { ConnectionOptions as TlsConnectionOptions, TLSSocket } from 'node:tls';

import { abortError, throwIfAborted } from '../common/abort.js';
import {
  BASE_ALLOCATION, Command, HandshakeFlag, IHAVEOPT, Info, NBD_MAGIC, NbdErrno, Option, OPTION_REPLY_MAGIC, Reply, ReplyFlag, ReplyType,
  REQUEST_HEADER_BYTES, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, TransmissionFlag,
} from '../exports/nbd/protocol.js';
import type { ReadableSocket } from '../exports/nbd/socket-reader.js';
import { SocketReader } from '../exports/nbd/socket-reader.js';
import {
  NbdConnectionClosedError, NbdExportNotFoundError, NbdHandshakeTimeoutError, NbdOptionRefusedError, NbdProtocolError, nbdRequestError,
  NbdTlsConfigError, NbdTlsError, NbdTlsRefusedError, NbdTlsRequiredError,
} from './nbd-errors.js';
import type { NbdUri } from './nbd-uri.js';
import { formatNbdUri } from './nbd-uri.js';

export type NbdClientTls =
  | { psk: { identity: string; key: Buffer } }
  | { ca: string | Buffer; cert?: string | Buffer; key?: string | Buffer; servername?: string };

export interface NbdConnectOptions {
  /** Credentials for an `nbds`/`nbds+unix` URI (required there, refused with a plain one). */
  tls?: NbdClientTls;
  /** Aborting ends the connection: the handshake or every pending request rejects with an AbortError. */
  signal?: AbortSignal;
  /** Connecting, TLS and option haggling together; default 10 s. */
  handshakeTimeoutMs?: number;
  /** Requests sent and not yet answered; more wait their turn. Default 16. */
  maxInFlight?: number;
}

export interface NbdExtent {
  length: number;
  /** base:allocation bits (AllocationState): HOLE, ZERO. */
  flags: number;
}

export interface NbdRequestOptions {
  /** Aborting rejects this request at once (its reply, when it comes, is read and dropped). */
  signal?: AbortSignal;
}

export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
export const DEFAULT_MAX_IN_FLIGHT = 16;
/** The largest read this client asks for: 2^25, the size proto.md says no server may deem a denial of service. */
export const MAX_READ_BYTES = 32 * 1024 * 1024;
/**
 * The largest block-status query: the protocol's 32-bit length, less 64 KiB so
 * it stays a multiple of any minimum block size a server may advertise (a
 * power of two up to 64 KiB).
 */
export const MAX_BLOCK_STATUS_BYTES = 2 ** 32 - 2 ** 16;
/** How long close() waits for the server to end the connection after NBD_CMD_DISC before it cuts it. */
const CLOSE_TIMEOUT_MS = 5_000;
/** How long a refused handshake waits for the server to answer NBD_OPT_ABORT by hanging up. */
const ABANDON_WAIT_MS = 1_000;
/** Option replies carry short strings and fixed fields; a larger one is not an NBD server's. */
const MAX_OPTION_REPLY_BYTES = 64 * 1024;
const STRUCTURED_HEADER_BYTES = 20;
const SIMPLE_HEADER_BYTES = 16;

/**
 * TLS-PSK suites that work both against GnuTLS servers (qemu-nbd, nbdkit) and
 * Node's own TLS server, found by trying each with Node 20 (OpenSSL 3.0):
 * - TLS 1.3: Node's pskCallback is OpenSSL's legacy PSK callback, whose key
 *   OpenSSL binds to SHA-256; only the SHA-256 suites (AES-128-GCM,
 *   ChaCha20-Poly1305) can use it. Offered TLS_AES_256_GCM_SHA384, a server
 *   picks it and then fails the handshake (no PSK for it, no certificate).
 * - TLS 1.2: Node's default cipher list holds no PSK suite, so they are named.
 *   DHE-PSK with AES-GCM is what qemu-nbd's GnuTLS accepts (it refuses
 *   ECDHE-PSK with CBC); plain PSK-AES-GCM for servers without (EC)DHE.
 * TLS 1.2 is the floor proto.md requires implementations to support.
 */
const PSK_CIPHERS = [
  'TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-PSK-CHACHA20-POLY1305', 'DHE-PSK-AES256-GCM-SHA384', 'DHE-PSK-AES128-GCM-SHA256', 'DHE-PSK-CHACHA20-POLY1305',
  'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256',
].join(':');

const REPLY_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Reply).map(([name, value]) => [value, `NBD_REP_${name}`]));
const OPTION_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Option).map(([name, value]) => [value, `NBD_OPT_${name}`]));

function isErrorReply(type: number): boolean {
  return type >= 0x80000000;
}

/** Re-emits a stream's events until detached, so a SocketReader can be taken off the plain socket before TLS takes it over. */
class StreamTap extends EventEmitter implements ReadableSocket {
  private readonly forwards: Array<[string, (...args: unknown[]) => void]> = [];

  constructor(private readonly stream: Socket) {
    super();
    for (const event of ['data', 'end', 'close', 'error']) {
      const forward = (...args: unknown[]): void => { this.emit(event, ...args); };
      stream.on(event, forward);
      this.forwards.push([event, forward]);
    }
  }

  pause(): void { this.stream.pause(); }
  resume(): void { this.stream.resume(); }

  detach(): void {
    for (const [event, forward] of this.forwards.splice(0)) this.stream.off(event, forward);
  }
}

interface OptionReply {
  type: number;
  data: Buffer;
}

interface Negotiated {
  stream: Socket;
  reader: SocketReader;
  tls: boolean;
  structured: boolean;
  /** The id of base:allocation, when the server selected it. */
  allocationContext: number | undefined;
  sizeBytes: number;
  transmissionFlags: number;
  description: string | undefined;
  minBlockBytes: number;
  preferredBlockBytes: number;
  maxPayloadBytes: number;
}

/** The handshake of one connection, from the greeting to the transmission phase. */
class Handshake {
  stream: Socket;
  private tap: StreamTap;
  private reader: SocketReader;
  /** The last error the stream (plain or TLS) reported: the reason behind a connection that ends mid-handshake. */
  lastError: Error | undefined;
  private tlsUp = false;
  private noZeroes = false;
  /** The server refused an option and waits for the next: the session can end with NBD_OPT_ABORT. */
  private refused = false;

  constructor(socket: Socket, private readonly uri: NbdUri, private readonly label: string, private readonly tls: NbdClientTls | undefined) {
    this.stream = socket;
    socket.on('error', (error) => { this.lastError = error; });
    this.tap = new StreamTap(socket);
    this.reader = new SocketReader(this.tap);
  }

  async run(): Promise<Negotiated> {
    await new Promise<void>((resolve, reject) => {
      const stream = this.stream;
      const onError = (error: Error): void => { stream.off('connect', onConnect); reject(error); };
      const onConnect = (): void => { stream.off('error', onError); resolve(); };
      stream.once('error', onError);
      stream.once('connect', onConnect);
    });
    const greeting = await this.read(18);
    if (greeting.readBigUInt64BE(0) !== NBD_MAGIC) throw new NbdProtocolError(`${this.label}: not an NBD server (no NBDMAGIC in its greeting)`);
    if (greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new NbdProtocolError(`${this.label}: the server speaks the oldstyle handshake, which has no export names or TLS`);
    const serverFlags = greeting.readUInt16BE(16);
    if (!(serverFlags & HandshakeFlag.FIXED_NEWSTYLE)) {
      const message = `${this.label}: the server does not speak the fixed newstyle handshake`;
      throw this.tls ? new NbdTlsRefusedError(`${message}, so it cannot start TLS`) : new NbdProtocolError(message);
    }
    this.noZeroes = (serverFlags & HandshakeFlag.NO_ZEROES) !== 0;
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(HandshakeFlag.FIXED_NEWSTYLE | (this.noZeroes ? HandshakeFlag.NO_ZEROES : 0), 0);
    this.stream.write(clientFlags);

    if (this.tls) await this.startTls(this.tls);

    const structured = await this.structuredReplies();
    const allocationContext = structured ? await this.selectAllocation() : undefined;
    const info = await this.go();
    // The transmission phase reads on with the same reader: nothing the server sent is lost between the phases.
    return { stream: this.stream, reader: this.reader, tls: this.tlsUp, structured, allocationContext, ...info };
  }

  private refuse(error: Error): Error {
    this.refused = true;
    return error;
  }

  /**
   * Ends a handshake that failed: after a refused option with NBD_OPT_ABORT
   * (the soft disconnect proto.md asks of a client that gives up), waiting
   * briefly for the server to hang up; otherwise at once.
   */
  async abandon(): Promise<void> {
    const stream = this.stream;
    if (this.refused && !stream.destroyed) {
      const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
      const timer = setTimeout(() => stream.destroy(), ABANDON_WAIT_MS);
      this.sendOption(Option.ABORT);
      stream.end();
      await closed;
      clearTimeout(timer);
    }
    stream.destroy();
  }

  /** A read of the handshake; a connection that ends says why (a TLS alert right after the handshake is a refusal of our credentials). */
  private async read(bytes: number): Promise<Buffer> {
    try {
      return await this.reader.read(bytes);
    } catch (error) {
      const cause = this.lastError ?? error;
      if (this.tlsUp) {
        throw new NbdTlsError(`${this.label}: the server ended the TLS session during the handshake (does it trust this client's certificate?)${endReason(this.lastError)}`, { cause });
      }
      throw new NbdConnectionClosedError(`${this.label}: the server closed the connection during the handshake${endReason(this.lastError)}`, { cause });
    }
  }

  private sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(IHAVEOPT, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.stream.write(Buffer.concat([header, data]));
  }

  private async optionReply(option: number): Promise<OptionReply> {
    const header = await this.read(20);
    if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new NbdProtocolError(`${this.label}: bad option reply magic`);
    const repliedTo = header.readUInt32BE(8);
    if (repliedTo !== option) throw new NbdProtocolError(`${this.label}: a reply to option ${repliedTo} when ${OPTION_NAMES[option]} was asked`);
    const type = header.readUInt32BE(12);
    const length = header.readUInt32BE(16);
    if (length > MAX_OPTION_REPLY_BYTES) throw new NbdProtocolError(`${this.label}: an option reply of ${length} bytes`);
    return { type, data: await this.read(length) };
  }

  private refusal(option: number, reply: OptionReply): string {
    const message = reply.data.length > 0 ? `: ${reply.data.toString('utf8')}` : '';
    return `${this.label}: the server answered ${OPTION_NAMES[option]} with ${REPLY_NAMES[reply.type] ?? `reply type ${reply.type}`}${message}`;
  }

  /** An error reply every option may get: TLS_REQD (this client then gives up: the URI did not ask for TLS). */
  private throwIfTlsRequired(option: number, reply: OptionReply): void {
    if (reply.type === Reply.ERR_TLS_REQD) {
      throw this.refuse(new NbdTlsRequiredError(`${this.refusal(option, reply)} (the server requires TLS: use an nbds:// URI with TLS credentials)`));
    }
  }

  private async startTls(credentials: NbdClientTls): Promise<void> {
    this.sendOption(Option.STARTTLS);
    const reply = await this.optionReply(Option.STARTTLS);
    if (reply.type !== Reply.ACK) {
      if (isErrorReply(reply.type)) throw this.refuse(new NbdTlsRefusedError(`${this.refusal(Option.STARTTLS, reply)}; the URI requires TLS, so the client does not go on in plaintext`));
      throw new NbdProtocolError(`${this.label}: ${REPLY_NAMES[reply.type] ?? reply.type} is not an answer to NBD_OPT_STARTTLS`);
    }
    // The server sends nothing after the ACK until our ClientHello: the plain socket, quiet and paused, is handed to TLS as it is.
    this.tap.detach();
    this.stream.pause();
    const secure = tlsConnect({ socket: this.stream, ...tlsOptions(this.uri, credentials) });
    secure.on('error', (error) => { this.lastError = error; });
    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error): void => {
        secure.off('secureConnect', onSecure);
        secure.destroy();
        // GnuTLS servers hang up on a PSK they do not know, without an alert.
        const hungUp = (error as NodeJS.ErrnoException).code === 'ECONNRESET' ? ' (the server hung up: does it know this PSK identity and key, or trust this certificate?)' : '';
        reject(new NbdTlsError(`${this.label}: the TLS handshake failed: ${error.message}${hungUp}`, { cause: error }));
      };
      const onSecure = (): void => { secure.off('error', onError); resolve(); };
      secure.once('error', onError);
      secure.once('secureConnect', onSecure);
    });
    this.stream = secure;
    this.tlsUp = true;
    this.tap = new StreamTap(secure);
    this.reader = new SocketReader(this.tap);
  }

  private async structuredReplies(): Promise<boolean> {
    this.sendOption(Option.STRUCTURED_REPLY);
    const reply = await this.optionReply(Option.STRUCTURED_REPLY);
    this.throwIfTlsRequired(Option.STRUCTURED_REPLY, reply);
    if (reply.type === Reply.ACK) return true;
    if (isErrorReply(reply.type)) return false; // simple replies only: reads still work, block status does not
    throw new NbdProtocolError(`${this.label}: ${REPLY_NAMES[reply.type] ?? reply.type} is not an answer to NBD_OPT_STRUCTURED_REPLY`);
  }

  /** SET_META_CONTEXT base:allocation; its id, or undefined when the server selects nothing or refuses. */
  private async selectAllocation(): Promise<number | undefined> {
    this.sendOption(Option.SET_META_CONTEXT, metaContextData(this.uri.exportName, [BASE_ALLOCATION]));
    let id: number | undefined;
    for (;;) {
      const reply = await this.optionReply(Option.SET_META_CONTEXT);
      this.throwIfTlsRequired(Option.SET_META_CONTEXT, reply);
      if (reply.type === Reply.META_CONTEXT) {
        if (reply.data.length < 4) throw new NbdProtocolError(`${this.label}: a short NBD_REP_META_CONTEXT`);
        if (reply.data.toString('utf8', 4) === BASE_ALLOCATION) id = reply.data.readUInt32BE(0);
      } else if (reply.type === Reply.ACK) {
        return id;
      } else if (isErrorReply(reply.type)) {
        return undefined; // "replaces all previously-set metadata contexts (including when this command fails)"
      } else {
        throw new NbdProtocolError(`${this.label}: ${REPLY_NAMES[reply.type] ?? reply.type} is not an answer to NBD_OPT_SET_META_CONTEXT`);
      }
    }
  }

  private async go(): Promise<Omit<Negotiated, 'stream' | 'reader' | 'tls' | 'structured' | 'allocationContext'>> {
    this.sendOption(Option.GO, goData(this.uri.exportName, [Info.BLOCK_SIZE, Info.DESCRIPTION]));
    let exported: { sizeBytes: number; transmissionFlags: number } | undefined;
    let blockSize: { min: number; preferred: number; max: number } | undefined;
    let description: string | undefined;
    for (;;) {
      const reply = await this.optionReply(Option.GO);
      if (reply.type === Reply.INFO) {
        if (reply.data.length < 2) throw new NbdProtocolError(`${this.label}: an empty NBD_REP_INFO`);
        const kind = reply.data.readUInt16BE(0);
        if (kind === Info.EXPORT) {
          if (reply.data.length !== 12) throw new NbdProtocolError(`${this.label}: NBD_INFO_EXPORT of ${reply.data.length} bytes (12 expected)`);
          exported = this.exportInfo(reply.data.readBigUInt64BE(2), reply.data.readUInt16BE(10));
        } else if (kind === Info.BLOCK_SIZE) {
          if (reply.data.length !== 14) throw new NbdProtocolError(`${this.label}: NBD_INFO_BLOCK_SIZE of ${reply.data.length} bytes (14 expected)`);
          blockSize = { min: reply.data.readUInt32BE(2), preferred: reply.data.readUInt32BE(6), max: reply.data.readUInt32BE(10) };
        } else if (kind === Info.DESCRIPTION) {
          description = reply.data.toString('utf8', 2);
        } // other information is ignored, as proto.md asks
        continue;
      }
      if (reply.type === Reply.ACK) break;
      this.throwIfTlsRequired(Option.GO, reply);
      if (reply.type === Reply.ERR_UNKNOWN) throw this.refuse(new NbdExportNotFoundError(`${this.refusal(Option.GO, reply)} (no export named ${JSON.stringify(this.uri.exportName)})`));
      if (reply.type === Reply.ERR_UNSUP) {
        exported = await this.exportName();
        break;
      }
      if (isErrorReply(reply.type)) throw this.refuse(new NbdOptionRefusedError(this.refusal(Option.GO, reply), reply.type));
      throw new NbdProtocolError(`${this.label}: ${REPLY_NAMES[reply.type] ?? reply.type} is not an answer to NBD_OPT_GO`);
    }
    if (!exported) throw new NbdProtocolError(`${this.label}: NBD_OPT_GO succeeded without NBD_INFO_EXPORT`);
    const min = blockSize?.min ?? 1;
    const preferred = blockSize?.preferred ?? 4096;
    const max = blockSize?.max ?? 0xffffffff;
    if (blockSize && (min < 1 || min > 65536 || (min & (min - 1)) !== 0 || max < min || (max !== 0xffffffff && max % min !== 0))) {
      throw new NbdProtocolError(`${this.label}: impossible block sizes (minimum ${min}, preferred ${preferred}, maximum ${max})`);
    }
    const payload = Math.min(max, MAX_READ_BYTES);
    return {
      ...exported, description, minBlockBytes: min, preferredBlockBytes: preferred, maxPayloadBytes: payload - (payload % min),
    };
  }

  /** The old way into transmission, for a server without NBD_OPT_GO: it cannot say why it refuses, it just hangs up. */
  private async exportName(): Promise<{ sizeBytes: number; transmissionFlags: number }> {
    const name = Buffer.from(this.uri.exportName);
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(IHAVEOPT, 0);
    header.writeUInt32BE(Option.EXPORT_NAME, 8);
    header.writeUInt32BE(name.length, 12);
    this.stream.write(Buffer.concat([header, name]));
    let answer: Buffer;
    try {
      answer = await this.reader.read(this.noZeroes ? 10 : 134);
    } catch (error) {
      throw new NbdExportNotFoundError(`${this.label}: the server hung up at NBD_OPT_EXPORT_NAME (no export named ${JSON.stringify(this.uri.exportName)}, or not for this client)`, { cause: error });
    }
    return this.exportInfo(answer.readBigUInt64BE(0), answer.readUInt16BE(8));
  }

  private exportInfo(size: bigint, flags: number): { sizeBytes: number; transmissionFlags: number } {
    if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdProtocolError(`${this.label}: an export of ${size} bytes is beyond 2^53`);
    if (!(flags & TransmissionFlag.HAS_FLAGS)) throw new NbdProtocolError(`${this.label}: transmission flags without NBD_FLAG_HAS_FLAGS`);
    return { sizeBytes: Number(size), transmissionFlags: flags };
  }
}

/** The socket's own error, when the connection ended with one (the reader only knows that it ended). */
function endReason(socketError: Error | undefined): string {
  return socketError ? `: ${socketError.message}` : '';
}

function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value, 0);
  return buffer;
}

function goData(name: string, infoRequests: number[]): Buffer {
  const encoded = Buffer.from(name);
  const requests = Buffer.alloc(2 + 2 * infoRequests.length);
  requests.writeUInt16BE(infoRequests.length, 0);
  infoRequests.forEach((request, i) => requests.writeUInt16BE(request, 2 + 2 * i));
  return Buffer.concat([u32(encoded.length), encoded, requests]);
}

function metaContextData(name: string, queries: string[]): Buffer {
  const parts = [u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length)];
  for (const query of queries) parts.push(u32(Buffer.byteLength(query)), Buffer.from(query));
  return Buffer.concat(parts);
}

/** Refuses, before any connection, TLS options that do not fit the URI. */
function checkTlsOptions(uri: NbdUri, label: string, credentials: NbdClientTls | undefined): void {
  if (uri.tls && !credentials) {
    throw new NbdTlsConfigError(`${label} requires TLS and no TLS credentials were given (a PSK identity and key, or a CA with a client certificate)`);
  }
  if (!uri.tls && credentials) {
    throw new NbdTlsConfigError(`TLS credentials were given for ${label}, which is plaintext: use the nbds:// or nbds+unix:// scheme`);
  }
  if (!credentials) return;
  if ('psk' in credentials) {
    const { identity, key } = credentials.psk;
    if (identity === '' || Buffer.byteLength(identity) > 128) throw new NbdTlsConfigError(`${label}: a TLS-PSK identity is 1 to 128 bytes`);
    if (!Buffer.isBuffer(key) || key.length === 0) throw new NbdTlsConfigError(`${label}: the TLS-PSK key is empty`);
    if (uri.user !== undefined && uri.user !== identity) {
      throw new NbdTlsConfigError(`${label} names the user ${JSON.stringify(uri.user)}, the PSK identity given is ${JSON.stringify(identity)}`);
    }
  } else {
    if ((credentials.cert === undefined) !== (credentials.key === undefined)) throw new NbdTlsConfigError(`${label}: a client certificate and its key go together`);
  }
}

/** node:tls options for upgrading the connection to `uri` with `credentials`. */
function tlsOptions(uri: NbdUri, credentials: NbdClientTls): TlsConnectionOptions {
  if ('psk' in credentials) {
    const { identity, key } = credentials.psk;
    return {
      pskCallback: () => ({ identity, psk: key }),
      ciphers: PSK_CIPHERS,
      minVersion: 'TLSv1.2',
      maxVersion: 'TLSv1.3',
      // No certificate: the server proves itself by knowing the key. (Node 20 still calls this on a
      // TLS 1.2 PSK session, with an empty certificate, and would fail it.)
      checkServerIdentity: () => undefined,
    };
  }
  const name = credentials.servername ?? uri.tlsHostname ?? (uri.transport === 'tcp' ? uri.host.replace(/%.*$/, '') : 'localhost');
  return {
    ca: credentials.ca,
    ...(credentials.cert !== undefined ? { cert: credentials.cert, key: credentials.key } : {}),
    minVersion: 'TLSv1.2',
    rejectUnauthorized: true,
    // SNI carries host names only (RFC 6066); an address is still checked against the certificate's IP SANs.
    ...(isIP(name) === 0 ? { servername: name } : {}),
    checkServerIdentity: (_host, cert) => checkServerIdentity(name, cert),
  };
}

interface Pending {
  command: number;
  offset: number;
  length: number;
  resolve(value: unknown): void;
  reject(error: Error): void;
  /** The caller stopped waiting (its signal): the reply is read and dropped. */
  abandoned: boolean;
  /** The first error chunk of a structured reply; the request fails with it at the end. */
  error?: Error;
  /** A read answered by one data chunk covering it all (no copy). */
  whole?: Buffer;
  /** A read assembled from several chunks (zeroed: holes stay zero). */
  buffer?: Buffer;
  /** Content chunks of a read, as [start, end) within the request. */
  covered: Array<[number, number]>;
  extents?: NbdExtent[];
  release(): void;
}

export class NbdClient {
  readonly uri: NbdUri;
  readonly sizeBytes: number;
  readonly transmissionFlags: number;
  readonly readOnly: boolean;
  readonly description: string | undefined;
  /** base:allocation was selected: blockStatus asks the server. Without it every range is reported as data. */
  readonly allocation: boolean;
  /** Structured replies were negotiated (reads may skip holes). */
  readonly structuredReplies: boolean;
  /** The connection is TLS. */
  readonly tls: boolean;
  /** The TLS version negotiated ('TLSv1.3', 'TLSv1.2'), when `tls`. */
  readonly tlsProtocol: string | undefined;
  /** Reads are at most this long: the server's maximum block size, capped at 32 MiB. */
  readonly maxPayloadBytes: number;
  /** Offsets and lengths of requests are multiples of this (NBD_INFO_BLOCK_SIZE's minimum; 1 when the server gave none). */
  readonly minBlockBytes: number;
  readonly preferredBlockBytes: number;

  private readonly label: string;
  private readonly stream: Socket;
  private readonly reader: SocketReader;
  private readonly allocationContext: number | undefined;
  private readonly maxInFlight: number;
  private readonly pending = new Map<bigint, Pending>();
  private readonly slotWaiters: Array<{ grant(): void; fail(error: Error): void }> = [];
  private inFlight = 0;
  private nextCookie = 1n;
  /** Why the connection can take no more requests (closed by us, dropped, aborted, broken). */
  private ended: Error | undefined;
  private closing: Promise<void> | undefined;
  private readonly replies: Promise<void>;
  private readonly streamClosed: Promise<void>;
  private readonly detachSignal: () => void;

  private constructor(uri: NbdUri, label: string, negotiated: Negotiated, maxInFlight: number, signal: AbortSignal | undefined) {
    this.uri = uri;
    this.label = label;
    this.stream = negotiated.stream;
    this.reader = negotiated.reader;
    this.sizeBytes = negotiated.sizeBytes;
    this.transmissionFlags = negotiated.transmissionFlags;
    this.readOnly = (negotiated.transmissionFlags & TransmissionFlag.READ_ONLY) !== 0;
    this.description = negotiated.description;
    this.allocationContext = negotiated.allocationContext;
    this.allocation = negotiated.allocationContext !== undefined;
    this.structuredReplies = negotiated.structured;
    this.tls = negotiated.tls;
    this.tlsProtocol = negotiated.tls ? (this.stream as TLSSocket).getProtocol() ?? undefined : undefined;
    this.minBlockBytes = negotiated.minBlockBytes;
    this.preferredBlockBytes = negotiated.preferredBlockBytes;
    this.maxPayloadBytes = negotiated.maxPayloadBytes;
    this.maxInFlight = maxInFlight;
    this.streamClosed = this.stream.destroyed ? Promise.resolve() : new Promise((resolve) => this.stream.once('close', () => resolve()));
    const onAbort = (): void => this.end(abortError(signal!), true);
    signal?.addEventListener('abort', onAbort, { once: true });
    this.detachSignal = () => signal?.removeEventListener('abort', onAbort);
    this.replies = this.receive();
  }

  /** Connects and negotiates; rejects with the reason the server or the TLS layer gave, and leaves no socket open. */
  static async connect(uri: NbdUri, options: NbdConnectOptions = {}): Promise<NbdClient> {
    const label = formatNbdUri(uri);
    checkTlsOptions(uri, label, options.tls);
    const maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1) throw new RangeError(`maxInFlight must be a positive integer, not ${maxInFlight}`);
    const { signal } = options;
    throwIfAborted(signal);
    const socket = uri.transport === 'tcp' ? netConnect({ host: uri.host, port: uri.port, noDelay: true }) : netConnect({ path: uri.socket });
    const handshake = new Handshake(socket, uri, label, options.tls);
    let stop!: (error: Error) => void;
    const stopped = new Promise<never>((_, reject) => { stop = reject; });
    const timeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    const timer = setTimeout(() => stop(new NbdHandshakeTimeoutError(`${label}: no NBD session within ${timeoutMs} ms`)), timeoutMs);
    const onAbort = (): void => stop(abortError(signal!));
    signal?.addEventListener('abort', onAbort, { once: true });
    const running = handshake.run();
    running.catch(() => undefined); // when stopped, its own failure (the destroyed socket) is not the news
    try {
      const negotiated = await Promise.race([running, stopped]);
      throwIfAborted(signal); // aborted as the handshake finished: the client would never hear of it
      return new NbdClient(uri, label, negotiated, maxInFlight, signal);
    } catch (error) {
      await handshake.abandon();
      socket.destroy();
      throw error;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** The connection's socket is gone (closed or destroyed). */
  get destroyed(): boolean {
    return this.stream.destroyed;
  }

  /** `length` bytes at `offset`; holes the server reports come back as zeros. */
  async read(offset: number, length: number, options: NbdRequestOptions = {}): Promise<Buffer> {
    this.checkRange('read', offset, length, this.maxPayloadBytes);
    return this.request(Command.READ, offset, length, options.signal) as Promise<Buffer>;
  }

  /**
   * base:allocation of the range, as consecutive extents from `offset`; they
   * may cover less than `length` (the server may stop early; ask again from
   * where they end), never more (a last extent reaching past the range is
   * cut). Without base:allocation, the whole range as one data extent.
   */
  async blockStatus(offset: number, length: number, options: NbdRequestOptions = {}): Promise<NbdExtent[]> {
    this.checkRange('blockStatus', offset, length, MAX_BLOCK_STATUS_BYTES);
    if (!this.allocation) {
      throwIfAborted(options.signal);
      if (this.ended) throw this.closedError();
      return [{ length, flags: 0 }];
    }
    return this.request(Command.BLOCK_STATUS, offset, length, options.signal) as Promise<NbdExtent[]>;
  }

  /**
   * NBD_CMD_DISC (the server answers what it has taken, then closes), then
   * the end of our side; resolves when the connection is closed. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (!this.ended) {
        this.ended = new NbdConnectionClosedError(`${this.label}: the client was closed`);
        this.failWaiters(this.ended);
        this.writeRequest(Command.DISC, 0n, 0, 0);
        this.stream.end();
        const timer = setTimeout(() => this.stream.destroy(), CLOSE_TIMEOUT_MS);
        await this.replies;
        clearTimeout(timer);
      }
      this.stream.destroy();
      await this.streamClosed;
      this.detachSignal();
    })();
    return this.closing;
  }

  private checkRange(what: string, offset: number, length: number, maxLength: number): void {
    const min = this.minBlockBytes;
    const problem = !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 1 ? 'must be whole, non-negative numbers with a length of at least 1'
      : length > maxLength ? `is longer than ${maxLength} bytes`
        : offset + length > this.sizeBytes ? `ends past the export's ${this.sizeBytes} bytes`
          : offset % min !== 0 || (length % min !== 0 && offset + length !== this.sizeBytes) ? `is not aligned to the server's minimum block size ${min}`
            : undefined;
    if (problem) {
      const error = new RangeError(`${what}(${offset}, ${length}) on ${this.label}: the range ${problem}`) as RangeError & { code: string };
      error.code = 'ERR_OUT_OF_RANGE';
      throw error;
    }
  }

  private closedError(): Error {
    const reason = this.ended!;
    if (reason instanceof NbdConnectionClosedError || reason.name === 'AbortError') return reason;
    return new NbdConnectionClosedError(`${this.label}: the connection has ended: ${reason.message}`, { cause: reason });
  }

  /** Waits for a free slot among maxInFlight; the slot is the caller's until its release(). */
  private async slot(signal: AbortSignal | undefined): Promise<void> {
    if (this.inFlight < this.maxInFlight && this.slotWaiters.length === 0) {
      this.inFlight++;
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const waiter = {
        grant: () => { signal?.removeEventListener('abort', onAbort); resolve(); },
        fail: (error: Error) => { signal?.removeEventListener('abort', onAbort); reject(error); },
      };
      const onAbort = (): void => {
        const at = this.slotWaiters.indexOf(waiter);
        if (at >= 0) this.slotWaiters.splice(at, 1);
        reject(abortError(signal!));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.slotWaiters.push(waiter);
    });
  }

  private releaseSlot(): void {
    const next = this.slotWaiters.shift();
    if (next) next.grant(); // the slot passes on: inFlight stays
    else this.inFlight--;
  }

  private failWaiters(error: Error): void {
    for (const waiter of this.slotWaiters.splice(0)) waiter.fail(error);
  }

  private async request(command: number, offset: number, length: number, signal: AbortSignal | undefined): Promise<unknown> {
    throwIfAborted(signal);
    if (this.ended) throw this.closedError();
    await this.slot(signal);
    if (this.ended) {
      this.releaseSlot();
      throw this.closedError();
    }
    const cookie = this.nextCookie++;
    return new Promise((resolve, reject) => {
      let released = false;
      const onAbort = (): void => {
        pending.abandoned = true;
        reject(abortError(signal!));
      };
      const pending: Pending = {
        command, offset, length, abandoned: false, covered: [],
        resolve: (value) => { signal?.removeEventListener('abort', onAbort); resolve(value); },
        reject: (error) => { signal?.removeEventListener('abort', onAbort); reject(error); },
        release: () => {
          if (released) return;
          released = true;
          this.releaseSlot();
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(cookie, pending);
      this.writeRequest(command, cookie, offset, length);
    });
  }

  private writeRequest(command: number, cookie: bigint, offset: number, length: number): void {
    const header = Buffer.alloc(REQUEST_HEADER_BYTES);
    header.writeUInt32BE(REQUEST_MAGIC, 0);
    header.writeUInt16BE(0, 4);
    header.writeUInt16BE(command, 6);
    header.writeBigUInt64BE(cookie, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    this.stream.write(header);
  }

  /**
   * Ends the connection: no more requests, every pending one rejected (with
   * `reason` itself when it is the caller's abort or the server's protocol
   * violation), the socket destroyed when `destroy` (else the server is
   * closing it).
   */
  private end(reason: Error, destroy: boolean): void {
    if (!this.ended) this.ended = reason;
    const error = reason.name === 'AbortError' || reason instanceof NbdProtocolError ? reason : this.closedError();
    for (const [cookie, pending] of this.pending) {
      this.pending.delete(cookie);
      pending.release();
      if (!pending.abandoned) pending.reject(error);
    }
    this.failWaiters(error);
    if (destroy) this.stream.destroy();
    this.detachSignal();
  }

  /** The reply loop: runs until the connection ends, and never rejects. */
  private async receive(): Promise<void> {
    let peerError: Error | undefined;
    this.stream.on('error', (error) => { peerError = error; });
    try {
      for (;;) {
        const header = await this.reader.read(SIMPLE_HEADER_BYTES);
        const magic = header.readUInt32BE(0);
        if (magic === SIMPLE_REPLY_MAGIC) await this.simpleReply(header);
        else if (magic === STRUCTURED_REPLY_MAGIC) {
          if (!this.structuredReplies) throw new NbdProtocolError(`${this.label}: a structured reply, which was not negotiated`);
          await this.structuredChunk(Buffer.concat([header, await this.reader.read(STRUCTURED_HEADER_BYTES - SIMPLE_HEADER_BYTES)]));
        } else {
          throw new NbdProtocolError(`${this.label}: a reply with the bad magic 0x${magic.toString(16)}`);
        }
      }
    } catch (error) {
      if (error instanceof NbdProtocolError) {
        this.end(error, true);
      } else if (this.ended) {
        this.end(this.ended, true); // our close or abort: whatever was still pending is settled
      } else {
        this.end(new NbdConnectionClosedError(`${this.label}: the server ended the connection${endReason(peerError)}`, { cause: peerError ?? error }), true);
      }
    }
  }

  private take(cookie: bigint, what: string): Pending {
    const pending = this.pending.get(cookie);
    if (!pending) throw new NbdProtocolError(`${this.label}: ${what} for cookie ${cookie}, which no request in flight has`);
    return pending;
  }

  private finish(cookie: bigint, pending: Pending, settle: () => void): void {
    this.pending.delete(cookie);
    pending.release();
    if (!pending.abandoned) settle();
  }

  private async simpleReply(header: Buffer): Promise<void> {
    const errno = header.readUInt32BE(4);
    const cookie = header.readBigUInt64BE(8);
    const pending = this.take(cookie, 'a simple reply');
    const command = commandName(pending.command);
    if (errno !== 0) {
      this.finish(cookie, pending, () => pending.reject(nbdRequestError(errno, command, this.label, pending.offset, pending.length)));
      this.afterError(errno);
      return;
    }
    if (pending.command === Command.READ) {
      if (this.structuredReplies) throw new NbdProtocolError(`${this.label}: a simple reply to a read, though structured replies were negotiated`);
      const data = await this.reader.read(pending.length);
      this.finish(cookie, pending, () => pending.resolve(data));
      return;
    }
    throw new NbdProtocolError(`${this.label}: a simple reply without error to ${command}, which needs a structured one`);
  }

  private async structuredChunk(header: Buffer): Promise<void> {
    const flags = header.readUInt16BE(4);
    const type = header.readUInt16BE(6);
    const cookie = header.readBigUInt64BE(8);
    const length = header.readUInt32BE(16);
    const pending = this.take(cookie, `a structured reply chunk of type ${type}`);
    const violation = (what: string): NbdProtocolError => new NbdProtocolError(`${this.label}: ${what} (a chunk of type ${type} for ${commandName(pending.command)} ${pending.offset}+${pending.length})`);

    if (type & 0x8000) {
      await this.errorChunk(pending, type, length, violation);
    } else if (type === ReplyType.NONE) {
      if (length !== 0) throw violation(`NBD_REPLY_TYPE_NONE with a ${length}-byte payload`);
      if (!(flags & ReplyFlag.DONE)) throw violation('NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE');
    } else if (pending.command === Command.READ && (type === ReplyType.OFFSET_DATA || type === ReplyType.OFFSET_HOLE)) {
      await this.contentChunk(pending, type, length, violation);
    } else if (pending.command === Command.BLOCK_STATUS && type === ReplyType.BLOCK_STATUS) {
      await this.statusChunk(pending, length, violation);
    } else {
      throw violation('an unexpected chunk type');
    }

    if (!(flags & ReplyFlag.DONE)) return;
    if (pending.error) {
      this.finish(cookie, pending, () => pending.reject(pending.error!));
      return;
    }
    if (pending.command === Command.READ) {
      const covered = pending.covered.reduce((sum, [start, end]) => sum + end - start, 0);
      if (covered !== pending.length) throw violation(`the reply ended after ${covered} of ${pending.length} bytes`);
      const data = pending.whole ?? pending.buffer!;
      this.finish(cookie, pending, () => pending.resolve(data));
    } else {
      if (!pending.extents) throw violation('the reply ended without block status');
      const extents = pending.extents;
      this.finish(cookie, pending, () => pending.resolve(extents));
    }
  }

  private async errorChunk(pending: Pending, type: number, length: number, violation: (what: string) => NbdProtocolError): Promise<void> {
    if (length < 6) throw violation(`an error chunk of ${length} bytes`);
    const payload = await this.reader.read(length);
    const errno = payload.readUInt32BE(0);
    const messageLength = payload.readUInt16BE(4);
    if (errno === 0) throw violation('an error chunk with error 0');
    if (messageLength > length - 6) throw violation('an error message longer than its chunk');
    const message = payload.toString('utf8', 6, 6 + messageLength);
    let errorOffset: number | undefined;
    if (type === ReplyType.ERROR_OFFSET) {
      if (length < 14 + messageLength) throw violation('NBD_REPLY_TYPE_ERROR_OFFSET without its offset');
      const at = payload.readBigUInt64BE(6 + messageLength);
      if (at < BigInt(pending.offset) || at >= BigInt(pending.offset + pending.length)) throw violation(`an error offset ${at} outside the request`);
      errorOffset = Number(at);
    }
    // The reply goes on to its DONE chunk; the request fails with its first error.
    pending.error ??= nbdRequestError(errno, commandName(pending.command), this.label, pending.offset, pending.length, message, errorOffset);
    this.afterError(errno);
  }

  private async contentChunk(pending: Pending, type: number, length: number, violation: (what: string) => NbdProtocolError): Promise<void> {
    if (type === ReplyType.OFFSET_DATA ? length < 9 : length !== 12) throw violation(`a content chunk of ${length} bytes`);
    // Checked before the data is read: a chunk outside the request is never buffered.
    const at = Number((await this.reader.read(8)).readBigUInt64BE(0)) - pending.offset;
    const bytes = type === ReplyType.OFFSET_DATA ? length - 8 : (await this.reader.read(4)).readUInt32BE(0);
    if (bytes === 0) throw violation('an empty hole');
    if (at < 0 || at + bytes > pending.length) throw violation(`content at ${pending.offset + at}+${bytes}, outside the request`);
    if (pending.covered.some(([start, end]) => at < end && start < at + bytes)) throw violation(`content at ${pending.offset + at}+${bytes} overlaps an earlier chunk`);
    pending.covered.push([at, at + bytes]);
    const data = type === ReplyType.OFFSET_DATA ? await this.reader.read(bytes) : undefined;
    if (data && at === 0 && bytes === pending.length) {
      pending.whole = data;
      return;
    }
    pending.buffer ??= Buffer.alloc(pending.length);
    data?.copy(pending.buffer, at);
  }

  private async statusChunk(pending: Pending, length: number, violation: (what: string) => NbdProtocolError): Promise<void> {
    if (length < 12 || (length - 4) % 8 !== 0) throw violation(`a block status chunk of ${length} bytes`);
    if (pending.extents) throw violation('a second block status chunk for one metadata context');
    const payload = await this.reader.read(length);
    const context = payload.readUInt32BE(0);
    if (context !== this.allocationContext) throw violation(`block status for metadata context ${context}, which was not selected`);
    const extents: NbdExtent[] = [];
    let covered = 0;
    for (let at = 4; at < length; at += 8) {
      if (covered >= pending.length) throw violation('block status extents after the end of the request');
      const extentLength = payload.readUInt32BE(at);
      if (extentLength === 0) throw violation('a block status extent of length 0');
      const kept = Math.min(extentLength, pending.length - covered);
      extents.push({ length: kept, flags: payload.readUInt32BE(at + 4) });
      covered += kept;
    }
    pending.extents = extents;
  }

  /** NBD_ESHUTDOWN: the server is going away, and the protocol asks the client for a soft disconnect. */
  private afterError(errno: number): void {
    if (errno === NbdErrno.ESHUTDOWN) void this.close();
  }
}

function commandName(command: number): string {
  return command === Command.READ ? 'NBD_CMD_READ' : command === Command.BLOCK_STATUS ? 'NBD_CMD_BLOCK_STATUS' : `NBD command ${command}`;
}
