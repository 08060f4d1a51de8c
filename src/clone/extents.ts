// Iterating a file's data extents and its physical extent map, in bounded
// native steps.
import type { FiemapExtent } from '../native/binding.js';
import { native } from '../native/binding.js';
import { isSystemError } from '../native/system-error.js';

const EXTENTS_PER_STEP = 4096;

/** Error codes meaning "this file cannot report holes": treat it as all data. */
const NO_HOLE_REPORTING = ['EINVAL', 'EOPNOTSUPP', 'ENOTSUP', 'ENOSYS', 'ESPIPE'];

/**
 * Yields the data extents of [0, size) as [offset, length], merging nothing
 * and skipping holes. A source that cannot report holes (a block device)
 * yields one extent covering everything.
 */
export async function* dataExtents(fd: number, size: number, path?: string): AsyncGenerator<[number, number]> {
  let position = 0;
  while (position < size) {
    let batch;
    try {
      batch = await native.dataExtents(fd, position, size, EXTENTS_PER_STEP, path);
    } catch (error) {
      if (position === 0 && isSystemError(error, ...NO_HOLE_REPORTING)) {
        yield [0, size];
        return;
      }
      throw error;
    }
    yield* batch.extents;
    position = batch.next;
  }
}

/** The whole FIEMAP of an open file, following FIEMAP_EXTENT_LAST. */
export async function fiemapExtents(fd: number, size: number, path?: string): Promise<FiemapExtent[]> {
  const { FIEMAP_EXTENT_LAST } = native.fileConstants;
  const all: FiemapExtent[] = [];
  let start = 0;
  while (start < size) {
    const batch = await native.fiemap(fd, start, size - start, EXTENTS_PER_STEP, true, path);
    if (batch.length === 0) break;
    all.push(...batch);
    const last = batch[batch.length - 1]!;
    if ((last.flags & FIEMAP_EXTENT_LAST) !== 0) break;
    start = last.logical + last.length;
  }
  return all;
}
