// Clones between a thin pool and a file pool, and reverts on a thin pool, on
// a real kernel: test/vm/guest/thin-cross-pool.js runs volagentd with both
// pools inside one VM boot (vda data 64 MiB, vdb metadata 8 MiB).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const GUEST_SUBTESTS = [
  'file to thin',
  'thin to file',
  'revert a thin volume',
  'kill -9 right after a revert',
];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(600_000);
  t.test('clones across a thin and a file pool; reverts on a thin pool, killed or not', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'thin-cross', [64, 8]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/thin-cross-pool.js', import.meta.url)));
    const { results } = await runGuestTests([guest], { disks, modules: ['loop'], timeoutMs: 560_000, perFileTimeoutMs: 520_000 });
    expectGuestSubtests(t, results[0]!, GUEST_SUBTESTS);
  });
}
