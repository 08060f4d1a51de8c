// Power loss and I/O errors under a file pool on a real kernel:
// test/vm/guest/power-loss.js runs volagentd on XFS over dm-flakey (vda,
// 512 MiB) inside one VM boot: several power cuts at random moments (writes
// dropped), a cut right after a clone's answer (its result row not yet
// durable), then every write failing (EIO).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const ROUNDS = 4;
const GUEST_SUBTESTS = [
  ...Array.from({ length: ROUNDS }, (_, i) => `power loss ${i + 1}`),
  'a clone answered just before the cut',
  'I/O errors',
];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(900_000);
  t.test('power loss and I/O errors under a file pool on XFS over dm-flakey', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'power-loss', [512]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/power-loss.js', import.meta.url)));
    const { results } = await runGuestTests([guest], {
      disks, modules: ['xfs', 'dm_flakey'], env: { VOLAGENT_POWER_LOSS_ROUNDS: String(ROUNDS) }, timeoutMs: 840_000, perFileTimeoutMs: 800_000,
    });
    expectGuestSubtests(t, results[0]!, GUEST_SUBTESTS);
  });
}
