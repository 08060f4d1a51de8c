"""The driver's bound on a copy: past ``volagent_copy_timeout`` it cancels
the agent's operation and nothing is left half-made.

The agent is started with the failpoint ``clone.copying=hold:FILE``: the
first copy with data stops after its first extent, for as long as FILE
exists (src/common/failpoints.ts), so the copy outlasts the 1 s bound
whatever the machine's speed. The pool is an ext4 loop filesystem: no
reflink, every clone a copy.
"""

import os
import time

from cinder import exception

from tests import base
from tests.base import GiB
from tests import volagent_fixture

AGENT = volagent_fixture.Agent(
    {'ext0': 'ext4'}, env={'VOLAGENT_FAILPOINTS': 'clone.copying=hold:{root}/pytests-held'},
    label='timeout')


def setUpModule():
    AGENT.start()
    base.DriverTestCase.agent = AGENT


def tearDownModule():
    AGENT.stop()


class CopyTimeoutTest(base.DriverTestCase):

    def test_a_copy_past_the_bound_is_cancelled_and_leaves_nothing(self):
        held = os.path.join(AGENT.root, 'pytests-held')
        pool = self.raw.get('/v1/pools')[0]
        self.assertEqual(('ext0', False, False), (pool['name'], pool['capabilities']['reflink'],
                                                  pool['capabilities']['constantTimeClone']))
        drv = self.make_driver(volagent_copy_timeout=1)
        data = base.pattern('timeout', 4 << 20)
        source = self.volume('ext0')
        drv.create_volume(source)
        self.write('ext0', source.name, data)

        clone = self.volume('ext0', size=2)
        started = time.monotonic()
        caught = self.assertRaises(exception.VolumeBackendAPIException,
                                   drv.create_cloned_volume, clone, source)
        elapsed = time.monotonic() - started
        self.assertIn('did not end within 1 s; it was cancelled and left nothing behind', str(caught))
        self.assertGreaterEqual(elapsed, 1)
        self.assertLess(elapsed, 15)
        self.assertTrue(os.path.exists(held), 'the copy never reached the held failpoint')
        os.unlink(held)

        self.assert_no_agent_volume(clone.name)
        operations = [o for o in self.raw.get('/v1/operations') if o['target'] == clone.name]
        self.assertEqual([('clone', 'cancelled')], [(o['kind'], o['state']) for o in operations])
        self.assertEqual(['%s.raw' % source.name],
                         sorted(os.listdir(os.path.dirname(AGENT.object_path('ext0', source.name)))))
        got = self.agent_volume(source.name)
        self.assertEqual(('available', GiB), (got['state'], got['sizeBytes']))
        self.assertEqual(data, self.read('ext0', source.name, len(data)))
        self.assertEqual({'clean': True, 'differences': []},
                         {k: v for k, v in self.raw.get('/v1/check').items() if k in ('clean', 'differences')})

        # The failpoint held once: the same clone again is a whole copy, waited for.
        drv.create_cloned_volume(clone, source)
        got = self.agent_volume(clone.name)
        self.assertEqual(('available', 2 * GiB, 'copy_file_range', {'volume': source.name}),
                         (got['state'], got['sizeBytes'], got['cloneMethod'], got['source']))
        self.assertEqual(data, self.read('ext0', clone.name, len(data)))
        operations = [o for o in self.raw.get('/v1/operations') if o['target'] == clone.name]
        self.assertEqual(['succeeded', 'cancelled'], [o['state'] for o in operations])
