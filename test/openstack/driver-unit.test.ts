// The Cinder driver's own unit tests (integrations/cinder/tests: every
// test*.py, over file pools), run by Debian's Python with Debian's Cinder, as
// cinder-volume runs the driver. Each of its tests is reported here by name,
// so a failure or a skip in Python is a failure of this lane.
import t from 'tap';

import { reportUnittest, runDriverUnittest } from '../helpers/driver-unittest.js';
import { stackMissing } from '../helpers/openstack.js';

const missing = stackMissing();
if (missing) {
  t.fail(`the driver's unit tests cannot run here: ${missing}`);
} else {
  reportUnittest(t, await runDriverUnittest(['discover', '-s', 'tests', '-t', '.', '-v']));
}
