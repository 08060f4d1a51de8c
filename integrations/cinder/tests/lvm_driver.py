"""VolagentDriver on an ``lvm`` pool: Cinder's ``manage_existing`` of the LVs
an operator's Cinder LVM driver left in the volume group.

Needs a kernel with device-mapper and a VG with a thin pool, named by
``VOLAGENT_TEST_LVM=VG/THIN_POOL``: the VM lane's test/vm/lvm-driver.test.ts
makes them on a virtio disk and runs this module in its guest with
``python3 -m unittest -v tests.lvm_driver``. Its name does not match
``test*.py``, so the openstack lane's ``unittest discover`` (no
device-mapper there) does not collect it.

The LVs "of the other owner" are made here with lvm2's commands as Cinder's
LVM driver makes its volumes (``lvcreate -V SIZE -T VG/POOL -n
volume-<id>``); every check reads lvm2's own report and the LV's bytes.
"""

import json
import os
import subprocess
import uuid

from cinder import exception

from tests import base
from tests.base import GiB, PROJECT_A, PROJECT_B
from tests import volagent_fixture

MiB = 1024 ** 2
POOL = 'lvm0'
KIND = 'lvm:%s' % os.environ.get('VOLAGENT_TEST_LVM', '')
VG, THIN_POOL = volagent_fixture.lvm_pool(KIND)
AGENT = volagent_fixture.Agent({POOL: KIND}, label='lvm-driver')


def setUpModule():
    if not VG or not THIN_POOL:
        raise RuntimeError('VOLAGENT_TEST_LVM=VG/THIN_POOL names no thin pool: '
                           'test/vm/lvm-driver.test.ts runs this module')
    AGENT.start()
    base.DriverTestCase.agent = AGENT


def tearDownModule():
    AGENT.stop()


def _lvm(*argv):
    env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS='1')
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError('%s exited %d: %s' % (' '.join(argv), done.returncode, done.stderr))
    return done.stdout


def _lvs():
    """Every LV of the VG, by name: size in bytes, tags (a set), pool."""
    report = json.loads(_lvm('lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix',
                             '-o', 'lv_name,lv_size,lv_tags,pool_lv', VG))
    return {row['lv_name']: {'size': int(row['lv_size']),
                             'tags': set(filter(None, row['lv_tags'].split(','))),
                             'pool': row['pool_lv']}
            for row in report['report'][0]['lv']}


def _foreign_lv(size_bytes, tags=('cinder.owner',), thin=True):
    """A thin LV as Cinder's LVM driver names its volumes, made by lvm2 by hand."""
    name = 'volume-%s' % uuid.uuid4()
    size = '%db' % size_bytes
    if thin:
        _lvm('lvcreate', '-q', '-V', size, '-T', '%s/%s' % (VG, THIN_POOL), '-n', name,
             *[a for tag in tags for a in ('--addtag', tag)])
    else:
        _lvm('lvcreate', '-q', '-L', size, '-n', name, VG)
    return name


def _write(device, offset, data):
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(device, offset, length):
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


class LvmDriverTest(base.DriverTestCase):

    def setUp(self):
        super().setUp()
        self.driver = self.make_driver()

    def manageable(self):
        entries = self.driver.get_manageable_volumes([], None, 1000, 0, ['size'], ['asc'])
        return {e['reference']['source-name']: e for e in entries}

    def assert_untouched(self, name, before):
        after = _lvs()
        self.assertIn(name, after, 'the LV keeps its name')
        self.assertEqual(before[name], after[name], 'the LV keeps its size and tags')
        self.assertEqual([], [n for n in after if n.startswith('va.%s.' % POOL) and n not in before],
                         'the agent made no LV')

    def test_manageable_volumes_are_the_thin_pools_lvs_the_agent_did_not_make(self):
        free = _foreign_lv(GiB + 512 * MiB)
        held = _foreign_lv(GiB)
        outside = _foreign_lv(8 * MiB, thin=False)
        own = self.volume(POOL)
        self.driver.create_volume(own)
        fd = os.open('/dev/%s/%s' % (VG, held), os.O_RDONLY)
        try:
            listed = self.manageable()
        finally:
            os.close(fd)
        self.assertEqual({'reference': {'source-name': free}, 'size': 2, 'cinder_id': None,
                          'safe_to_manage': True, 'reason_not_safe': None,
                          'extra_info': 'pool %s' % POOL}, listed[free])
        self.assertEqual((False, 'held open', 1),
                         (listed[held]['safe_to_manage'], listed[held]['reason_not_safe'],
                          listed[held]['size']))
        self.assertNotIn(outside, listed, 'a linear LV is not in the thin pool')
        self.assertNotIn(THIN_POOL, listed)
        self.assertEqual([], [n for n in listed if n.startswith('va.')], "the agent's own LVs are not listed")
        self.driver.delete_volume(own)

    def test_manage_existing_adopts_a_cinder_lvm_volume_with_its_data(self):
        name = _foreign_lv(GiB + 512 * MiB)
        head, tail = base.pattern('head', MiB), base.pattern('tail', MiB)
        _write('/dev/%s/%s' % (VG, name), 0, head)
        _write('/dev/%s/%s' % (VG, name), GiB + 511 * MiB, tail)
        ref = {'source-name': name}
        volume = self.volume(POOL, size=2)
        self.assertEqual(2, self.driver.manage_existing_get_size(volume, ref))
        self.assertEqual({'provider_id': None}, self.driver.manage_existing(volume, ref))

        lvs = _lvs()
        adopted = 'va.%s.%s' % (POOL, volume.name)
        self.assertNotIn(name, lvs, 'the LV was renamed')
        self.assertEqual({'size': 2 * GiB, 'pool': THIN_POOL,
                          'tags': {'cinder.owner', 'volagent', 'volagent.pool.%s' % POOL}},
                         lvs[adopted], 'grown to the whole GiB Cinder records, its own tag kept')
        got = self.agent_volume(volume.name)
        self.assertEqual((PROJECT_A, POOL, 2 * GiB, 'available', 'adopt', {'unmanaged': name}),
                         (got['tenant'], got['pool'], got['sizeBytes'], got['state'],
                          got['cloneMethod'], got['source']))
        self.assertEqual(head, self.read(POOL, volume.name, MiB))
        self.assertEqual(tail, self.read(POOL, volume.name, MiB, GiB + 511 * MiB))
        self.assertEqual(bytes(MiB), self.read(POOL, volume.name, MiB, GiB + 512 * MiB),
                         'the grown part reads zeros')
        self.assertNotIn(name, self.manageable(), 'an adopted LV is no longer manageable')

        # From here it is a volume like the others: a snapshot, a clone of it, delete.
        snapshot = self.snapshot(volume)
        self.driver.create_snapshot(snapshot)
        clone = self.volume(POOL, size=2)
        self.driver.create_volume_from_snapshot(clone, snapshot)
        self.assertEqual(head, self.read(POOL, clone.name, MiB))
        self.assertEqual(tail, self.read(POOL, clone.name, MiB, GiB + 511 * MiB))
        self.driver.delete_volume(clone)
        self.driver.delete_snapshot(snapshot)
        self.driver.delete_volume(volume)
        self.assert_no_agent_volume(volume.name)
        self.assertEqual([], [n for n in _lvs() if volume.name in n or n == name], 'the LV is removed')

    def test_manage_existing_in_another_project_and_unmanage_keeps_the_lv(self):
        name = _foreign_lv(GiB)
        volume = self.volume(POOL, project=PROJECT_B)
        self.assertEqual({'provider_id': None}, self.driver.manage_existing(volume, {'source-name': name}))
        self.assertEqual(PROJECT_B, self.agent_volume(volume.name)['tenant'])
        self.driver.unmanage(volume)
        # Unmanaged, it is an agent volume Cinder does not know: managed again by its agent name.
        lv = 'va.%s.%s' % (POOL, volume.name)
        self.assertIn(lv, _lvs())
        again = self.volume(POOL, project=PROJECT_B)
        self.assertEqual({'provider_id': volume.name},
                         self.driver.manage_existing(again, {'source-name': volume.name}))
        self.assertIn(lv, _lvs(), 'managing an agent volume renames nothing')
        again.provider_id = volume.name
        self.driver.delete_volume(again)
        self.assertNotIn(lv, _lvs())

    def test_manage_existing_refuses_an_lv_held_open_and_changes_nothing(self):
        name = _foreign_lv(GiB)
        before = _lvs()
        volume = self.volume(POOL)
        fd = os.open('/dev/%s/%s' % (VG, name), os.O_RDONLY)
        try:
            refused = self.assertRaises(exception.ManageExistingInvalidReference,
                                        self.driver.manage_existing, volume, {'source-name': name})
        finally:
            os.close(fd)
        self.assertIn('%s in pool %s cannot be adopted: held open' % (name, POOL), str(refused))
        self.assert_untouched(name, before)
        self.assert_no_agent_volume(volume.name)
        # Closed, the same LV is adopted.
        self.driver.manage_existing(volume, {'source-name': name})
        self.assertEqual('adopt', self.agent_volume(volume.name)['cloneMethod'])
        self.driver.delete_volume(volume)

    def test_manage_existing_refuses_what_is_not_a_thin_lv_of_the_pool(self):
        linear = _foreign_lv(8 * MiB, thin=False)
        read_only = _foreign_lv(GiB)
        _lvm('lvchange', '-q', '-p', 'r', '%s/%s' % (VG, read_only))
        before = _lvs()
        cases = [(linear, 'not a thin LV of %s/%s' % (VG, THIN_POOL)),
                 (read_only, 'read-only'),
                 (THIN_POOL, 'holds no %s it could adopt' % THIN_POOL),
                 ('volume-absent', 'holds no volume-absent it could adopt')]
        for name, why in cases:
            with self.subTest(name=name):
                volume = self.volume(POOL)
                for call in (self.driver.manage_existing_get_size, self.driver.manage_existing):
                    refused = self.assertRaises(exception.ManageExistingInvalidReference,
                                                call, volume, {'source-name': name})
                    self.assertIn(why, str(refused))
                self.assert_no_agent_volume(volume.name)
        self.assertEqual(before, _lvs(), 'no LV changed')
