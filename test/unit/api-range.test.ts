// Range headers of downloads (RFC 9110 14): one range is served, past the end
// is 416, forms a server may ignore give the whole image.
import t from 'tap';

import { parseRange } from '../../src/api/parse.js';

t.test('ranges that are served, clipped to the size', async (t) => {
  const size = 1000;
  const cases: Array<[string, { start: number; end: number }]> = [
    ['bytes=0-0', { start: 0, end: 0 }],
    ['bytes=0-999', { start: 0, end: 999 }],
    ['bytes=10-', { start: 10, end: 999 }],
    ['bytes=990-5000', { start: 990, end: 999 }],
    ['bytes=-10', { start: 990, end: 999 }],
    ['bytes=-5000', { start: 0, end: 999 }],
    [' bytes=5-6 ', { start: 5, end: 6 }],
  ];
  for (const [header, range] of cases) t.same(parseRange(header, size), range, header);
});

t.test('ignored: no header, another unit, several ranges, bad syntax', async (t) => {
  for (const header of [undefined, 'items=0-1', 'bytes=0-1,3-4', 'bytes=5-2', 'bytes=-', 'bytes=a-b', 'bytes 0-1']) {
    t.equal(parseRange(header, 1000), undefined, String(header));
  }
});

t.test('past the end, or an empty suffix: 416 RANGE_NOT_SATISFIABLE with the size', async (t) => {
  for (const header of ['bytes=1000-', 'bytes=1000-2000', 'bytes=-0']) {
    t.throws(() => parseRange(header, 1000), { code: 'RANGE_NOT_SATISFIABLE', status: 416, details: { sizeBytes: 1000, range: header } }, header);
  }
});
