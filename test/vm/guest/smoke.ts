// Guest-only tap file: runs inside the VM via runGuestTests() (see
// test/vm/boot.test.ts), never directly on the host.
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';

import t from 'tap';

import { inVmGuest } from '../../helpers/vm.js';

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/boot.test.ts');
} else {
  t.test('device-mapper is present in the guest', async (t) => {
    t.equal(statSync('/dev/mapper/control').isCharacterDevice(), true, '/dev/mapper/control is a char device');
    t.match(readFileSync('/proc/misc', 'utf8'), /^\s*\d+ device-mapper$/m, '/proc/misc lists device-mapper');
    t.equal(existsSync('/sys/module/dm_thin_pool'), true, 'dm_thin_pool is loaded');
  });

  t.test('the guest root is a writable overlay over the host root', async (t) => {
    t.equal(process.env.VOLAGENT_IN_VM, '1');
    const mounts = readFileSync('/proc/self/mounts', 'utf8');
    t.match(mounts, /^overlay \/ overlay /m, 'root is overlay');
    t.notMatch(mounts, / \/tmp /, '/tmp is not a separate mount: the host /tmp (maybe the repo) stays visible');
    const probe = `/tmp/volagent-guest-probe-${process.pid}`;
    writeFileSync(probe, 'guest');
    t.equal(readFileSync(probe, 'utf8'), 'guest', '/tmp is writable (into the overlay)');
    rmSync(probe);
  });
}
