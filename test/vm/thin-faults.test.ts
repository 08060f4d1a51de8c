// A thin pool's crash sweep and I/O errors on a real kernel:
// test/vm/guest/thin-faults.js runs volagentd with a thin pool whose data
// (vda, 64 MiB) and metadata (vdb, 8 MiB) devices are dm-flakey devices.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const GUEST_SUBTESTS = ['create', 'clone (a thin snapshot)', 'snapshot', 'resize', 'delete a volume', 'delete a snapshot', 'out of data space during an upload', 'I/O errors on the data device'];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(1_200_000);
  t.test('thin pools: killed at every thin failpoint of six operations; I/O errors on data and metadata', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'thin-faults', [64, 8]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/thin-faults.js', import.meta.url)));
    const { results } = await runGuestTests([guest], { disks, modules: ['dm_flakey'], timeoutMs: 1_140_000, perFileTimeoutMs: 1_110_000 });
    expectGuestSubtests(t, results[0]!, GUEST_SUBTESTS);
  });
}
