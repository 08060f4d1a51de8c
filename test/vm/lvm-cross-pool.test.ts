// The lvm backend beside a file pool on a real kernel: test/vm/guest/lvm-cross-pool.js
// makes a volume group with a thin pool on vda (256 MiB) and runs volagentd
// with an `lvm` pool (image-volume cache of two entries) and a `file` pool:
// revert (and kills between its steps), clones across the pools, the cache;
// then pulls over nbds between it and a second volagentd with a file pool,
// and pulls into the lvm pool broken by a kill of either agent.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const GUEST_SUBTESTS = [
  'revert an lvm volume',
  'kill -9 at lvm.revert-made',
  'kill -9 at lvm.revert-renamed-old',
  'clones across pools',
  'the image-volume cache of an lvm pool',
  'an lvm volume pulled into a file pool over TLS',
  'a file volume pulled into the lvm pool',
  'the destination killed mid-pull',
  'the source killed mid-pull',
];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(900_000);
  t.test('lvm pools beside a file pool: revert, clones across pools, the image-volume cache, pulls over nbds', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'lvm-cross', [256]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/lvm-cross-pool.js', import.meta.url)));
    const { results } = await runGuestTests([guest], { disks, env: { DM_DISABLE_UDEV: '1' }, timeoutMs: 850_000, perFileTimeoutMs: 800_000 });
    expectGuestSubtests(t, results[0]!, GUEST_SUBTESTS);
  });
}
