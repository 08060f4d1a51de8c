// The NBD protocol's numbers (NetworkBlockDevice/nbd doc/proto.md): the fixed
// newstyle handshake, options and their replies, the transmission phase's
// requests, simple and structured replies, and the errors they carry. All
// integers on the wire are big-endian.

export const NBD_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server, 16 bits) and client flags (32 bits) share their low bits. */
export const HandshakeFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;

export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const ERR = 0x80000000;
export const Reply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: ERR + 1,
  ERR_POLICY: ERR + 2,
  ERR_INVALID: ERR + 3,
  ERR_PLATFORM: ERR + 4,
  ERR_TLS_REQD: ERR + 5,
  ERR_UNKNOWN: ERR + 6,
  ERR_SHUTDOWN: ERR + 7,
  ERR_BLOCK_SIZE_REQD: ERR + 8,
  ERR_TOO_BIG: ERR + 9,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags (16 bits), sent with the export's size. */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Command = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7, RESIZE: 8 } as const;

export const CommandFlag = { FUA: 1 << 0, NO_HOLE: 1 << 1, DF: 1 << 2, REQ_ONE: 1 << 3, FAST_ZERO: 1 << 4, PAYLOAD_LEN: 1 << 5 } as const;

export const ReplyType = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: (1 << 15) + 1, ERROR_OFFSET: (1 << 15) + 2 } as const;

export const ReplyFlag = { DONE: 1 << 0 } as const;

/** The errno values the protocol defines (the wire values, whatever the host's). */
export const NbdErrno = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;
export type NbdErrnoName = keyof typeof NbdErrno;

/** base:allocation status flags. */
export const AllocationState = { HOLE: 1 << 0, ZERO: 1 << 1 } as const;
export const BASE_ALLOCATION = 'base:allocation';

export const REQUEST_HEADER_BYTES = 28;
export const OPTION_HEADER_BYTES = 16;

/** The server's own limits (issue 6: refused without buffering). */
export const MAX_OPTION_DATA_BYTES = 4096;
export const MAX_PAYLOAD_BYTES = 32 * 1024 * 1024;
export const HANDSHAKE_TIMEOUT_MS = 10_000;

export function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(20);
  header.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(type, 12);
  header.writeUInt32BE(data.length, 16);
  return Buffer.concat([header, data]);
}

export function simpleReply(cookie: bigint, error: number): Buffer {
  const header = Buffer.alloc(16);
  header.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  header.writeUInt32BE(error, 4);
  header.writeBigUInt64BE(cookie, 8);
  return header;
}

export function structuredReplyHeader(cookie: bigint, type: number, flags: number, length: number): Buffer {
  const header = Buffer.alloc(20);
  header.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeUInt32BE(length, 16);
  return header;
}

export interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
}

/** A request header (28 bytes); undefined when the magic is wrong. */
export function parseRequest(header: Buffer): Request | undefined {
  if (header.readUInt32BE(0) !== REQUEST_MAGIC) return undefined;
  return {
    flags: header.readUInt16BE(4),
    type: header.readUInt16BE(6),
    cookie: header.readBigUInt64BE(8),
    offset: header.readBigUInt64BE(16),
    length: header.readUInt32BE(24),
  };
}
