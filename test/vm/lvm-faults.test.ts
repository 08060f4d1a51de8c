// The lvm backend's crash sweep, a full thin pool and failing disks on a real
// kernel: test/vm/guest/lvm-faults.js runs volagentd with an `lvm` pool in a
// volume group on dm-flakey devices over vda (128 MiB: the thin pool's data)
// and vdb (16 MiB: its metadata and the VG's), whose thin pool errors when full.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const GUEST_SUBTESTS = [
  'create', 'clone (a thin snapshot by lvcreate -s)', 'snapshot', 'resize', 'delete a volume', 'delete a snapshot',
  'upload an image (through a vt. temporary)', 'out of data space during an upload', 'no data of a deleted volume',
  "I/O errors on the thin pool's data PV, then its metadata PV",
];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(1_200_000);
  t.test('lvm pools: killed at the failpoints of seven operations; a full thin pool; no data of a deleted volume; I/O errors', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'lvm-faults', [128, 16]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/lvm-faults.js', import.meta.url)));
    const { results } = await runGuestTests([guest], { disks, modules: ['dm_flakey'], env: { DM_DISABLE_UDEV: '1' }, timeoutMs: 1_170_000, perFileTimeoutMs: 1_140_000 });
    expectGuestSubtests(t, results[0]!, GUEST_SUBTESTS);
  });
}
