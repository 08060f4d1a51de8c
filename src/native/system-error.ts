// Node-shaped system errors: the fields Node's own `fs` errors carry. The
// addon makes them for kernel failures; TypeScript makes the same shape for
// conditions it detects itself (a directory where a file was expected).
import { constants as osConstants } from 'node:os';

export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
  dest?: string;
}

export function isSystemError(value: unknown, ...codes: string[]): value is SystemError {
  if (!(value instanceof Error)) return false;
  const { code, syscall } = value as Partial<SystemError>;
  if (typeof code !== 'string' || typeof syscall !== 'string') return false;
  return codes.length === 0 || codes.includes(code);
}

const descriptions: Record<string, string> = {
  EISDIR: 'illegal operation on a directory',
  EEXIST: 'file already exists',
  EINVAL: 'invalid argument',
  ENOSPC: 'no space left on device',
  EFBIG: 'file too large',
  ENODEV: 'no such device',
  ENOTBLK: 'block device required',
};

/** Makes an error shaped like Node's: `EISDIR: illegal operation on a directory, open 'x'`. */
export function systemError(code: keyof typeof osConstants.errno & string, syscall: string, path?: string, dest?: string): SystemError {
  let message = `${code}: ${descriptions[code] ?? 'system error'}, ${syscall}`;
  if (path !== undefined) message += ` '${path}'`;
  if (dest !== undefined) message += ` -> '${dest}'`;
  const error = new Error(message) as SystemError;
  error.code = code;
  error.errno = -(osConstants.errno[code] ?? 0);
  error.syscall = syscall;
  if (path !== undefined) error.path = path;
  if (dest !== undefined) error.dest = dest;
  Error.captureStackTrace(error, systemError);
  return error;
}
