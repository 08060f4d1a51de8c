// The lvm backend end to end on a real kernel: test/vm/guest/lvm-agent.js
// makes a volume group with a thin pool on vda (512 MiB), in which another
// owner's LVs already live, and runs volagentd with an `lvm` pool in it.
// The guest has no udev: lvm2 makes its device nodes itself (DM_DISABLE_UDEV).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const GUEST_SUBTESTS = [
  'refused: a VG or thin pool that is not there',
  'open: the pool is reported',
  'volumes: create, clone keeps the first pattern',
  'bad input and foreign names',
  'images: upload, download, create-from-image',
  'block status of an lvm export answers from the thin pool\'s mapping',
  'restart: the pool reopens',
  'kill -9 at lvm.object-made during a create',
  'kill -9 at lvm.object-made during a clone',
  'kill -9 at lvm.temporary-made during an upload',
  'kill -9 at lvm.temporary-written during an upload',
  'adoption: the thin LVs the agent did not make',
  'two adoptions of one LV at once',
  'kill -9 at lvm.adopt-tagged during an adoption',
  'kill -9 at lvm.adopt-renamed during an adoption',
  'kill -9 at adopt.adopted during an adoption',
  "an LV removed behind the agent's back",
  "an LV made behind the agent's back",
  'delete everything',
];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(1_200_000);
  t.test('lvm pools through volagentd: an existing VG shared with another owner, clones, images, restart, crash sweep, check', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'lvm-agent', [512]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/lvm-agent.js', import.meta.url)));
    const { results } = await runGuestTests([guest], { disks, env: { DM_DISABLE_UDEV: '1' }, timeoutMs: 1_150_000, perFileTimeoutMs: 1_100_000 });
    const result = results[0]!;
    expectGuestSubtests(t, result, GUEST_SUBTESTS);
  });
}
