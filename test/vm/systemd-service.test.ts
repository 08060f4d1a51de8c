// volagentd under real systemd (PID 1 in the VM, the host root's systemd):
// the hardened unit as `volagent install-service` writes it, with a thin pool
// on vda/vdb. test/vm/guest/systemd-service.js runs inside as a oneshot
// service. The agent's sandbox (ProtectSystem=strict, DevicePolicy=closed,
// CapabilityBoundingSet=, ...) is only real here.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { expectGuestSubtests, repoRoot, runGuestTests, scratchDisks, skipUnlessVmLane } from '../helpers/vm.js';

const GUEST_SUBTESTS = [
  'installed as an operator does',
  'the socket starts the service',
  'under the hardening',
  'systemctl reload',
  'a frozen agent misses its watchdog pings',
  'systemctl stop',
];

if (!skipUnlessVmLane(t)) {
  t.setTimeout(600_000);
  t.test('volagentd as a hardened systemd service: socket activation, notify, thin pool, reload, watchdog restart, stop', async (t) => {
    const disks = await scratchDisks((fn) => t.teardown(fn), 'systemd-service', [64, 8]);
    const guest = path.relative(repoRoot, fileURLToPath(new URL('./guest/systemd-service.js', import.meta.url)));
    const { results, vm } = await runGuestTests([guest], { disks, init: 'systemd', modules: ['loop'], timeoutMs: 560_000, perFileTimeoutMs: 480_000 });
    const result = results[0]!;
    t.comment(`boot ${vm.timings.bootMs} ms`);
    expectGuestSubtests(t, result, GUEST_SUBTESTS, { console: vm.console.slice(-4000) });
  });
}
