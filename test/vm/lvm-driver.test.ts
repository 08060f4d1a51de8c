// The Cinder driver on an lvm pool, on a real kernel: test/vm/guest/lvm-driver.js
// makes a volume group with a thin pool on vda (1 GiB), as Cinder's LVM driver
// has it, and runs the driver's Python tests of manage_existing
// (integrations/cinder/tests/lvm_driver.py) against volagentd there. The
// guest has no udev: lvm2 makes its device nodes itself (DM_DISABLE_UDEV).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const GUEST_SUBTESTS = [
  "the Cinder driver's manage_existing on an lvm pool (tests/lvm_driver.py)",
];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(900_000);
  t.test("the Cinder driver adopts an operator's LVs into an lvm pool", async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'lvm-driver', [1024]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/lvm-driver.js', import.meta.url)));
    const { results } = await runGuestTests([guest], { disks, env: { DM_DISABLE_UDEV: '1' }, timeoutMs: 850_000, perFileTimeoutMs: 800_000 });
    expectGuestSubtests(t, results[0]!, GUEST_SUBTESTS);
  });
}
