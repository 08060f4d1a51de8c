// The upload writer on the temp filesystem: chunks of any size land at their
// offsets across staging-buffer boundaries, the size is what was received,
// the limit is EFBIG as soon as it is passed, a failing source rejects.
import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';

import { STAGING_BYTES, writeSparse } from '../../src/pools/sparse-writer.js';
import { tempDir } from '../helpers/temp-dir.js';

async function* chunksOf(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}

async function writeTo(t: Test, source: AsyncIterable<Uint8Array>, maxBytes?: number): Promise<{ result: Awaited<ReturnType<typeof writeSparse>>; file: string }> {
  const file = path.join(await tempDir(t, 'volagent-sparse-'), 'f');
  const handle = await open(file, 'wx');
  try {
    const result = await writeSparse(handle.fd, file, source, maxBytes === undefined ? {} : { maxBytes });
    await handle.truncate(result.sizeBytes);
    return { result, file };
  } finally {
    await handle.close();
  }
}

t.test('odd chunks across staging buffers: same bytes, zero blocks not written', async (t) => {
  const data = Buffer.alloc(2 * STAGING_BYTES + 12_345, 0);
  data.fill(7, 0, 5000); // data in the first block and the second
  data.fill(9, STAGING_BYTES - 10, STAGING_BYTES + 10); // across the first staging boundary
  data.fill(3, data.length - 45); // the tail
  const progress: number[] = [];
  const file = path.join(await tempDir(t, 'volagent-sparse-'), 'f');
  const handle = await open(file, 'wx');
  const result = await writeSparse(handle.fd, file, chunksOf(data, 65_537), { onProgress: (n) => progress.push(n) });
  await handle.truncate(result.sizeBytes);
  await handle.close();
  t.equal(result.sizeBytes, data.length);
  t.equal(result.bytesWritten, 2 * 4096 + 2 * 4096 + (data.length % 4096 === 0 ? 4096 : data.length % 4096), 'only the blocks holding data');
  t.same(await readFile(file), data);
  t.equal(progress.at(-1), data.length, 'progress reaches the size');
  t.ok(progress.every((n, i) => i === 0 || n >= progress[i - 1]!), 'progress never goes back');
});

t.test('an empty stream is size 0', async (t) => {
  const { result } = await writeTo(t, chunksOf(Buffer.alloc(0), 1));
  t.same(result, { sizeBytes: 0, bytesWritten: 0 });
});

t.test('more than maxBytes is EFBIG, raised by the chunk that passes it', async (t) => {
  let pulled = 0;
  async function* counting(): AsyncGenerator<Buffer> {
    for (let i = 0; i < 100; i++) {
      pulled++;
      yield Buffer.alloc(1000, 1);
    }
  }
  await t.rejects(writeTo(t, counting(), 10_500), { code: 'EFBIG', syscall: 'write' });
  t.equal(pulled, 11, 'stopped at the eleventh chunk');
  const { result } = await writeTo(t, chunksOf(Buffer.alloc(10_500, 1), 1000), 10_500);
  t.equal(result.sizeBytes, 10_500, 'exactly maxBytes is accepted');
});

t.test('a failing source rejects with its error after in-flight writes settled', async (t) => {
  async function* failing(): AsyncGenerator<Buffer> {
    yield Buffer.alloc(STAGING_BYTES + 1, 1);
    throw new Error('connection reset');
  }
  await t.rejects(writeTo(t, failing()), { message: 'connection reset' });
});
