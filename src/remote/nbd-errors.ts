// What the NBD client throws. Failures of a request the server answered with
// an error are Node-shaped system errors (`code` is the errno name, as Node's
// fs errors); everything else is one of these classes, each with a stable
// `code` for callers to branch on (never the message). Errors of the socket
// itself (ECONNREFUSED, ENOENT for a unix socket) are Node's own, passed on.
import { getSystemErrorMap } from 'node:util';

import { NbdErrno } from '../exports/nbd/protocol.js';
import type { SystemError } from '../native/system-error.js';

export class NbdError extends Error {
  override name = 'NbdError';
  readonly code: string = 'ERR_NBD';
}

/** The TLS options do not fit the URI (nbds without credentials, credentials for plain nbd): refused before connecting. */
export class NbdTlsConfigError extends NbdError {
  override name = 'NbdTlsConfigError';
  override readonly code = 'ERR_NBD_TLS_CONFIG';
}

/** The server answered STARTTLS with an error (or cannot negotiate options): a TLS URI never falls back to plaintext. */
export class NbdTlsRefusedError extends NbdError {
  override name = 'NbdTlsRefusedError';
  override readonly code = 'ERR_NBD_TLS_REFUSED';
}

/** The TLS session failed: a handshake refused by either side (wrong key or identity, an untrusted certificate) or ended by a TLS alert. */
export class NbdTlsError extends NbdError {
  override name = 'NbdTlsError';
  override readonly code = 'ERR_NBD_TLS';
}

/** The server requires TLS and the URI is plain nbd. */
export class NbdTlsRequiredError extends NbdError {
  override name = 'NbdTlsRequiredError';
  override readonly code = 'ERR_NBD_TLS_REQUIRED';
}

/** NBD_REP_ERR_UNKNOWN: the server has no export of that name. */
export class NbdExportNotFoundError extends NbdError {
  override name = 'NbdExportNotFoundError';
  override readonly code = 'ERR_NBD_EXPORT_NOT_FOUND';
}

/** An option the client needs (NBD_OPT_GO) was refused with another error reply (policy, shutdown, ...). */
export class NbdOptionRefusedError extends NbdError {
  override name = 'NbdOptionRefusedError';
  override readonly code = 'ERR_NBD_OPTION_REFUSED';
  constructor(message: string, readonly reply: number) {
    super(message);
  }
}

/** The server broke the protocol (a bad magic, an unknown cookie, a chunk outside its request): the connection is ended. */
export class NbdProtocolError extends NbdError {
  override name = 'NbdProtocolError';
  override readonly code = 'ERR_NBD_PROTOCOL';
}

/** The connection is over (closed by the client, or dropped): the request was not, or not wholly, answered. */
export class NbdConnectionClosedError extends NbdError {
  override name = 'NbdConnectionClosedError';
  override readonly code = 'ERR_NBD_CLOSED';
}

/** The handshake (connect, TLS, options) did not finish within handshakeTimeoutMs. */
export class NbdHandshakeTimeoutError extends NbdError {
  override name = 'NbdHandshakeTimeoutError';
  override readonly code = 'ERR_NBD_HANDSHAKE_TIMEOUT';
}

/** The host's errno of each name, from libuv's table (os.constants.errno lacks some, ESHUTDOWN among them). */
const HOST_ERRNO = new Map([...getSystemErrorMap()].map(([errno, [name, description]]) => [name, { errno, description }]));
const ERRNO_NAMES = new Map<number, keyof typeof NbdErrno>(Object.entries(NbdErrno).map(([name, value]) => [value, name as keyof typeof NbdErrno]));

export interface NbdRequestError extends SystemError {
  /** NBD_REPLY_TYPE_ERROR_OFFSET: where in the request the server failed. */
  errorOffset?: number;
}

/**
 * The error of a request the server failed: `code` is the errno's name (a
 * value the protocol does not define counts as EINVAL, as proto.md says),
 * `syscall` the command, `path` the export's URI.
 */
export function nbdRequestError(
  wireErrno: number, command: string, uri: string, offset: number, length: number, detail?: string, errorOffset?: number,
): NbdRequestError {
  const name = ERRNO_NAMES.get(wireErrno) ?? 'EINVAL';
  const { errno, description } = HOST_ERRNO.get(name) ?? { errno: 0, description: 'error' };
  const where = errorOffset !== undefined ? ` (failed at ${errorOffset})` : '';
  const unknown = ERRNO_NAMES.has(wireErrno) ? '' : ` [the server sent errno ${wireErrno}]`;
  const error = new Error(`${name}: ${description}, ${command} '${uri}' ${offset}+${length}${where}${detail ? `: ${detail}` : ''}${unknown}`) as NbdRequestError;
  error.code = name;
  error.errno = errno;
  error.syscall = command;
  error.path = uri;
  if (errorOffset !== undefined) error.errorOffset = errorOffset;
  Error.captureStackTrace(error, nbdRequestError);
  return error;
}
