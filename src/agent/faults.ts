// The domain's errno decision: turns what a backend, an export, the catalog
// or the lock table threw into the DomainError the domain raises (the
// transport gives its code an HTTP status, src/api/errors.ts). Policy
// branches on error codes only, never on messages (docs/design.md "House
// style" 2).
//
// Every errno a pool, an export or the catalog raises is decided here:
//   the agent's state disagrees with the pool (a file made or removed behind
//   its back): EEXIST is OBJECT_EXISTS, ENOENT is OBJECT_MISSING (`check`
//   names the orphan or the missing object, `check --repair` settles it);
//   the pool's storage cannot serve now: EIO, EROFS, EACCES, EPERM, ENOTDIR,
//   EISDIR, ELOOP, ENXIO, ENODEV, ESTALE, EMFILE, ENFILE, ENOMEM, EAGAIN are
//   POOL_UNAVAILABLE;
//   the backend cannot do this: EOPNOTSUPP, ENOTSUP, ENOTTY, EXDEV are
//   UNSUPPORTED_FOR_POOL;
//   held: EBUSY, ETXTBSY are VOLUME_BUSY; full: ENOSPC, EDQUOT are INSUFFICIENT_SPACE;
//   too large: EFBIG is INVALID_SIZE, ENAMETOOLONG is INVALID_ID;
//   anything else (EINVAL, EBADF, EFAULT: a call the agent made wrongly) is
//   INTERNAL, an agent fault.
import { isAbortError } from '../common/abort.js';
import { isSystemError } from '../native/system-error.js';
import { UnalignedSizeError } from '../pools/pool.js';
import { DomainError } from './errors.js';
import { LockBusyError } from './locks.js';
import { OperationCancelledError } from './operations.js';

export function toDomainError(error: unknown, details: Record<string, unknown> = {}): DomainError {
  if (error instanceof DomainError) return error;
  if (error instanceof LockBusyError) {
    return new DomainError('VOLUME_BUSY', error.message, { ...details, object: error.key, holders: error.holders });
  }
  if (error instanceof OperationCancelledError || isAbortError(error)) {
    return new DomainError('OPERATION_CANCELLED', (error as Error).message, details);
  }
  if (isSystemError(error, 'EBUSY', 'ETXTBSY')) {
    return new DomainError('VOLUME_BUSY', `${(error as Error).message}: the device is held open outside the agent`, details);
  }
  if (isSystemError(error, 'EEXIST')) {
    return new DomainError('OBJECT_EXISTS', `${(error as Error).message}: the pool has an object of that name that the catalog does not know (made behind the agent's back); \`volagent check\` names it, \`check --repair\` removes it`, details);
  }
  if (isSystemError(error, 'ENOENT')) {
    return new DomainError('OBJECT_MISSING', `${(error as Error).message}: the catalog has it but the pool does not (removed behind the agent's back); \`volagent check\` names it, \`check --repair\` marks its row error`, details);
  }
  if (isSystemError(error, 'EACCES', 'EPERM', 'ENOTDIR', 'EISDIR', 'ELOOP', 'ENXIO', 'ENODEV', 'ESTALE', 'EMFILE', 'ENFILE', 'ENOMEM', 'EAGAIN')) {
    return new DomainError('POOL_UNAVAILABLE', `${(error as Error).message}: the pool's storage cannot serve this now (its permissions, layout, device or the agent's resources); the log has the details`, details);
  }
  if (isSystemError(error, 'EOPNOTSUPP', 'ENOTSUP', 'ENOTTY', 'EXDEV')) {
    return new DomainError('UNSUPPORTED_FOR_POOL', `${(error as Error).message}: the pool's filesystem or device does not support this`, details);
  }
  if (isSystemError(error, 'ENOSPC', 'EDQUOT')) {
    return new DomainError('INSUFFICIENT_SPACE', `${(error as Error).message}; the partial result was removed`, details);
  }
  if (error instanceof UnalignedSizeError) {
    return new DomainError('INVALID_SIZE', `${error.message}; nothing was kept`, { ...details, pool: error.pool, value: error.sizeBytes, sizeAlignmentBytes: error.alignmentBytes });
  }
  if (isSystemError(error, 'EROFS')) {
    return new DomainError('POOL_UNAVAILABLE', `${(error as Error).message}: the pool refuses changes (read-only or failed); see GET /v1/pools`, details);
  }
  if (isSystemError(error, 'EIO')) {
    // A failing device, or a filesystem that shut itself down after one (XFS answers EIO from then on).
    return new DomainError('POOL_UNAVAILABLE', `${(error as Error).message}: the pool's storage failed the request; the log and the kernel log have the device's error`, details);
  }
  if (isSystemError(error, 'EFBIG')) return new DomainError('INVALID_SIZE', `${(error as Error).message}: too large for this pool`, details);
  if (isSystemError(error, 'ENAMETOOLONG')) return new DomainError('INVALID_ID', `${(error as Error).message}: the name is too long for this pool`, details);
  const message = error instanceof Error ? error.message : String(error);
  return new DomainError('INTERNAL', message, details);
}
