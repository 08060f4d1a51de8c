"""Cinder volume driver for volagent, the per-host storage agent.

Loaded by cinder-volume as ``volagent_cinder.driver.VolagentDriver`` with
this directory's parent on PYTHONPATH (docs/openstack.md).
"""
