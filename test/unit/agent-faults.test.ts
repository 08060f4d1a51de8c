// What a backend's failure becomes at the API: branched on codes, never on text.
import t from 'tap';

import { toApiError } from '../../src/agent/faults.js';
import { ApiError } from '../../src/api/errors.js';
import { systemError } from '../../src/native/system-error.js';
import { UnalignedSizeError } from '../../src/pools/pool.js';

t.test('pool failures map to documented codes with their details', async (t) => {
  const unaligned = toApiError(new UnalignedSizeError('thin0', 65_536 + 512, 65_536), { volume: 'v1' });
  t.match(unaligned, { code: 'INVALID_SIZE', status: 400, details: { volume: 'v1', pool: 'thin0', value: 66_048, sizeAlignmentBytes: 65_536 } });
  t.match(unaligned.message, /pool thin0 stores sizes in multiples of 65536 bytes; 66048 is not one; nothing was kept/);
  t.match(toApiError(systemError('EROFS', 'thin-pool', 'volagent-thin0-pool')), { code: 'POOL_UNAVAILABLE', status: 503 });
  t.match(toApiError(systemError('ENOSPC', 'thin-pool', 'volagent-thin0-pool')), { code: 'INSUFFICIENT_SPACE', status: 507 });
  t.match(toApiError(systemError('EIO', 'fsync', '/pool/objects/.tmp-v1-0123456789ab.raw'), { volume: 'v1' }), { code: 'POOL_UNAVAILABLE', status: 503, details: { volume: 'v1' } });
  t.match(toApiError(systemError('EIO', 'read', '/pool/objects/v1.raw')).message, /EIO.*the pool's storage failed the request/);
  const busy = toApiError(Object.assign(new Error("EBUSY: device or resource busy, DM_DEV_REMOVE 'volagent-thin0-3'"), { code: 'EBUSY', errno: -16, syscall: 'DM_DEV_REMOVE' }), { volume: 'v3' });
  t.match(busy, { code: 'VOLUME_BUSY', status: 409, details: { volume: 'v3' } });
  t.match(toApiError(new Error('something else')), { code: 'INTERNAL', status: 500 });
  const api = new ApiError('VOLUME_NOT_FOUND', 'no');
  t.equal(toApiError(api), api, 'an ApiError passes through');
});
