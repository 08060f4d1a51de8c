import t from 'tap';

import { formatBytes, parseBytes } from '../../src/common/bytes.js';

t.test('parseBytes reads plain, binary and decimal sizes', async (t) => {
  t.equal(parseBytes('4096'), 4096);
  t.equal(parseBytes('64KiB'), 65536);
  t.equal(parseBytes('200GiB'), 200 * 2 ** 30);
  t.equal(parseBytes('1.5 GiB'), 1.5 * 2 ** 30);
  t.equal(parseBytes('10G'), 10 * 2 ** 30);
  t.equal(parseBytes('10GB'), 10e9);
  for (const bad of ['', 'ten', '-1', '1.3B', '5XB', '1e3']) t.throws(() => parseBytes(bad), RangeError, bad);
});

t.test('formatBytes', async (t) => {
  t.equal(formatBytes(512), '512 B');
  t.equal(formatBytes(1536), '1.5 KiB');
  t.equal(formatBytes(10 * 2 ** 30), '10.0 GiB');
  t.equal(formatBytes(300 * 2 ** 20), '300 MiB');
});
