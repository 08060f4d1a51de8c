"""What the driver's test modules share: Cinder's test base, a driver built
as cinder-volume builds it, fake Cinder objects, and reads of the agent."""

import os
import uuid
import warnings

from cinder import context
from cinder.tests.unit import fake_constants as fake
from cinder.tests.unit import fake_snapshot
from cinder.tests.unit import fake_volume
from cinder.tests.unit import test
from cinder.volume import configuration
from cinder.volume import driver as cinder_driver
from oslo_config import cfg

from volagent_cinder import client as agent_client
from volagent_cinder import driver as volagent_driver

CONF = cfg.CONF
GiB = 1024 ** 3
BACKEND = 'volagent-pytests'
HOST = 'pytests@%s' % BACKEND
# Cinder project ids are hex (project_id_regex); the agent takes them as tenants.
PROJECT_A = fake.PROJECT_ID.replace('-', '')
PROJECT_B = fake.PROJECT2_ID.replace('-', '')


class DriverTestCase(test.TestCase):
    """Cinder's own unit-test base (config, objects, an in-memory database)."""

    agent = None  # the module's volagent_fixture.Agent

    def setUp(self):
        with warnings.catch_warnings():
            # kombu warns once, through Cinder's RPC set-up, splitting a line of -v output.
            warnings.filterwarnings('ignore', category=DeprecationWarning, module='kombu')
            super().setUp()
        self.ctx = context.RequestContext(fake.USER_ID, PROJECT_A, is_admin=True)
        self.raw = self.agent.client()

    def make_driver(self, socket=None, **options):
        """A driver for backend group BACKEND, set up and checked as cinder-volume does."""
        conf = configuration.Configuration(cinder_driver.volume_opts,
                                           config_group=BACKEND)
        conf.append_config_values(volagent_driver.volagent_opts)
        options.setdefault('volagent_socket', socket or self.agent.socket)
        options.setdefault('volume_backend_name', BACKEND)
        for name, value in options.items():
            self.override_config(name, value, group=BACKEND)
        drv = volagent_driver.VolagentDriver(configuration=conf)
        drv.do_setup(self.ctx)
        return drv

    def volume(self, pool, size=1, project=PROJECT_A, **updates):
        volume_id = str(uuid.uuid4())
        return fake_volume.fake_volume_obj(
            self.ctx, id=volume_id, name='volume-%s' % volume_id,
            host='%s#%s' % (HOST, pool), project_id=project, size=size, **updates)

    def snapshot(self, volume):
        snap = fake_snapshot.fake_snapshot_obj(
            self.ctx, id=str(uuid.uuid4()), volume_id=volume.id,
            volume_size=volume.size, project_id=volume.project_id)
        snap.volume = volume
        return snap

    def agent_volume(self, agent_id):
        return self.raw.get('/v1/volumes/%s' % agent_id)

    def assert_no_agent_volume(self, agent_id):
        caught = self.assertRaises(agent_client.AgentError,
                                   self.raw.get, '/v1/volumes/%s' % agent_id)
        self.assertEqual('VOLUME_NOT_FOUND', caught.code)

    def write(self, pool, name, data, offset=0):
        """Writes into the pool's file of a volume (the agent reads the same file)."""
        fd = os.open(self.agent.object_path(pool, name), os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, pool, name, length, offset=0):
        with open(self.agent.object_path(pool, name), 'rb') as f:
            f.seek(offset)
            return f.read(length)


def pattern(seed, length):
    """``length`` bytes that differ per seed and per 4 KiB block."""
    block = (seed.encode() * (4096 // len(seed) + 1))[:4096]
    out = bytearray()
    n = 0
    while len(out) < length:
        out += block[:4088] + n.to_bytes(8, 'big')
        n += 1
    return bytes(out[:length])
