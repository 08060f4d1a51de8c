// The clone method the engine documents for the filesystem a test's files
// are on (README: reflink on XFS and btrfs, copy_file_range over the data
// extents on any other filesystem, read/write only where the kernel refuses
// copy_file_range), so a test asserts the one method, not any of three.
import { statfs } from 'node:fs/promises';

import type { CloneMethod } from '../../src/clone/clone-file.js';

/** statfs(2) f_type magic numbers (linux/magic.h) of the filesystems tests run on. */
const FILESYSTEMS: ReadonlyMap<number, { name: string; method: CloneMethod }> = new Map([
  [0xef53, { name: 'ext4', method: 'copy_file_range' }],
  [0x01021994, { name: 'tmpfs', method: 'copy_file_range' }],
  [0x58465342, { name: 'xfs', method: 'reflink' }],
  [0x9123683e, { name: 'btrfs', method: 'reflink' }],
]);

/** The method a clone within `dir`'s filesystem uses; throws for a filesystem the table does not know. */
export async function documentedCloneMethod(dir: string): Promise<CloneMethod> {
  const { type } = await statfs(dir);
  const known = FILESYSTEMS.get(type);
  if (!known) throw new Error(`${dir} is on a filesystem (statfs type 0x${type.toString(16)}) whose clone method the tests do not know; add it to test/helpers/clone-method.ts`);
  return known.method;
}
