// The addon's device-mapper layer on a real kernel: test/vm/guest/dm-ops.js
// in one VM boot with a 64 MiB data disk and an 8 MiB metadata disk.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { liveVmPids, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

if (!skipUnlessVmLane(t)) {
  t.setTimeout(240_000);
  t.test('device-mapper ioctls from the addon: thin-pool, thin volumes, snapshot, messages, errors', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'dm-test', [64, 8]); // vda data, vdb metadata
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/dm-ops.js', import.meta.url)));
    const { results } = await runGuestTests([guest], { disks, timeoutMs: 200_000 });
    const result = results[0]!;
    t.equal(result.exitCode, 0, 'the guest tap file passes', { output: result.output });
    t.match(result.output, /^# \{"total":\d+,"pass":\d+\}|^1\.\.\d+$/m, 'TAP output came back');
    t.notMatch(result.output, /^\s*not ok/m, 'no failing guest assertion');
    t.match(result.output, /the snapshot reads the first pattern/, 'the snapshot check ran');
    const plan = /^1\.\.(\d+)$/m.exec(result.output);
    t.equal(plan?.[1], '4', 'all four guest subtests ran');
    t.equal((result.output.match(/^ok \d+ - /gm) ?? []).length, 4, 'and passed');
    t.same(liveVmPids(), [], 'no VM left running');
  });
}
