// Volumes pulled into and out of a thin pool on a real kernel (issue 21):
// test/vm/guest/thin-remote-pull.js runs two volagentd inside one VM boot,
// one with a thin pool (vda data 64 MiB, vdb metadata 8 MiB) and one with a
// file pool, serving NBD over TLS-PSK on 127.0.0.1.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const GUEST_SUBTESTS = [
  'a thin volume pulled into the file pool',
  'a file volume pulled into the thin pool',
  'the destination killed mid-pull',
  'the source killed mid-pull',
];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(600_000);
  t.test('pulls out of and into a thin pool over nbds; kills of either agent mid-pull leave nothing', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'thin-pull', [64, 8]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/thin-remote-pull.js', import.meta.url)));
    const { results } = await runGuestTests([guest], { disks, timeoutMs: 560_000, perFileTimeoutMs: 520_000 });
    expectGuestSubtests(t, results[0]!, GUEST_SUBTESTS, { durationMs: results[0]!.durationMs });
    t.comment(`guest file: ${results[0]!.durationMs} ms`);
  });
}
