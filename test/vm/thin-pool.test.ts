// The thin backend end to end on a real kernel: test/vm/guest/thin-agent.js
// runs volagentd with a thin pool inside one VM boot (vda data 64 MiB, vdb
// metadata 8 MiB; vdc + vdd for another pool's metadata, which must be refused).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const GUEST_SUBTESTS = [
  'bad devices are refused',
  'format: the pool is made',
  'volumes: create, clone keeps the first pattern',
  'bad input on a thin pool',
  'images on a thin pool',
  'exports of thin volumes',
  'block status of a thin export',
  'restart: the pool reopens',
  'the devices gone',
  'kill -9 at thin.after-message during a clone',
  'kill -9 at thin.before-commit during a clone',
  'kill -9 at thin.after-message during a delete',
  'kill -9 at thin.after-begin during a create',
  'fill the pool',
  'files as devices (development)',
];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(600_000);
  t.test('thin pools through volagentd: format, clone, images, restart, crash recovery, full pool, bad input', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'thin-agent', [64, 8, 16, 8]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/thin-agent.js', import.meta.url)));
    const { results } = await runGuestTests([guest], { disks, modules: ['loop'], timeoutMs: 560_000, perFileTimeoutMs: 520_000 });
    const result = results[0]!;
    expectGuestSubtests(t, result, GUEST_SUBTESTS);
  });
}
