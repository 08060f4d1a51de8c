"""The driver's side of clones across hosts, against a real volagentd that
serves NBD on 127.0.0.1 with TLS: the peer connector's export (what another
host's cinder-volume gets through Cinder's RPC initialize_connection), read
with libnbd's nbdinfo and the agent's PSK, and removed by
terminate_connection; and the cases where migrate_volume answers False so
that Cinder copies generically. The RPC between two cinder-volume services is
the openstack lane's (test/openstack/cinder-glance.test.ts, "two hosts")."""

import re
import subprocess

from cinder import exception
from cinder.objects import fields

from volagent_cinder import driver as volagent_driver

from tests import base
from tests import volagent_fixture

AGENT = volagent_fixture.Agent({'tmp0': 'dir'}, label='peer', tls_tcp=True)
PLAIN = volagent_fixture.Agent({'tmp0': 'dir'}, label='peer-plain')


def setUpModule():
    AGENT.start()
    PLAIN.start()
    base.DriverTestCase.agent = AGENT


def tearDownModule():
    AGENT.stop()
    PLAIN.stop()


class PeerExportTest(base.DriverTestCase):

    def setUp(self):
        super().setUp()
        self.driver = self.make_driver()
        self.peer = volagent_driver._peer_connector()

    def test_a_peer_gets_a_read_only_nbds_export_that_terminate_removes(self):
        volume = self.volume('tmp0', size=1)
        self.driver.create_volume(volume)
        self.write('tmp0', volume.name, b'\x5a' * 4096, offset=8192)
        self.driver.create_export(self.ctx, volume, self.peer)
        info = self.driver.initialize_connection(volume, self.peer)
        self.assertEqual('volagent_nbd', info['driver_volume_type'])
        data = info['data']
        self.assertEqual(volume.name, data['volume'])
        self.assertEqual(base.GiB, data['sizeBytes'])
        self.assertRegex(data['uri'], r'^nbds://127\.0\.0\.1:\d+/exp-[0-9a-f]{32}$')
        exports = [e for e in self.raw.get('/v1/exports') if e['volume'] == volume.name]
        self.assertEqual([('nbd', True, data['volagent_export'])],
                         [(e['protocol'], e['readOnly'], e['id']) for e in exports])
        # Another host reads it with the fleet's key, as its agent does.
        with_key = re.sub(r'^nbds://', 'nbds://pytests@', data['uri']) + '?tls-psk-file=%s' % AGENT.psk_file
        shown = subprocess.run(['nbdinfo', '--size', with_key], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        self.assertEqual(0, shown.returncode, shown.stderr)
        self.assertEqual(str(base.GiB), shown.stdout.strip())
        plain = subprocess.run(['nbdinfo', '--size', re.sub(r'^nbds://', 'nbd://', data['uri'])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.assertNotEqual(0, plain.returncode, 'without TLS the export is refused')
        # A second initialize_connection reuses the export.
        again = self.driver.initialize_connection(volume, self.peer)
        self.assertEqual(data['volagent_export'], again['data']['volagent_export'])
        self.driver.terminate_connection(volume, self.peer, force=True)
        self.assertEqual([], [e for e in self.raw.get('/v1/exports') if e['volume'] == volume.name])
        self.driver.delete_volume(volume)

    def test_terminate_for_a_peer_leaves_a_local_attach(self):
        volume = self.volume('tmp0', size=1)
        self.driver.create_volume(volume)
        local = {'host': 'this-host', 'ip': '127.0.0.1'}
        self.driver.create_export(self.ctx, volume, local)
        self.driver.initialize_connection(volume, local)
        self.driver.initialize_connection(volume, self.peer)
        self.driver.terminate_connection(volume, self.peer, force=True)
        exports = [e for e in self.raw.get('/v1/exports') if e['volume'] == volume.name]
        self.assertEqual(['block'], [e['protocol'] for e in exports])
        self.driver.remove_export(self.ctx, volume)
        self.driver.delete_volume(volume)

    def test_an_attached_volume_is_not_exported_to_a_peer(self):
        volume = self.volume('tmp0', size=1,
                             attach_status=fields.VolumeAttachStatus.ATTACHED)
        self.driver.create_volume(volume)
        caught = self.assertRaises(exception.VolumeBackendAPIException,
                                   self.driver.initialize_connection, volume, self.peer)
        self.assertIn('is attached', str(caught))
        self.assertEqual([], [e for e in self.raw.get('/v1/exports') if e['volume'] == volume.name])
        self.driver.delete_volume(volume)

    def test_an_agent_without_a_tls_address_cannot_serve_peers(self):
        drv = self.make_driver(socket=PLAIN.socket)
        volume = self.volume('tmp0', size=1)
        drv.create_volume(volume)
        caught = self.assertRaises(exception.VolumeBackendAPIException,
                                   drv.initialize_connection, volume, self.peer)
        self.assertIn('has no nbds:// address', str(caught))
        self.assertEqual([], [e for e in PLAIN.client().get('/v1/exports') if e['volume'] == volume.name],
                         'the export it made is gone again')
        drv.delete_volume(volume)

    def test_migrate_volume_answers_false_where_cinder_must_copy(self):
        volume = self.volume('tmp0', size=1)
        self.driver.create_volume(volume)
        volagent = {'vendor_name': 'volagent'}
        cases = [
            ('another driver', volume, {'host': 'other@lvm#vg', 'capabilities': {'vendor_name': 'Open Source'}}),
            ('the same backend', volume, {'host': '%s#other' % base.HOST, 'capabilities': volagent}),
            ('an attached volume', self.volume('tmp0', attach_status=fields.VolumeAttachStatus.ATTACHED),
             {'host': 'b@volagent#tmp0', 'capabilities': volagent}),
        ]
        for what, vol, host in cases:
            self.assertEqual((False, None), self.driver.migrate_volume(self.ctx, vol, host), what)
        self.assertEqual(volume.name, self.agent_volume(volume.name)['id'], 'the volume stays')
        self.driver.delete_volume(volume)
