"""Cinder's driver standards for VolagentDriver: the interface decorator,
VERSION and CI_WIKI_NAME, and Cinder's own compliance test module
(cinder/tests/compliance/test_volume_drivers.py) run with this driver
registered, plus the optional interfaces the driver claims.
"""

import unittest

from cinder import interface
from cinder.interface import util as interface_util
from cinder.interface import volume_driver
from cinder.interface import volume_manageable_driver
from cinder.interface import volume_snapshot_revert
from cinder.volume import driver as cinder_driver

from volagent_cinder import driver as volagent_driver

# Imported after the driver: the module lists the drivers registered by then.
from cinder.tests.compliance import test_volume_drivers  # noqa: E402

Driver = volagent_driver.VolagentDriver


def _public_methods(cls):
    return sorted(name for name in dir(cls)
                  if not name.startswith('_') and callable(getattr(cls, name)))


def load_tests(loader, tests, pattern):
    tests.addTests(loader.loadTestsFromModule(test_volume_drivers))
    return tests


class DriverStandardsTest(unittest.TestCase):

    def test_registered_by_the_volumedriver_decorator(self):
        self.assertIn(Driver, interface._volume_register)
        self.assertIn('volagent_cinder.driver.VolagentDriver',
                      [d.class_fqn for d in test_volume_drivers.VOLUME_DRIVERS])

    def test_version_ci_wiki_name_and_options(self):
        info = interface_util.DriverInfo(Driver)
        self.assertEqual(('1.0.0', 'volagent_CI', True), (info.version, info.ci_wiki_name, info.supported))
        self.assertEqual(['volagent_copy_timeout', 'volagent_request_timeout', 'volagent_socket'],
                         sorted(o.name for o in info.driver_options))
        self.assertEqual('/run/volagent/control.sock',
                         next(o.default for o in info.driver_options if o.name == 'volagent_socket'))

    def test_interfaces_it_claims(self):
        for iface in (volume_driver.VolumeDriverCore,
                      volume_snapshot_revert.VolumeSnapshotRevertDriver,
                      volume_manageable_driver.VolumeManagementDriver):
            with self.subTest(interface=iface.__name__):
                self.assertTrue(issubclass(Driver, iface))

    def test_its_own_methods_not_inherited_stubs(self):
        # Inherited stubs satisfy the interface check: each method the driver claims is its own.
        own = set(vars(Driver))
        claimed = set(_public_methods(volume_driver.VolumeDriverCore)) | set(
            _public_methods(volume_snapshot_revert.VolumeSnapshotRevertDriver)) | set(
            _public_methods(volume_manageable_driver.VolumeManagementDriver)) | {
            'create_cloned_volume', 'clone_image', 'accept_transfer'}
        # Image copies go through the generic attach of cinder.volume.driver
        # (the driver's initialize_connection and os-brick's local connector).
        generic = {'copy_image_to_volume', 'copy_volume_to_image'}
        self.assertEqual(sorted(generic), sorted(claimed - own))
        for name in generic:
            self.assertIs(getattr(cinder_driver.BaseVD, name), getattr(Driver, name))
