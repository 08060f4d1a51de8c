// What a backend's failure becomes in the domain, and its status at the API:
// branched on codes, never on text.
import t from 'tap';

import { DomainError } from '../../src/agent/errors.js';
import { toDomainError } from '../../src/agent/faults.js';
import { HTTP_STATUS } from '../../src/api/errors.js';
import { systemError } from '../../src/native/system-error.js';
import { UnalignedSizeError } from '../../src/pools/pool.js';

/** The domain's decision with the status the transport gives its code. */
function decide(error: unknown, details?: Record<string, unknown>): DomainError & { status: number } {
  const fault = toDomainError(error, details);
  if (!(fault instanceof DomainError)) throw new Error('toDomainError must return a DomainError');
  return Object.assign(fault, { status: HTTP_STATUS[fault.code] });
}

t.test('pool failures map to documented codes with their details', async (t) => {
  const unaligned = decide(new UnalignedSizeError('thin0', 65_536 + 512, 65_536), { volume: 'v1' });
  t.match(unaligned, { code: 'INVALID_SIZE', status: 400, details: { volume: 'v1', pool: 'thin0', value: 66_048, sizeAlignmentBytes: 65_536 } });
  t.match(unaligned.message, /pool thin0 stores sizes in multiples of 65536 bytes; 66048 is not one; nothing was kept/);
  t.match(decide(systemError('EROFS', 'thin-pool', 'volagent-thin0-pool')), { code: 'POOL_UNAVAILABLE', status: 503 });
  t.match(decide(systemError('ENOSPC', 'thin-pool', 'volagent-thin0-pool')), { code: 'INSUFFICIENT_SPACE', status: 507 });
  t.match(decide(systemError('EIO', 'fsync', '/pool/objects/.tmp-v1-0123456789ab.raw'), { volume: 'v1' }), { code: 'POOL_UNAVAILABLE', status: 503, details: { volume: 'v1' } });
  t.match(decide(systemError('EIO', 'read', '/pool/objects/v1.raw')).message, /EIO.*the pool's storage failed the request/);
  const busy = decide(Object.assign(new Error("EBUSY: device or resource busy, DM_DEV_REMOVE 'volagent-thin0-3'"), { code: 'EBUSY', errno: -16, syscall: 'DM_DEV_REMOVE' }), { volume: 'v3' });
  t.match(busy, { code: 'VOLUME_BUSY', status: 409, details: { volume: 'v3' } });
  t.match(decide(new Error('something else')), { code: 'INTERNAL', status: 500 });
});

t.test('every errno a pool, an export or the catalog raises has its decided code (none is a 500 but a call made wrongly)', async (t) => {
  const decided: Array<[Parameters<typeof systemError>[0], string, number]> = [
    ['EEXIST', 'OBJECT_EXISTS', 409], ['ENOENT', 'OBJECT_MISSING', 409],
    ['EBUSY', 'VOLUME_BUSY', 409], ['ETXTBSY', 'VOLUME_BUSY', 409],
    ['ENOSPC', 'INSUFFICIENT_SPACE', 507], ['EDQUOT', 'INSUFFICIENT_SPACE', 507],
    ['EIO', 'POOL_UNAVAILABLE', 503], ['EROFS', 'POOL_UNAVAILABLE', 503], ['EACCES', 'POOL_UNAVAILABLE', 503], ['EPERM', 'POOL_UNAVAILABLE', 503],
    ['ENOTDIR', 'POOL_UNAVAILABLE', 503], ['EISDIR', 'POOL_UNAVAILABLE', 503], ['ELOOP', 'POOL_UNAVAILABLE', 503], ['ENXIO', 'POOL_UNAVAILABLE', 503],
    ['ENODEV', 'POOL_UNAVAILABLE', 503], ['ESTALE', 'POOL_UNAVAILABLE', 503], ['EMFILE', 'POOL_UNAVAILABLE', 503], ['ENFILE', 'POOL_UNAVAILABLE', 503],
    ['ENOMEM', 'POOL_UNAVAILABLE', 503], ['EAGAIN', 'POOL_UNAVAILABLE', 503],
    ['EOPNOTSUPP', 'UNSUPPORTED_FOR_POOL', 422], ['ENOTSUP', 'UNSUPPORTED_FOR_POOL', 422], ['ENOTTY', 'UNSUPPORTED_FOR_POOL', 422],
    ['EXDEV', 'UNSUPPORTED_FOR_POOL', 422],
    ['EFBIG', 'INVALID_SIZE', 400], ['ENAMETOOLONG', 'INVALID_ID', 400],
    ['EINVAL', 'INTERNAL', 500], ['EBADF', 'INTERNAL', 500], ['EFAULT', 'INTERNAL', 500],
  ];
  for (const [errno, code, status] of decided) {
    const fault = decide(systemError(errno, 'open', '/pool/objects/v1.raw'), { volume: 'v1' });
    t.match(fault, { code, status, details: { volume: 'v1' } }, `${errno}: ${code}`);
    t.match(fault.message, new RegExp(`^${errno}: .*'/pool/objects/v1.raw'`), `${errno}: the kernel's error leads the message`);
  }
  t.match(decide(systemError('EEXIST', 'rename', '/p/objects/.tmp-v1.raw', '/p/objects/v1.raw')).message, /check --repair` removes it/);
  t.match(decide(systemError('ENOENT', 'open', '/p/objects/v1.raw')).message, /check --repair` marks its row error/);
  const domain = new DomainError('VOLUME_NOT_FOUND', 'no');
  t.equal(toDomainError(domain, { volume: 'v1' }), domain, 'a DomainError passes through as it is');
});
