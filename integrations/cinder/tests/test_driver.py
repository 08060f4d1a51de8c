"""VolagentDriver against a real volagentd with three file pools: ``tmp0``
in a plain directory under /tmp (reflink or copy, as its filesystem allows:
the agent's ``capabilities.reflink`` says which), and ``xfs0`` and ``xfs1``
in two directories of one XFS loop filesystem (reflink, also between them).
Every call is checked against the agent's state and the pools' files.

The tests of revert, transfer (also manage of another project's volume) and
clones across pools need the agent routes of issue 20 (``POST
/v1/volumes/{id}/revert``, ``POST /v1/volumes/{id}/transfer``, a ``PUT``
with another pool); they fail against an agent without them.
"""

import errno
import os
import stat
import subprocess
import time

from cinder import exception
from cinder.tests.unit import utils as cinder_utils

from tests import base
from tests.base import GiB, HOST, PROJECT_A, PROJECT_B
from tests import volagent_fixture
from volagent_cinder import client as agent_client

AGENT = volagent_fixture.Agent({'tmp0': 'dir', 'xfs0': 'xfs', 'xfs1': 'xfs@xfs0'},
                               label='driver')
POOLS = ('tmp0', 'xfs0')


def setUpModule():
    AGENT.start()
    base.DriverTestCase.agent = AGENT


def tearDownModule():
    AGENT.stop()


def _expected_clone_method(pool):
    return 'reflink' if pool['capabilities']['reflink'] else 'copy_file_range'


def _fs_type(path):
    return subprocess.run(['stat', '--file-system', '--format', '%T', path], stdout=subprocess.PIPE,
                          text=True, check=True).stdout.strip()


def _cross_pool_method(source, target, pools):
    """The agent's method for a clone between two file pools (its docs/api.md, "Volumes")."""
    a, b = AGENT.pool_paths[source], AGENT.pool_paths[target]
    if os.stat(a).st_dev == os.stat(b).st_dev and pools[source]['capabilities']['reflink']:
        return 'reflink'
    # Since Linux 5.19 copy_file_range between two filesystems needs them of one
    # type (else EXDEV, and the agent reads and writes).
    return 'copy_file_range' if _fs_type(a) == _fs_type(b) else 'read_write'


def _loop_devices_of(path):
    listing = subprocess.run(['losetup', '--list', '--noheadings', '--output', 'NAME,BACK-FILE'],
                             stdout=subprocess.PIPE, text=True, check=True).stdout
    return [line.split(None, 1)[0] for line in listing.splitlines()
            if line.split(None, 1)[1:] == [path]]


def _getro(device):
    return subprocess.run(['blockdev', '--getro', device], stdout=subprocess.PIPE,
                          text=True, check=True).stdout.strip()


class VolagentDriverTest(base.DriverTestCase):

    def setUp(self):
        super().setUp()
        self.driver = self.make_driver()
        self.pools = {p['name']: p for p in self.raw.get('/v1/pools')}

    def create(self, pool, size=1, project=PROJECT_A, data=None, **updates):
        volume = self.volume(pool, size=size, project=project, **updates)
        self.driver.create_volume(volume)
        if data is not None:
            self.write(pool, volume.name, data)
        return volume

    # --- setup ---

    def test_setup_checks_the_agent(self):
        self.driver.check_for_setup_error()
        self.assertEqual(1, self.raw.get('/v1/version')['api'])

    def test_missing_socket_is_a_backend_error_naming_the_socket(self):
        missing = os.path.join(AGENT.root, 'absent', 'control.sock')
        drv = self.make_driver(socket=missing)
        caught = self.assertRaises(exception.VolumeBackendAPIException,
                                   drv.check_for_setup_error)
        self.assertIn(missing, str(caught))
        volume = self.volume('tmp0')
        caught = self.assertRaises(exception.VolumeBackendAPIException,
                                   drv.create_volume, volume)
        self.assertIn(missing, str(caught))
        self.assert_no_agent_volume(volume.name)

    # --- stats ---

    def test_volume_stats_one_cinder_pool_per_agent_pool(self):
        big = self.create('xfs0', size=3)
        self.override_config('max_over_subscription_ratio', '7.5', group=base.BACKEND)
        self.override_config('reserved_percentage', 4, group=base.BACKEND)
        stats = self.driver.get_volume_stats(refresh=True)
        agent_pools = {p['name']: p for p in self.raw.get('/v1/pools')}
        volumes = self.raw.get('/v1/volumes')
        self.assertEqual(base.BACKEND, stats['volume_backend_name'])
        self.assertEqual('1.0.0', stats['driver_version'])
        self.assertEqual('local', stats['storage_protocol'])
        self.assertEqual('volagent', stats['vendor_name'])
        self.assertEqual(['tmp0', 'xfs0', 'xfs1'], sorted(p['pool_name'] for p in stats['pools']))
        for entry in stats['pools']:
            pool = agent_pools[entry['pool_name']]
            provisioned = sum(v['sizeBytes'] for v in volumes if v['pool'] == pool['name'])
            self.assertEqual(round(pool['capacity']['totalBytes'] / GiB, 2), entry['total_capacity_gb'])
            self.assertEqual(round(provisioned / GiB, 2), entry['provisioned_capacity_gb'])
            self.assertTrue(entry['thin_provisioning_support'])
            self.assertFalse(entry['thick_provisioning_support'])
            self.assertEqual(7.5, entry['max_over_subscription_ratio'])
            self.assertEqual(4, entry['reserved_percentage'])
            self.assertEqual(pool['capabilities']['reflink'], entry['volagent_reflink'])
            self.assertNotIn('backend_state', entry)
        for name in ('xfs0', 'xfs1'):
            xfs = next(e for e in stats['pools'] if e['pool_name'] == name)
            # The XFS pools are on this test's own filesystem: its free space is exact.
            self.assertEqual(round(agent_pools[name]['capacity']['freeBytes'] / GiB, 2),
                             xfs['free_capacity_gb'])
            self.assertTrue(xfs['volagent_reflink'])
        self.assertGreaterEqual(next(e for e in stats['pools'] if e['pool_name'] == 'xfs0')[
            'provisioned_capacity_gb'], 3)
        # /tmp is shared with other writers: its free space is only near the agent's.
        tmp = next(e for e in stats['pools'] if e['pool_name'] == 'tmp0')
        self.assertAlmostEqual(agent_pools['tmp0']['capacity']['freeBytes'] / GiB,
                               tmp['free_capacity_gb'], delta=1)
        self.driver.delete_volume(big)

    def test_volume_stats_default_ratio_and_cache(self):
        stats = self.driver.get_volume_stats(refresh=True)
        self.assertEqual([20.0, 20.0, 20.0], [p['max_over_subscription_ratio'] for p in stats['pools']])
        self.assertIs(stats, self.driver.get_volume_stats())

    # --- volumes ---

    def test_create_volume_in_its_pool_for_its_project(self):
        for pool in POOLS:
            with self.subTest(pool=pool):
                volume = self.volume(pool, size=2, project=PROJECT_B)
                self.assertIsNone(self.driver.create_volume(volume))
                got = self.agent_volume(volume.name)
                self.assertEqual((pool, PROJECT_B, 2 * GiB, 'available', 'create', 'volume'),
                                 (got['pool'], got['tenant'], got['sizeBytes'], got['state'],
                                  got['cloneMethod'], got['kind']))
                self.assertEqual(2 * GiB, os.stat(AGENT.object_path(pool, volume.name)).st_size)

    def test_delete_volume_and_again(self):
        for pool in POOLS:
            with self.subTest(pool=pool):
                volume = self.create(pool, data=b'x' * 4096)
                self.driver.delete_volume(volume)
                self.assert_no_agent_volume(volume.name)
                self.assertFalse(os.path.exists(AGENT.object_path(pool, volume.name)))
                self.driver.delete_volume(volume)  # absent: done
                self.assert_no_agent_volume(volume.name)

    def test_delete_volume_with_snapshots_is_busy(self):
        volume = self.create('xfs0')
        snap = self.snapshot(volume)
        self.driver.create_snapshot(snap)
        self.assertRaises(exception.VolumeIsBusy, self.driver.delete_volume, volume)
        self.assertEqual('available', self.agent_volume(volume.name)['state'])
        self.driver.delete_snapshot(snap)
        self.driver.delete_volume(volume)
        self.assert_no_agent_volume(volume.name)

    def test_extend_volume(self):
        for pool in POOLS:
            with self.subTest(pool=pool):
                data = base.pattern('extend', 1 << 20)
                volume = self.create(pool, data=data)
                self.driver.extend_volume(volume, 3)
                self.assertEqual(3 * GiB, self.agent_volume(volume.name)['sizeBytes'])
                self.assertEqual(3 * GiB, os.stat(AGENT.object_path(pool, volume.name)).st_size)
                self.assertEqual(data, self.read(pool, volume.name, len(data)))

    def test_create_cloned_volume_same_pool_grows_bytes_equal(self):
        for pool in POOLS:
            with self.subTest(pool=pool):
                data = base.pattern('clone-' + pool, 3 << 20)
                source = self.create(pool, data=data)
                self.write(pool, source.name, data[:65536], GiB - 65536)  # the last bytes too
                clone = self.volume(pool, size=2)
                self.driver.create_cloned_volume(clone, source)
                got = self.agent_volume(clone.name)
                self.assertEqual((pool, PROJECT_A, 2 * GiB, {'volume': source.name},
                                  _expected_clone_method(self.pools[pool]), 'available'),
                                 (got['pool'], got['tenant'], got['sizeBytes'], got['source'],
                                  got['cloneMethod'], got['state']))
                self.assertEqual(data, self.read(pool, clone.name, len(data)))
                self.assertEqual(data[:65536], self.read(pool, clone.name, 65536, GiB - 65536))
                self.assertEqual(bytes(65536), self.read(pool, clone.name, 65536, GiB))
                # Independent of its source.
                self.write(pool, source.name, b'\xff' * 4096)
                self.assertEqual(data[:4096], self.read(pool, clone.name, 4096))
                self.driver.delete_volume(source)
                self.assertEqual(data[4096:8192], self.read(pool, clone.name, 4096, 4096))

    def test_create_cloned_volume_same_size(self):
        source = self.create('xfs0', size=2, data=base.pattern('same', 8192))
        clone = self.volume('xfs0', size=2)
        self.driver.create_cloned_volume(clone, source)
        self.assertEqual(2 * GiB, self.agent_volume(clone.name)['sizeBytes'])

    def test_create_cloned_volume_into_another_pool(self):
        """Needs the agent's clones across pools (issue 20)."""
        for source_pool, target_pool in (('tmp0', 'xfs0'), ('xfs0', 'tmp0'), ('xfs0', 'xfs1')):
            with self.subTest(source=source_pool, target=target_pool):
                data = base.pattern('cross-' + source_pool, 2 << 20)
                source = self.create(source_pool, data=data)
                clone = self.volume(target_pool, size=2, project=PROJECT_B)
                self.driver.create_cloned_volume(clone, source)
                got = self.agent_volume(clone.name)
                self.assertEqual((target_pool, PROJECT_B, 2 * GiB, {'volume': source.name}, 'available',
                                  _cross_pool_method(source_pool, target_pool, self.pools)),
                                 (got['pool'], got['tenant'], got['sizeBytes'], got['source'], got['state'],
                                  got['cloneMethod']))
                self.assertEqual((source_pool, 'available'),
                                 (self.agent_volume(source.name)['pool'], self.agent_volume(source.name)['state']))
                self.assertEqual(data, self.read(target_pool, clone.name, len(data)))
                self.assertEqual(bytes(4096), self.read(target_pool, clone.name, 4096, GiB))

    # --- snapshots ---

    def test_snapshot_create_from_delete(self):
        for pool in POOLS:
            with self.subTest(pool=pool):
                before = base.pattern('before-' + pool, 1 << 20)
                volume = self.create(pool, data=before)
                snap = self.snapshot(volume)
                self.driver.create_snapshot(snap)
                got = self.raw.get('/v1/volumes/%s/snapshots/%s' % (volume.name, snap.name))
                self.assertEqual((volume.name, pool, GiB, 'available', True,
                                  _expected_clone_method(self.pools[pool])),
                                 (got['volume'], got['pool'], got['sizeBytes'], got['state'],
                                  got['readOnly'], got['cloneMethod']))
                self.write(pool, volume.name, base.pattern('after', 1 << 20))

                restored = self.volume(pool, size=2, project=PROJECT_B)
                self.driver.create_volume_from_snapshot(restored, snap)
                got = self.agent_volume(restored.name)
                self.assertEqual((pool, PROJECT_B, 2 * GiB, {'snapshot': snap.name}, 'available'),
                                 (got['pool'], got['tenant'], got['sizeBytes'], got['source'], got['state']))
                self.assertEqual(before, self.read(pool, restored.name, len(before)))

                self.driver.delete_snapshot(snap)
                self.assertEqual([], self.raw.get('/v1/volumes/%s/snapshots' % volume.name))
                self.assertFalse(os.path.exists(AGENT.object_path(pool, '%s@%s' % (volume.name, snap.name))))
                self.driver.delete_snapshot(snap)  # absent: done
                self.driver.delete_volume(volume)
                self.driver.delete_snapshot(snap)  # its volume gone: done
                self.assertEqual(before, self.read(pool, restored.name, len(before)))

    def test_revert_to_snapshot(self):
        """Needs POST /v1/volumes/{id}/revert (issue 20)."""
        for pool in POOLS:
            with self.subTest(pool=pool):
                before = base.pattern('revert-' + pool, 2 << 20)
                volume = self.create(pool, data=before)
                snap = self.snapshot(volume)
                self.driver.create_snapshot(snap)
                self.write(pool, volume.name, base.pattern('later', 3 << 20))
                self.driver.revert_to_snapshot(self.ctx, volume, snap)
                self.assertEqual(before + bytes(1 << 20), self.read(pool, volume.name, 3 << 20))
                got = self.agent_volume(volume.name)
                self.assertEqual((GiB, 'available'), (got['sizeBytes'], got['state']))
                self.assertEqual(snap.name, self.raw.get(
                    '/v1/volumes/%s/snapshots/%s' % (volume.name, snap.name))['id'])

    # --- transfer ---

    def test_accept_transfer_moves_the_agent_volume(self):
        """Needs POST /v1/volumes/{id}/transfer (issue 20)."""
        volume = self.create('xfs0', data=b't' * 4096)
        self.driver.accept_transfer(self.ctx, volume, 'new-user', PROJECT_B)
        self.assertEqual(PROJECT_B, self.agent_volume(volume.name)['tenant'])
        self.assertEqual([volume.name], [v['id'] for v in self.raw.get(
            '/v1/volumes', query={'tenant': PROJECT_B}) if v['id'] == volume.name])
        self.assertEqual([], [v for v in self.raw.get('/v1/volumes', query={'tenant': PROJECT_A})
                              if v['id'] == volume.name])

    # --- manage ---

    def _agent_only_volume(self, pool, tenant, size_bytes):
        name = 'pytests-managed-%d' % time.monotonic_ns()
        self.raw.request('PUT', '/v1/volumes/%s' % name,
                         body={'pool': pool, 'tenant': tenant, 'sizeBytes': size_bytes})
        return name

    def test_manage_existing_of_the_same_project(self):
        name = self._agent_only_volume('xfs0', PROJECT_A, GiB + 512 * 1024)
        self.write('xfs0', name, b'm' * 4096)
        ref = {'source-name': name}
        self.assertEqual(2, self.driver.manage_existing_get_size(self.volume('xfs0'), ref))
        volume = self.volume('xfs0', size=2)
        self.assertEqual({'provider_id': name}, self.driver.manage_existing(volume, ref))
        got = self.agent_volume(name)
        self.assertEqual((PROJECT_A, 2 * GiB, 'xfs0'), (got['tenant'], got['sizeBytes'], got['pool']))
        self.assert_no_agent_volume(volume.name)
        # From now on the driver reaches it by its provider_id.
        volume.provider_id = name
        self.driver.extend_volume(volume, 3)
        self.assertEqual(3 * GiB, self.agent_volume(name)['sizeBytes'])
        self.driver.unmanage(volume)
        got = self.agent_volume(name)
        self.assertEqual(('available', 3 * GiB), (got['state'], got['sizeBytes']))
        self.assertEqual(b'm' * 4096, self.read('xfs0', name, 4096))

    def test_a_new_record_carrying_a_managed_volumes_provider_id_is_made_under_its_own_name(self):
        # Cinder's generic migration copies provider_id from its source into the new record.
        name = self._agent_only_volume('xfs0', PROJECT_A, GiB)
        volume = self.volume('xfs0', size=1, provider_id=name)
        self.assertEqual({'provider_id': None}, self.driver.create_volume(volume))
        self.assertEqual(volume.name, self.agent_volume(volume.name)['id'])
        self.assertEqual(GiB, self.agent_volume(name)['sizeBytes'], 'the managed volume is untouched')
        plain = self.volume('xfs0', size=1)
        self.assertIsNone(self.driver.create_volume(plain), 'a plain new record needs no model update')
        self.driver.delete_volume(plain)
        volume.provider_id = None
        self.driver.delete_volume(volume)
        self.raw.request('DELETE', '/v1/volumes/%s' % name)

    def test_manage_existing_takes_the_project(self):
        """Needs POST /v1/volumes/{id}/transfer (issue 20)."""
        name = self._agent_only_volume('tmp0', 'someone-else', GiB)
        volume = self.volume('tmp0', project=PROJECT_B)
        self.assertEqual({'provider_id': name},
                         self.driver.manage_existing(volume, {'source-name': name}))
        self.assertEqual(PROJECT_B, self.agent_volume(name)['tenant'])

    def test_manage_existing_refuses_bad_references(self):
        name = self._agent_only_volume('tmp0', PROJECT_A, GiB)
        volume = self.volume('xfs0')
        self.assertRaises(exception.ManageExistingInvalidReference,
                          self.driver.manage_existing, volume, {'source-name': name})
        self.assertEqual('tmp0', self.agent_volume(name)['pool'])
        for ref in ({'source-name': 'pytests-absent'}, {}):
            with self.subTest(ref=ref):
                self.assertRaises(exception.ManageExistingInvalidReference,
                                  self.driver.manage_existing_get_size, volume, ref)

    def test_manage_existing_of_a_name_no_agent_volume_has_asks_the_pool(self):
        # A name the agent has no volume of may name an object of the pool's storage the
        # agent did not make (an lvm pool's LV: test/vm/guest/lvm-agent.ts adopts one);
        # a file pool adopts nothing, and says so.
        volume = self.volume('xfs0')
        refused = self.assertRaises(exception.ManageExistingInvalidReference,
                                    self.driver.manage_existing, volume, {'source-name': 'volume-from-lvm'})
        self.assertIn('pool xfs0 holds no volume-from-lvm it could adopt', str(refused))
        self.assert_no_agent_volume(volume.name)

    def test_get_manageable_volumes_of_file_pools_is_empty(self):
        self.assertEqual([], self.driver.get_manageable_volumes([], None, 1000, 0, ['size'], ['asc']))

    # --- exports ---

    def _attach(self, volume, connector):
        self.driver.create_export(self.ctx, volume, connector)
        info = self.driver.initialize_connection(volume, connector)
        self.assertEqual('local', info['driver_volume_type'])
        device = info['data']['device_path']
        self.assertTrue(stat.S_ISBLK(os.stat(device).st_mode), device)
        return info, device

    def test_attach_read_write_then_detach(self):
        data = base.pattern('attach', 1 << 20)
        volume = self.create('tmp0', data=data)
        connector = {'host': 'pytests', 'initiator': 'pytests'}
        info, device = self._attach(volume, connector)
        exports = [e for e in self.raw.get('/v1/exports') if e['volume'] == volume.name]
        self.assertEqual([(info['data']['volagent_export'], 'block', False, device)],
                         [(e['id'], e['protocol'], e['readOnly'], e['uri']) for e in exports])
        self.assertEqual([device], _loop_devices_of(AGENT.object_path('tmp0', volume.name)))
        self.assertEqual('0', _getro(device))
        with open(device, 'r+b', buffering=0) as dev:
            self.assertEqual(data, dev.read(len(data)))
            dev.seek(GiB - 4096)
            dev.write(b'w' * 4096)
            os.fsync(dev.fileno())
        self.assertEqual(b'w' * 4096, self.read('tmp0', volume.name, 4096, GiB - 4096))
        # Asked again (Cinder retries), the same export serves.
        self.assertEqual(info, self.driver.initialize_connection(volume, connector))
        self.driver.ensure_export(self.ctx, volume)
        self.driver.terminate_connection(volume, connector)
        self.driver.remove_export(self.ctx, volume)
        self.assertEqual([], [e for e in self.raw.get('/v1/exports') if e['volume'] == volume.name])
        self.assertEqual([], _loop_devices_of(AGENT.object_path('tmp0', volume.name)))
        self.driver.remove_export(self.ctx, volume)  # nothing left: done
        self.driver.delete_volume(volume)
        self.assert_no_agent_volume(volume.name)

    def test_attach_read_only_by_connector_mode(self):
        volume = self.create('xfs0', data=b'r' * 4096)
        info, device = self._attach(volume, {'host': 'pytests', 'mode': 'ro'})
        self.assertEqual('1', _getro(device))
        self.assertEqual([True], [e['readOnly'] for e in self.raw.get('/v1/exports')
                                  if e['volume'] == volume.name])
        with open(device, 'r+b', buffering=0) as dev:
            caught = self.assertRaises(OSError, dev.write, b'x' * 4096)
        self.assertEqual(errno.EPERM, caught.errno)
        self.assertEqual(b'r' * 4096, self.read('xfs0', volume.name, 4096))
        self.driver.remove_export(self.ctx, volume)
        self.assertEqual([], _loop_devices_of(AGENT.object_path('xfs0', volume.name)))

    def test_attach_read_only_by_admin_metadata(self):
        volume = self.create('tmp0', volume_admin_metadata=[{'key': 'readonly', 'value': 'True'}])
        self.assertEqual('True', volume.admin_metadata['readonly'])
        info, device = self._attach(volume, {'host': 'pytests'})
        self.assertEqual('1', _getro(device))
        self.driver.remove_export(self.ctx, volume)
        self.assertEqual([], [e for e in self.raw.get('/v1/exports') if e['volume'] == volume.name])

    def test_delete_volume_removes_forgotten_exports(self):
        volume = self.create('tmp0')
        info, device = self._attach(volume, {'host': 'pytests'})
        self.driver.delete_volume(volume)
        self.assert_no_agent_volume(volume.name)
        self.assertEqual([], [e for e in self.raw.get('/v1/exports') if e['volume'] == volume.name])

    # --- images ---

    def _image_volume(self, pool, data, project=PROJECT_A, host=None):
        """An Image-Volume: a volume in Cinder's database and in the agent."""
        source = cinder_utils.create_volume(self.ctx, host=host or '%s#%s' % (HOST, pool),
                                            size=1, status='available', project_id=project)
        self.driver.create_volume(source)
        self.write(pool, source.name, data)
        return source

    @staticmethod
    def _image(source, owner=PROJECT_A, visibility='private', disk_format='raw', store=False):
        url = 'cinder://%s%s' % ('cinder-store/' if store else '', source.id)
        meta = {'id': 'img-%s' % source.id, 'disk_format': disk_format,
                'container_format': 'bare', 'visibility': visibility, 'owner': owner,
                'size': GiB}
        return (url, [{'url': url, 'metadata': {}}]), meta

    def test_clone_image_from_its_cinder_volume(self):
        for pool, store in (('xfs0', False), ('tmp0', True)):
            with self.subTest(pool=pool, store=store):
                data = base.pattern('image-' + pool, 1 << 20)
                source = self._image_volume(pool, data)
                location, meta = self._image(source, store=store)
                volume = self.volume(pool, size=2)
                self.assertEqual((None, True), self.driver.clone_image(
                    self.ctx, volume, location, meta, None))
                got = self.agent_volume(volume.name)
                self.assertEqual((pool, PROJECT_A, 2 * GiB, {'volume': source.name},
                                  _expected_clone_method(self.pools[pool])),
                                 (got['pool'], got['tenant'], got['sizeBytes'], got['source'],
                                  got['cloneMethod']))
                self.assertEqual(data, self.read(pool, volume.name, len(data)))

    def test_clone_image_public_for_another_project(self):
        data = base.pattern('public', 1 << 20)
        source = self._image_volume('xfs0', data)
        location, meta = self._image(source, visibility='public')
        volume = self.volume('xfs0', project=PROJECT_B)
        self.assertEqual((None, True), self.driver.clone_image(self.ctx, volume, location, meta, None))
        got = self.agent_volume(volume.name)
        self.assertEqual((PROJECT_B, {'volume': source.name}), (got['tenant'], got['source']))
        self.assertEqual(data, self.read('xfs0', volume.name, len(data)))

    def test_clone_image_refused_makes_nothing(self):
        data = base.pattern('refused', 65536)
        source = self._image_volume('xfs0', data)
        elsewhere = cinder_utils.create_volume(self.ctx, host='otherhost@lvm#pool', size=1,
                                               status='available')
        cases = {
            'private image of another project': (self._image(source), PROJECT_B),
            'qcow2 image': (self._image(source, disk_format='qcow2'), PROJECT_A),
            'volume of another backend': (self._image(elsewhere), PROJECT_A),
            'no cinder location': ((('file:///x', [{'url': 'file:///x', 'metadata': {}}]),
                                    self._image(source)[1]), PROJECT_A),
        }
        for case, ((location, meta), project) in cases.items():
            with self.subTest(case=case):
                volume = self.volume('xfs0', project=project)
                self.assertEqual((None, False), self.driver.clone_image(
                    self.ctx, volume, location, meta, None))
                self.assert_no_agent_volume(volume.name)

    def test_clone_image_from_another_pool(self):
        """Needs the agent's clones across pools (issue 20)."""
        for source_pool, target_pool in (('tmp0', 'xfs0'), ('xfs0', 'xfs1')):
            with self.subTest(source=source_pool, target=target_pool):
                data = base.pattern('image-cross-' + source_pool, 1 << 20)
                source = self._image_volume(source_pool, data)
                location, meta = self._image(source)
                volume = self.volume(target_pool, size=2, project=PROJECT_A)
                self.assertEqual((None, True), self.driver.clone_image(self.ctx, volume, location, meta, None))
                got = self.agent_volume(volume.name)
                self.assertEqual((target_pool, PROJECT_A, 2 * GiB, {'volume': source.name},
                                  _cross_pool_method(source_pool, target_pool, self.pools)),
                                 (got['pool'], got['tenant'], got['sizeBytes'], got['source'],
                                  got['cloneMethod']))
                self.assertEqual(data, self.read(target_pool, volume.name, len(data)))
