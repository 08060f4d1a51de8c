// Errors of the thin backend that no system call raised: devices, the
// catalog's record and the kernel's state of a pool that disagree. A failed
// system call stays the Node-shaped error it is (native/system-error.ts).
import { isSystemError } from '../../native/system-error.js';

export class ThinPoolError extends Error {
  override name = 'ThinPoolError';
}

/** A rejection handler: the system errors `codes` answer undefined, any other is thrown again. */
export function ignoring<T>(codes: string[]): (error: unknown) => T | undefined {
  return (error) => {
    if (isSystemError(error, ...codes)) return undefined;
    throw error;
  };
}
