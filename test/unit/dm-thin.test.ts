// dm-thin's tables, messages and status lines (thin-provisioning.rst); the
// VM lane checks the same functions against a real kernel.
import t from 'tap';

import { allocationExtents } from '../../src/pools/dm-thin-allocation.js';
import { decodeDeviceNumber } from '../../src/pools/thin/block-device.js';
import { parseThinPoolStatus, parseThinStatus, thinPoolMessage, thinPoolTarget, thinTarget } from '../../src/devices/dm-thin.js';

t.test('tables: devices by major:minor, features counted', async (t) => {
  t.same(thinPoolTarget('254:1', '254:0', 131072, { blockSectors: 128, lowWaterBlocks: 16, errorIfNoSpace: true, skipBlockZeroing: true }),
    { start: 0, length: 131072, type: 'thin-pool', params: '254:1 254:0 128 16 2 skip_block_zeroing error_if_no_space' });
  t.same(thinPoolTarget('7:1', '7:0', 2048, { blockSectors: 256, lowWaterBlocks: 0, errorIfNoSpace: false, skipBlockZeroing: false }).params, '7:1 7:0 256 0 0');
  t.same(thinTarget('253:0', 7, 16384), { start: 0, length: 16384, type: 'thin', params: '253:0 7' });
});

t.test('messages', async (t) => {
  t.equal(thinPoolMessage.createThin(3), 'create_thin 3');
  t.equal(thinPoolMessage.createSnap(4, 3), 'create_snap 4 3');
  t.equal(thinPoolMessage.delete(4), 'delete 4');
  t.equal(thinPoolMessage.setTransactionId(7, 8), 'set_transaction_id 7 8');
  t.equal(thinPoolMessage.reserveMetadataSnap, 'reserve_metadata_snap');
  t.equal(thinPoolMessage.releaseMetadataSnap, 'release_metadata_snap');
});

t.test('mapped block runs as byte extents covering exactly the asked range', async (t) => {
  const block = 65536;
  const sum = (extents: Array<{ length: number }>): number => extents.reduce((total, e) => total + e.length, 0);
  t.same(allocationExtents([], 0, 4 * block, block), [{ length: 4 * block, allocated: false }], 'nothing mapped: one hole');
  t.same(allocationExtents([{ block: 0, count: 4 }], 0, 4 * block, block), [{ length: 4 * block, allocated: true }], 'all mapped');
  t.same(allocationExtents([{ block: 1, count: 1 }, { block: 3, count: 2 }], 0, 6 * block, block), [
    { length: block, allocated: false }, { length: block, allocated: true }, { length: block, allocated: false },
    { length: 2 * block, allocated: true }, { length: block, allocated: false },
  ]);
  // A range starting and ending inside blocks: the runs are clipped to it.
  const clipped = allocationExtents([{ block: 0, count: 1 }, { block: 2, count: 1 }], 1000, 2 * block + 5000, block);
  t.same(clipped, [{ length: block - 1000, allocated: true }, { length: block, allocated: false }, { length: 5000, allocated: true }]);
  t.equal(sum(clipped), 2 * block + 4000, 'lengths add up to the range');
  t.same(allocationExtents([{ block: 0, count: 1 }, { block: 1, count: 1 }], 0, 2 * block, block), [{ length: 2 * block, allocated: true }], 'adjacent runs merge');
  t.same(allocationExtents([{ block: 5, count: 3 }], 0, 2 * block, block), [{ length: 2 * block, allocated: false }], 'a run past the range is ignored');
});

t.test('thin-pool status: a working pool, every field', async (t) => {
  t.same(parseThinPoolStatus('0 11/2048 0/1024 - rw discard_passdown queue_if_no_space - 1024'), {
    state: 'working', transactionId: 0, metadata: { used: 11, total: 2048 }, data: { used: 0, total: 1024 }, heldMetadataRoot: undefined,
    mode: 'rw', discardPassdown: true, noSpace: 'queue', needsCheck: false, metadataLowWatermark: 1024,
  });
  t.match(parseThinPoolStatus('42 100/2048 1024/1024 17 out_of_data_space no_discard_passdown error_if_no_space needs_check 1024\n'), {
    transactionId: 42, data: { used: 1024, total: 1024 }, heldMetadataRoot: 17, mode: 'out_of_data_space', discardPassdown: false, noSpace: 'error', needsCheck: true,
  });
  t.match(parseThinPoolStatus('1 11/2048 0/1024 - ro discard_passdown queue_if_no_space -'), { mode: 'ro', metadataLowWatermark: undefined }, 'before 4.19: no watermark');
  t.same(parseThinPoolStatus('Fail'), { state: 'failed' });
  t.same(parseThinPoolStatus('Error'), { state: 'error' });
});

t.test('thin-pool status: a line that does not parse is an error naming the field', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['', /expected at least 8 fields, got 1/],
    ['x 11/2048 0/1024 - rw discard_passdown queue_if_no_space -', /transaction id is not a count/],
    ['0 11 0/1024 - rw discard_passdown queue_if_no_space -', /metadata total is not a count/],
    ['0 11/2048 0/1024 - maybe discard_passdown queue_if_no_space -', /mode is not one of rw, ro, out_of_data_space/],
    ['0 11/2048 0/1024 - rw discard_passdown panic_if_no_space -', /no-space policy/],
    ['99999999999999999999 11/2048 0/1024 - rw discard_passdown queue_if_no_space -', /transaction id is not a count/],
  ];
  for (const [line, message] of cases) t.throws(() => parseThinPoolStatus(line), { name: 'DmStatusError', message }, JSON.stringify(line));
});

t.test('thin status', async (t) => {
  t.same(parseThinStatus('0 -'), { state: 'working', mappedSectors: 0, highestMappedSector: undefined });
  t.same(parseThinStatus('2048 2047'), { state: 'working', mappedSectors: 2048, highestMappedSector: 2047 });
  t.same(parseThinStatus('Fail'), { state: 'failed' });
  t.throws(() => parseThinStatus('1 2 3'), { name: 'DmStatusError', message: /expected 2 fields/ });
});

t.test('dev_t decodes into major:minor as glibc lays it out in 64 bits (gnu_dev_major/minor)', async (t) => {
  t.same(decodeDeviceNumber(0x0807n), { major: 8, minor: 7 }, 'sda7, the old 8+8 bit layout');
  t.same(decodeDeviceNumber((259n << 8n) | 5n), { major: 259, minor: 5 }, 'nvme: a 12-bit major');
  t.same(decodeDeviceNumber(((0x12345n & ~0xfffn) << 32n) | ((0x345n) << 8n) | ((0xabcdefn & ~0xffn) << 12n) | 0xefn), { major: 0x12345, minor: 0xabcdef }, 'wide major and minor');
});
