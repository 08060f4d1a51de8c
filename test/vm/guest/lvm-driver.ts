// Guest-only tap file: the Cinder driver adopting an operator's LVs into an
// `lvm` pool (Cinder's manage_existing), run by test/vm/lvm-driver.test.ts
// with one virtio disk (vda). It makes vda a volume group `cinder-volumes`
// with a thin pool `cinder-volumes-pool`, as an operator of Cinder's LVM
// driver has it, then runs the driver's Python module tests/lvm_driver.py
// (Debian's Python and Cinder, seen through the host's root) against a
// volagentd with an lvm pool there. Each Python test is one assertion.
import t from 'tap';

import { cinderMissing, reportUnittest, runDriverUnittest } from '../../helpers/driver-unittest.js';
import { lvmRun } from '../../helpers/lvm.js';
import { inVmGuest } from '../../helpers/vm.js';

const VG = 'cinder-volumes';
const THIN_POOL = 'cinder-volumes-pool';

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/lvm-driver.test.ts');
} else {
  t.setTimeout(780_000);
  const missing = cinderMissing();
  if (missing) {
    t.fail(`the driver's lvm tests cannot run here: ${missing}`);
  } else {
    lvmRun('pvcreate', ['-q', '/dev/vda']);
    lvmRun('vgcreate', ['-q', VG, '/dev/vda']);
    lvmRun('lvcreate', ['-q', '--type', 'thin-pool', '-L', '768m', '-c', '64k', '-Zy', '-n', THIN_POOL, VG]);
    await t.test("the Cinder driver's manage_existing on an lvm pool (tests/lvm_driver.py)", async (t) => {
      reportUnittest(t, await runDriverUnittest(['-v', 'tests.lvm_driver'], { VOLAGENT_TEST_LVM: `${VG}/${THIN_POOL}` }));
    });
  }
}
