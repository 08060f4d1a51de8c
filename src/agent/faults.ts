// Turns what a backend or the lock table threw into the API fault the client
// gets. Policy branches on error codes only, never on messages
// (docs/design.md "House style" 2).
import { ApiError } from '../api/errors.js';
import { isAbortError } from '../clone/abort.js';
import { isSystemError } from '../native/system-error.js';
import { UnalignedSizeError } from '../pools/pool.js';
import { LockBusyError } from './locks.js';
import { OperationCancelledError } from './operations.js';

export function toApiError(error: unknown, details: Record<string, unknown> = {}): ApiError {
  if (error instanceof ApiError) return error;
  if (error instanceof LockBusyError) {
    return new ApiError('VOLUME_BUSY', error.message, { ...details, object: error.key, holders: error.holders });
  }
  if (error instanceof OperationCancelledError || isAbortError(error)) {
    return new ApiError('OPERATION_CANCELLED', (error as Error).message, details);
  }
  if (isSystemError(error, 'EBUSY')) {
    return new ApiError('VOLUME_BUSY', `${(error as Error).message}: the device is held open outside the agent`, details);
  }
  if (isSystemError(error, 'ENOSPC', 'EDQUOT')) {
    return new ApiError('INSUFFICIENT_SPACE', `${(error as Error).message}; the partial result was removed`, details);
  }
  if (error instanceof UnalignedSizeError) {
    return new ApiError('INVALID_SIZE', `${error.message}; nothing was kept`, { ...details, pool: error.pool, value: error.sizeBytes, sizeAlignmentBytes: error.alignmentBytes });
  }
  if (isSystemError(error, 'EROFS')) {
    return new ApiError('POOL_UNAVAILABLE', `${(error as Error).message}: the pool refuses changes (read-only or failed); see GET /v1/pools`, details);
  }
  if (isSystemError(error, 'EIO')) {
    // A failing device, or a filesystem that shut itself down after one (XFS answers EIO from then on).
    return new ApiError('POOL_UNAVAILABLE', `${(error as Error).message}: the pool's storage failed the request; the log and the kernel log have the device's error`, details);
  }
  if (isSystemError(error, 'EFBIG')) return new ApiError('INVALID_SIZE', `${(error as Error).message}: too large for this pool`, details);
  if (isSystemError(error, 'ENAMETOOLONG')) return new ApiError('INVALID_ID', `${(error as Error).message}: the name is too long for this pool`, details);
  const message = error instanceof Error ? error.message : String(error);
  return new ApiError('INTERNAL', message, details);
}
