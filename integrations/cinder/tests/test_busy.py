"""Cinder's busy exceptions from the agent's VOLUME_BUSY, provoked with a
copy held in the middle: a snapshot being read by a clone cannot be deleted
(SnapshotIsBusy), nor can a volume being created (VolumeIsBusy).

The agent holds its second copy with data (``clone.copying@2=hold:FILE``;
the first is the snapshot, a copy on this ext4 pool) until FILE is
removed, and waits 200 ms for a lock before answering VOLUME_BUSY.
"""

import os
import time

from cinder import exception

from tests import base
from tests.base import GiB, PROJECT_A
from tests import volagent_fixture

AGENT = volagent_fixture.Agent(
    {'ext0': 'ext4'}, env={'VOLAGENT_FAILPOINTS': 'clone.copying@2=hold:{root}/pytests-held'},
    lock_wait_ms=200, label='busy')


def setUpModule():
    AGENT.start()
    base.DriverTestCase.agent = AGENT


def tearDownModule():
    AGENT.stop()


class BusyTest(base.DriverTestCase):

    def test_deletes_during_a_held_clone_of_a_snapshot(self):
        held = os.path.join(AGENT.root, 'pytests-held')
        drv = self.make_driver()
        data = base.pattern('busy', 2 << 20)
        source = self.volume('ext0')
        drv.create_volume(source)
        self.write('ext0', source.name, data)
        snap = self.snapshot(source)
        drv.create_snapshot(snap)
        self.assertEqual('copy_file_range', self.raw.get(
            '/v1/volumes/%s/snapshots/%s' % (source.name, snap.name))['cloneMethod'])

        clone = self.volume('ext0')
        status, answer = self.raw.request('PUT', '/v1/volumes/%s' % clone.name, body={
            'pool': 'ext0', 'tenant': PROJECT_A, 'sizeBytes': GiB,
            'source': {'snapshot': snap.name}})
        self.assertEqual(202, status)
        operation = answer['operation']['id']
        deadline = time.monotonic() + 20
        while not os.path.exists(held):
            self.assertLess(time.monotonic(), deadline, 'the clone never reached the held failpoint')
            time.sleep(0.02)

        self.assertRaises(exception.SnapshotIsBusy, drv.delete_snapshot, snap)
        self.assertEqual('available', self.raw.get(
            '/v1/volumes/%s/snapshots/%s' % (source.name, snap.name))['state'])
        self.assertRaises(exception.VolumeIsBusy, drv.delete_volume, clone)
        self.assertEqual('creating', self.agent_volume(clone.name)['state'])
        self.assertRaises(exception.VolumeIsBusy, drv.delete_volume, source)  # it has a snapshot
        self.assertEqual('available', self.agent_volume(source.name)['state'])

        status, cancelled = self.raw.request('DELETE', '/v1/operations/%s' % operation)
        self.assertEqual((200, 'cancelled'), (status, cancelled['state']))
        os.unlink(held)
        self.assert_no_agent_volume(clone.name)
        drv.delete_snapshot(snap)
        self.assertEqual([], self.raw.get('/v1/volumes/%s/snapshots' % source.name))
        drv.delete_volume(source)
        self.assert_no_agent_volume(source.name)
        self.assertEqual([], os.listdir(os.path.dirname(AGENT.object_path('ext0', source.name))))
