// A new thin volume never shows data of a deleted one, on a real kernel:
// test/vm/guest/thin-no-stale-data.js runs volagentd with a thin pool inside
// one VM boot (vda data 32 MiB, so the pool's 512 blocks are reused within a
// few volumes; vdb metadata 8 MiB).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const GUEST_SUBTESTS = [
  'a deleted volume\'s blocks, reused by new volumes, read zeros where unwritten',
  'the blocks of a deleted volume, its snapshot and its clone, reused, read zeros where unwritten',
];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(600_000);
  t.test('thin pools: the data blocks of deleted volumes, snapshots and clones reach new volumes as zeros', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'thin-stale', [32, 8]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/thin-no-stale-data.js', import.meta.url)));
    const { results } = await runGuestTests([guest], { disks, timeoutMs: 560_000, perFileTimeoutMs: 520_000 });
    expectGuestSubtests(t, results[0]!, GUEST_SUBTESTS);
  });
}
