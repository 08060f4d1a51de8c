"""Cinder volume driver for volagent (docs/openstack.md).

Each Cinder backend using this driver is one volagent on this host, reached
over its control socket (``volagent_socket``); each agent pool is a Cinder
pool (``host@backend#pool``). The driver needs no root and no rootwrap:
cinder-volume's user is let in by the agent's ``[control].allow`` as an
``admin``, and every object it makes is owned by the Cinder project it acts
for (the agent's tenant), so the agent's own access checks hold.

Cinder's objects map to the agent's one to one: a volume is the agent
volume ``volume.name`` (``volume-<id>``; a managed volume keeps its agent
name, recorded as ``provider_id``), a snapshot is the agent snapshot
``snapshot.name`` of its volume. Attach is os-brick's ``local`` connector
with a block device from the agent's block export (a loop device for a file
volume, the device-mapper node for a thin one), read-only when Cinder
attaches read-only.

Across hosts (one cinder-volume and one volagent per storage host), a volume
whose source lives on another volagent backend is pulled by this host's
agent over NBD with TLS: the driver asks the source's cinder-volume, through
Cinder's own RPC (``initialize_connection`` with a peer connector), to
export the source read-only over ``nbds://``, has its agent pull it (data
extents only), then ``terminate_connection`` removes the export. That serves
``clone_image`` from a ``cinder://`` Image-Volume of another host, clones
across hosts, and ``migrate_volume`` (also retype between volagent backends),
which has the destination make a temporary volume cloned from the source.
"""

import math
import time
import urllib.parse

from oslo_config import cfg
from oslo_log import log as logging

from cinder import context as cinder_context
from cinder import exception
from cinder.i18n import _
from cinder.image import cache as image_cache
from cinder import interface
from cinder import objects
from cinder.objects import fields
from cinder import quota
from cinder import volume as cinder_volume
from cinder.volume import configuration
from cinder.volume import driver
from cinder.volume import rpcapi as volume_rpcapi
from cinder.volume import volume_utils

from volagent_cinder import client as agent_client

LOG = logging.getLogger(__name__)

GiB = 1024 ** 3

volagent_opts = [
    cfg.StrOpt('volagent_socket',
               default='/run/volagent/control.sock',
               help='The control socket of the volagent that serves this '
                    'backend (its [control] socket).'),
    cfg.IntOpt('volagent_request_timeout',
               default=60, min=1,
               help='Seconds one request to the agent may take before the '
                    'driver gives up on it.'),
    cfg.IntOpt('volagent_copy_timeout',
               default=3600, min=1,
               help='Seconds a copy (a clone or snapshot the pool cannot '
                    'make in constant time) may run; past that the driver '
                    'cancels it, and the agent removes what it had made.'),
]

CONF = cfg.CONF
CONF.register_opts(volagent_opts, group=configuration.SHARED_CONF_GROUP)
QUOTAS = quota.QUOTAS


def _pool_of(volume):
    """The agent pool of a Cinder volume's host (``host@backend#pool``)."""
    return volume_utils.extract_host(volume.host, 'pool')


def _bytes(size_gb):
    return int(size_gb) * GiB


def _quote(agent_id):
    return urllib.parse.quote(agent_id, safe='')


# A connector that names another volagent host pulling the volume: its
# connection is an NBD export over TLS, not a local block device.
PEER_CONNECTOR_KEY = 'volagent_peer'
PEER_VOLUME_TYPE = 'volagent_nbd'


def _peer_connector():
    return {PEER_CONNECTOR_KEY: True, 'host': CONF.host, 'initiator': None,
            'multipath': False, 'platform': 'volagent', 'os_type': 'linux'}


def _is_peer(connector):
    return bool((connector or {}).get(PEER_CONNECTOR_KEY))


def _backend_of(host):
    return volume_utils.extract_host(host, 'backend')


@interface.volumedriver
class VolagentDriver(driver.VolumeDriver):
    """Volumes, snapshots, clones and exports of one volagent on this host.

    Version history:
        1.0.0 - volumes, snapshots, clones (reflink, thin snapshot or sparse
                copy, also across pools), extend, revert, manage/unmanage,
                transfer, clone_image from cinder:// locations, local attach
                of a block export.
    """

    VERSION = '1.0.0'
    CI_WIKI_NAME = 'volagent_CI'
    # The storage protocol of the connection: os-brick's local connector.
    STORAGE_PROTOCOL = 'local'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(volagent_opts)
        self.backend_name = (self.configuration.safe_get('volume_backend_name')
                             or 'volagent')
        self.agent = None
        self._stats = {}

    @staticmethod
    def get_driver_options():
        return volagent_opts

    # --- setup ---

    def do_setup(self, context):
        self.agent = agent_client.AgentClient(
            self.configuration.volagent_socket,
            timeout=self.configuration.volagent_request_timeout)

    def check_for_setup_error(self):
        version = self._call('GET', '/v1/version')
        if version.get('api') != 1:
            raise exception.VolumeDriverException(
                message=_('volagent at %(socket)s speaks API %(api)s; this '
                          'driver speaks API 1') % {
                    'socket': self.configuration.volagent_socket,
                    'api': version.get('api')})
        if not self._call('GET', '/v1/pools'):
            raise exception.VolumeDriverException(
                message=_('volagent at %s has no pools') %
                self.configuration.volagent_socket)

    # --- stats ---

    def get_volume_stats(self, refresh=False):
        if refresh or not self._stats:
            self._update_volume_stats()
        return self._stats

    def _update_volume_stats(self):
        pools = self._call('GET', '/v1/pools')
        volumes = self._call('GET', '/v1/volumes')
        ratio = volume_utils.get_max_over_subscription_ratio(
            self.configuration.max_over_subscription_ratio,
            supports_auto=True)
        stats = []
        for pool in pools:
            provisioned = sum(v['sizeBytes'] for v in volumes
                              if v['pool'] == pool['name'])
            capacity = pool['capacity']
            entry = {
                'pool_name': pool['name'],
                'total_capacity_gb': round(capacity['totalBytes'] / GiB, 2),
                'free_capacity_gb': round(capacity['freeBytes'] / GiB, 2),
                'provisioned_capacity_gb': round(provisioned / GiB, 2),
                'reserved_percentage': self.configuration.reserved_percentage,
                'max_over_subscription_ratio': ratio,
                # Every volume is sparse (a file's holes, a thin device's
                # unprovisioned blocks): thin provisioning, and only that.
                'thin_provisioning_support': True,
                'thick_provisioning_support': False,
                'QoS_support': False,
                'multiattach': False,
                'volagent_backend': pool['backend'],
                'volagent_reflink': pool['capabilities']['reflink'],
                'volagent_constant_time_clone':
                    pool['capabilities']['constantTimeClone'],
            }
            health = pool.get('health')
            if health and health.get('mode') not in (None, 'rw'):
                # A thin pool that refuses writes takes no new volumes.
                entry['backend_state'] = 'down'
                entry['free_capacity_gb'] = 0
            stats.append(entry)
        self._stats = {
            'volume_backend_name': self.backend_name,
            'vendor_name': 'volagent',
            'driver_version': self.VERSION,
            'storage_protocol': self.STORAGE_PROTOCOL,
            'sparse_copy_volume': True,
            'pools': stats,
        }

    # --- volumes ---

    def create_volume(self, volume):
        return self._put_volume(volume, {'pool': _pool_of(volume),
                                  'tenant': volume.project_id,
                                  'sizeBytes': _bytes(volume.size)})

    def create_cloned_volume(self, volume, src_vref):
        if _backend_of(src_vref.host) != _backend_of(volume.host):
            # Another host's volume: Cinder calls this across backends only
            # for migrate_volume's temporary volume (below).
            return self._pull(cinder_context.get_admin_context(), volume, src_vref)
        return self._put_volume(volume, {
            'pool': _pool_of(volume), 'tenant': volume.project_id,
            'sizeBytes': _bytes(max(volume.size, src_vref.size)),
            'source': {'volume': self._agent_id(src_vref)}})

    def create_volume_from_snapshot(self, volume, snapshot):
        return self._put_volume(volume, {
            'pool': _pool_of(volume), 'tenant': volume.project_id,
            'sizeBytes': _bytes(max(volume.size, snapshot.volume_size)),
            'source': {'snapshot': snapshot.name}})

    def delete_volume(self, volume):
        agent_id = self._agent_id(volume)
        # An export left by an attachment Cinder has forgotten would keep
        # the volume busy forever: the volume is going, so are its exports.
        self._remove_exports(agent_id)
        try:
            self._call('DELETE', '/v1/volumes/%s' % _quote(agent_id))
        except agent_client.AgentError as e:
            if e.code in ('VOLUME_BUSY', 'VOLUME_HAS_SNAPSHOTS'):
                raise exception.VolumeIsBusy(volume_name=volume.name) from e
            raise self._backend_error('delete volume %s' % volume.id, e)

    def extend_volume(self, volume, new_size):
        self._call('POST', '/v1/volumes/%s/resize' % _quote(self._agent_id(volume)),
                   body={'sizeBytes': _bytes(new_size)},
                   action='extend volume %s' % volume.id)

    def revert_to_snapshot(self, context, volume, snapshot):
        self._call('POST', '/v1/volumes/%s/revert' % _quote(self._agent_id(volume)),
                   body={'snapshot': snapshot.name},
                   action='revert volume %s to snapshot %s' % (volume.id, snapshot.id))

    def accept_transfer(self, context, volume, new_user, new_project):
        self._call('POST', '/v1/volumes/%s/transfer' % _quote(self._agent_id(volume)),
                   body={'tenant': new_project},
                   action='transfer volume %s to project %s' % (volume.id, new_project))

    # --- snapshots ---

    def create_snapshot(self, snapshot):
        volume_id = self._agent_id(snapshot.volume)
        path = '/v1/volumes/%s/snapshots/%s' % (_quote(volume_id), _quote(snapshot.name))
        status, answer = self._request('PUT', path, body={},
                                       action='create snapshot %s' % snapshot.id)
        if status == 202:
            self._wait(answer['operation'], 'create snapshot %s' % snapshot.id)

    def delete_snapshot(self, snapshot):
        path = '/v1/volumes/%s/snapshots/%s' % (
            _quote(self._agent_id(snapshot.volume)), _quote(snapshot.name))
        try:
            self._call('DELETE', path)
        except agent_client.AgentError as e:
            if e.code == 'VOLUME_NOT_FOUND':
                return  # its volume is gone, and the snapshot with it
            if e.code == 'VOLUME_BUSY':
                raise exception.SnapshotIsBusy(snapshot_name=snapshot.name) from e
            raise self._backend_error('delete snapshot %s' % snapshot.id, e)

    # --- images ---

    def clone_image(self, context, volume, image_location, image_meta,
                    image_service):
        """Clones the Image-Volume of a ``cinder://`` image, in any pool of this backend.

        Cinder's own clone path looks only in the new volume's exact pool
        and only at images the volume's project owns; here any pool of
        this agent serves, and a public or community image serves every
        project.
        """
        if (image_meta.get('disk_format') != 'raw' or
                image_meta.get('container_format') != 'bare'):
            return None, False
        direct_url, locations = image_location or (None, None)
        urls = {direct_url} | {loc.get('url') for loc in locations or []}
        backend = _backend_of(volume.host)
        sources = []
        for volume_id in _cinder_volume_ids(urls):
            try:
                sources.append(objects.Volume.get_by_id(context.elevated(), volume_id))
            except exception.VolumeNotFound:
                continue
        # An Image-Volume of this backend clones in place; one of another
        # volagent host is pulled over NBD (sparse, TLS); Glance is not read.
        local = [s for s in sources if _backend_of(s.host) == backend]
        remote = [s for s in sources if _backend_of(s.host) != backend and
                  s.status == 'available' and
                  self._is_volagent_backend(context, s.host)]
        for source in local + remote:
            if source.status not in ('available', 'in-use'):
                continue
            if not _image_usable_by(image_meta, volume.project_id):
                LOG.info('Image %(image)s is not usable by project %(project)s: '
                         'not cloning its Image-Volume %(source)s.',
                         {'image': image_meta.get('id'),
                          'project': volume.project_id, 'source': source.id})
                continue
            if source in local:
                model_update = self._put_volume(volume, {
                    'pool': _pool_of(volume), 'tenant': volume.project_id,
                    'sizeBytes': _bytes(max(volume.size, source.size)),
                    'source': {'volume': self._agent_id(source)}})
            else:
                cached = self._cached_image_volume(volume, image_meta)
                if cached is not None:
                    # Pulled before: this host's image-volume cache holds it.
                    model_update = self._put_volume(volume, {
                        'pool': _pool_of(volume), 'tenant': volume.project_id,
                        'sizeBytes': _bytes(max(volume.size, cached.size)),
                        'source': {'volume': self._agent_id(cached)}})
                    source = cached
                else:
                    model_update = self._pull(context.elevated(), volume, source)
                    self._cache_image_volume(volume, model_update, image_meta)
            LOG.info('Volume %(volume)s cloned from Image-Volume %(source)s '
                     'of image %(image)s on %(host)s.',
                     {'volume': volume.id, 'source': source.id,
                      'image': image_meta.get('id'), 'host': source.host})
            return model_update, True
        return None, False

    # --- manage ---

    def manage_existing_get_size(self, volume, existing_ref):
        managed = self._managed(volume, existing_ref)
        return int(math.ceil(managed['sizeBytes'] / GiB))

    def manage_existing(self, volume, existing_ref):
        """An agent volume Cinder does not know, or an object of the pool's storage the agent did not make.

        An agent volume keeps its agent name (``provider_id``). An object the
        agent did not make (an LV of an ``lvm`` pool's thin pool: Cinder's LVM
        driver's volumes, say) is adopted as agent volume ``volume.name``: the
        agent tags and renames the LV, its data untouched (docs/api.md
        "Adopting what the agent did not make").
        """
        managed = self._managed(volume, existing_ref)
        action = 'manage volume %s' % volume.id
        size = _bytes(int(math.ceil(managed['sizeBytes'] / GiB)))
        if 'unmanaged' in managed:
            self._put_volume(volume, {'pool': _pool_of(volume), 'tenant': volume.project_id,
                                      'source': {'unmanaged': managed['name']}})
            agent_id, update = volume.name, {'provider_id': None}
        else:
            agent_id, update = managed['id'], {'provider_id': managed['id']}
            if managed['tenant'] != volume.project_id:
                self._call('POST', '/v1/volumes/%s/transfer' % _quote(agent_id),
                           body={'tenant': volume.project_id}, action=action)
        if size > managed['sizeBytes']:
            # Cinder counts whole GiB: the volume grows to what Cinder records.
            self._call('POST', '/v1/volumes/%s/resize' % _quote(agent_id),
                       body={'sizeBytes': size}, action=action)
        return update

    def unmanage(self, volume):
        """Cinder forgets the volume; the agent keeps it (and its data) as it is."""
        LOG.info('Volume %(volume)s unmanaged: volagent keeps %(agent)s.',
                 {'volume': volume.id, 'agent': self._agent_id(volume)})

    def _managed(self, volume, existing_ref):
        """What ``existing_ref`` names in ``volume``'s pool: an agent volume, or an object the agent did not make (with key ``unmanaged``)."""
        name = existing_ref.get('source-name') or existing_ref.get('source-id')
        if not name:
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('name the agent volume, or the LV, with source-name'))

        def invalid(reason):
            return exception.ManageExistingInvalidReference(existing_ref=existing_ref, reason=reason)

        pool = _pool_of(volume)
        try:
            # Without an action _call raises the agent's own error.
            agent_volume = self._call('GET', '/v1/volumes/%s' % _quote(name))
        except agent_client.AgentError as e:
            if e.code not in ('VOLUME_NOT_FOUND', 'INVALID_ID'):
                raise self._backend_error('manage %s' % name, e)
            agent_volume = None
        if agent_volume is not None:
            if pool is not None and agent_volume['pool'] != pool:
                raise invalid(_('volume %(id)s is in pool %(pool)s, not %(want)s') % {
                    'id': agent_volume['id'], 'pool': agent_volume['pool'], 'want': pool})
            if agent_volume['kind'] != 'volume' or agent_volume['state'] != 'available':
                raise invalid(_('agent volume %(id)s is a %(kind)s in state %(state)s') % {
                    'id': name, 'kind': agent_volume['kind'], 'state': agent_volume['state']})
            return agent_volume
        if pool is None:
            raise invalid(_('volagent has no volume %s') % name)
        try:
            found = self._call('GET', '/v1/pools/%s/unmanaged/%s' % (_quote(pool), _quote(name)))
        except agent_client.AgentError as e:
            if e.code in ('UNMANAGED_NOT_FOUND', 'UNSUPPORTED_FOR_POOL', 'BAD_REQUEST'):
                raise invalid(_('volagent has no volume %(name)s, and pool %(pool)s holds '
                                'no %(name)s it could adopt') % {'name': name, 'pool': pool})
            raise self._backend_error('manage %s' % name, e)
        if found.get('refusal'):
            raise invalid(_('%(name)s in pool %(pool)s cannot be adopted: %(why)s') % {
                'name': name, 'pool': pool, 'why': found['refusal']})
        return dict(found, unmanaged=True)

    def get_manageable_volumes(self, cinder_volumes, marker, limit, offset,
                               sort_keys, sort_dirs):
        """The objects of this agent's pools that the agent did not make (``cinder manageable-list``)."""
        entries = []
        for pool in self._call('GET', '/v1/pools', action='list manageable volumes'):
            try:
                candidates = self._call('GET', '/v1/pools/%s/unmanaged' % _quote(pool['name']))
            except agent_client.AgentError as e:
                if e.code == 'UNSUPPORTED_FOR_POOL':
                    continue
                raise self._backend_error('list manageable volumes', e)
            for candidate in candidates:
                entries.append({
                    'reference': {'source-name': candidate['name']},
                    'size': int(math.ceil(candidate['sizeBytes'] / GiB)),
                    'cinder_id': None,
                    'safe_to_manage': not candidate.get('refusal'),
                    'reason_not_safe': candidate.get('refusal'),
                    'extra_info': 'pool %s' % pool['name'],
                })
        return volume_utils.paginate_entries_list(entries, marker, limit, offset,
                                                  sort_keys, sort_dirs)

    # --- exports and connections ---

    def create_export(self, context, volume, connector):
        if _is_peer(connector):
            self._peer_export(volume)
            return
        self._block_export(volume, connector)

    def ensure_export(self, context, volume):
        """The agent restores its exports itself at start-up; nothing to redo."""

    def remove_export(self, context, volume):
        self._remove_exports(self._agent_id(volume))

    def initialize_connection(self, volume, connector):
        if _is_peer(connector):
            export = self._peer_export(volume)
            agent_id = self._agent_id(volume)
            agent_volume = self._call('GET', '/v1/volumes/%s' % _quote(agent_id),
                                      action='export volume %s' % volume.id)
            return {'driver_volume_type': PEER_VOLUME_TYPE,
                    'data': {'uri': _tls_uri(export),
                             'sizeBytes': agent_volume['sizeBytes'],
                             'volume': agent_id,
                             'volagent_export': export['id']}}
        export = self._block_export(volume, connector)
        return {'driver_volume_type': 'local',
                'data': {'device_path': export['uri'],
                         'volagent_export': export['id']}}

    def terminate_connection(self, volume, connector, **kwargs):
        """A peer's NBD export goes now; a local attach's with remove_export, which Cinder calls next."""
        if _is_peer(connector):
            for export in self._exports_of(self._agent_id(volume)):
                if export['protocol'] == 'nbd':
                    self._call('DELETE', '/v1/exports/%s' % _quote(export['id']),
                               action='remove export %s' % export['id'])

    def _peer_export(self, volume):
        """The volume's read-only NBD export for a peer host, made when missing.

        The peer reads it at one point in time only if nothing writes the
        volume meanwhile: an attached volume is refused.
        """
        if volume.attach_status == fields.VolumeAttachStatus.ATTACHED:
            raise exception.VolumeBackendAPIException(
                data=_('volume %s is attached: another host cannot read it '
                       'at one point in time') % volume.id)
        agent_id = self._agent_id(volume)
        for export in self._exports_of(agent_id):
            if export['protocol'] == 'nbd' and export['readOnly']:
                return export
        status, export = self._request(
            'POST', '/v1/volumes/%s/exports' % _quote(agent_id),
            body={'protocol': 'nbd', 'readOnly': True},
            action='export volume %s to a peer' % volume.id)
        try:
            _tls_uri(export)  # an agent without a TLS address cannot serve peers
        except exception.VolumeBackendAPIException:
            self._call('DELETE', '/v1/exports/%s' % _quote(export['id']),
                       action='remove export %s' % export['id'])
            raise
        return export

    def _block_export(self, volume, connector):
        """The volume's block export in the mode Cinder attaches it, made when missing."""
        agent_id = self._agent_id(volume)
        read_only = _attached_read_only(volume, connector)
        for export in self._exports_of(agent_id):
            if export['protocol'] == 'block' and export['readOnly'] == read_only:
                return export
        status, export = self._request(
            'POST', '/v1/volumes/%s/exports' % _quote(agent_id),
            body={'protocol': 'block', 'readOnly': read_only},
            action='export volume %s' % volume.id)
        return export

    def _exports_of(self, agent_id):
        return [e for e in self._call('GET', '/v1/exports') if e['volume'] == agent_id]

    def _remove_exports(self, agent_id):
        for export in self._exports_of(agent_id):
            self._call('DELETE', '/v1/exports/%s' % _quote(export['id']),
                       action='remove export %s' % export['id'])

    # --- across hosts ---

    def _image_volume_cache(self):
        """Cinder's image-volume cache of this backend, or None (disabled, no internal tenant)."""
        if not self.configuration.safe_get('image_volume_cache_enabled'):
            return None, None
        internal = cinder_context.get_internal_tenant_context()
        if internal is None:
            return None, None
        cache = image_cache.ImageVolumeCache(
            self.db, cinder_volume.API(),
            self.configuration.safe_get('image_volume_cache_max_size_gb') or 0,
            self.configuration.safe_get('image_volume_cache_max_count') or 0)
        return cache, internal

    def _cached_image_volume(self, volume, image_meta):
        """The cache entry's volume of this image on this host, when there is one."""
        cache, internal = self._image_volume_cache()
        if cache is None:
            return None
        entry = cache.get_entry(internal, volume, image_meta['id'], image_meta)
        if not entry:
            return None
        try:
            cached = objects.Volume.get_by_id(internal.elevated(), entry['volume_id'])
        except exception.VolumeNotFound:
            return None
        return cached if cached.status == 'available' else None

    def _cache_image_volume(self, volume, model_update, image_meta):
        """Keeps a pulled image in this host's image-volume cache, as Cinder keeps a download.

        A volume of Cinder's internal tenant cloned from the new one (a
        reflink or thin snapshot here: no second pull), read-only, and its
        cache entry; the next volume of this image on this host clones it.
        Best effort, as Cinder's own: a failure is logged, the volume stays.
        """
        cache, internal = self._image_volume_cache()
        if cache is None:
            return
        image_id = image_meta['id']
        image_volume = None
        try:
            if not cache.ensure_space(internal, volume):
                LOG.warning('No room in the image-volume cache of %(host)s for image '
                            '%(image)s.', {'host': volume.host, 'image': image_id})
                return
            reserve = {'volumes': 1, 'gigabytes': volume.size}
            QUOTAS.add_volume_type_opts(internal, reserve, volume.volume_type_id)
            reservations = QUOTAS.reserve(internal, **reserve)
            try:
                image_volume = objects.Volume(
                    context=internal, host=volume.host, cluster_name=volume.cluster_name,
                    availability_zone=volume.availability_zone, size=volume.size,
                    volume_type_id=volume.volume_type_id,
                    project_id=internal.project_id, user_id=internal.user_id,
                    status='creating', attach_status=fields.VolumeAttachStatus.DETACHED,
                    display_name='image-%s' % image_id, source_volid=volume.id)
                image_volume.create()
            except Exception:
                QUOTAS.rollback(internal, reservations)
                raise
            QUOTAS.commit(internal, reservations, project_id=internal.project_id)
            source = volume.obj_clone()
            if model_update:
                source.update(model_update)
            self._put_volume(image_volume, {
                'pool': _pool_of(image_volume), 'tenant': internal.project_id,
                'sizeBytes': _bytes(image_volume.size),
                'source': {'volume': self._agent_id(source)}})
            image_volume.update({'status': 'available'})
            image_volume.save()
            self.db.volume_admin_metadata_update(internal.elevated(), image_volume.id,
                                                 {'readonly': 'True'}, False)
            cache.create_cache_entry(internal, image_volume, image_id, image_meta)
            LOG.info('Image %(image)s pulled to %(host)s is kept in its image-volume '
                     'cache as volume %(cached)s.',
                     {'image': image_id, 'host': volume.host, 'cached': image_volume.id})
        except Exception as e:
            LOG.warning('Image %(image)s was not kept in the image-volume cache of '
                        '%(host)s: %(e)s', {'image': image_id, 'host': volume.host, 'e': e})
            if image_volume is not None and image_volume.status != 'available':
                try:
                    self._call('DELETE', '/v1/volumes/%s' % _quote(image_volume.name))
                except agent_client.AgentError:
                    pass
                image_volume.destroy()

    def _is_volagent_backend(self, context, host):
        """Whether the backend of ``host`` is a volagent (Cinder's RPC: its capabilities)."""
        try:
            capabilities = volume_rpcapi.VolumeAPI().get_capabilities(
                context.elevated(), _backend_of(host), False)
        except Exception as e:  # a backend that does not answer is not a peer now
            LOG.info('Backend %(host)s did not tell its capabilities: %(e)s',
                     {'host': host, 'e': e})
            return False
        return (capabilities or {}).get('vendor_name') == 'volagent'

    def _pull(self, context, volume, source):
        """Makes ``volume`` here from ``source``, a volume of another volagent host.

        The source's cinder-volume exports it read-only over nbds:// (its
        initialize_connection with a peer connector); this host's agent
        pulls the data extents; the export goes whatever the outcome.
        """
        rpc = volume_rpcapi.VolumeAPI()
        connector = _peer_connector()
        info = rpc.initialize_connection(context, source, connector)
        try:
            if info.get('driver_volume_type') != PEER_VOLUME_TYPE:
                raise exception.VolumeBackendAPIException(
                    data=_('volume %(id)s on %(host)s is not on a volagent '
                           'backend (%(type)s)') % {
                        'id': source.id, 'host': source.host,
                        'type': info.get('driver_volume_type')})
            data = info['data']
            model_update = self._put_volume(volume, {
                'pool': _pool_of(volume), 'tenant': volume.project_id,
                'sizeBytes': max(_bytes(volume.size), data['sizeBytes']),
                'source': {'remote': {'uri': data['uri'],
                                      'sizeBytes': data['sizeBytes'],
                                      'volume': data['volume']}}})
        finally:
            try:
                rpc.terminate_connection(context, source, connector, force=True)
            except Exception as e:
                LOG.warning('The export of volume %(id)s on %(host)s for this '
                            'host was not removed: %(e)s',
                            {'id': source.id, 'host': source.host, 'e': e})
        LOG.info('Volume %(volume)s pulled from volume %(source)s on %(host)s.',
                 {'volume': volume.id, 'source': source.id, 'host': source.host})
        return model_update

    def migrate_volume(self, context, volume, host):
        """Moves a detached volume to another volagent host by a pull.

        The destination's cinder-volume makes a temporary volume cloned from
        this one (Cinder's RPC create_volume with source_volid: its driver
        pulls over NBD with TLS); the volume then takes the temporary's name
        (``_name_id``), the temporary's record goes, and this host's copy is
        deleted. Anything else (another driver, this same backend, an
        attached volume, a failed pull) answers False: Cinder's generic
        migration does it instead.
        """
        cannot = (False, None)
        capabilities = host.get('capabilities') or {}
        if (capabilities.get('vendor_name') != 'volagent' or
                _backend_of(host['host']) == _backend_of(volume.host) or
                volume.attach_status != fields.VolumeAttachStatus.DETACHED):
            return cannot
        temporary = objects.Volume(
            context=context, host=host['host'],
            cluster_name=host.get('cluster_name'),
            availability_zone=volume.availability_zone,
            status='creating', attach_status=fields.VolumeAttachStatus.DETACHED,
            migration_status='target:%s' % volume.id, use_quota=False,
            source_volid=volume.id, size=volume.size,
            user_id=volume.user_id, project_id=volume.project_id,
            volume_type_id=volume.volume_type_id,
            display_name=volume.display_name, bootable=volume.bootable)
        temporary.create()
        volume_rpcapi.VolumeAPI().create_volume(context, temporary, None, None,
                                                allow_reschedule=False)
        deadline = time.monotonic() + self.configuration.volagent_copy_timeout
        temporary.refresh()
        while temporary.status not in ('available', 'error'):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
            temporary.refresh()
        if temporary.status != 'available':
            LOG.warning('Volume %(id)s: the pull to %(host)s ended %(status)s; '
                        'Cinder migrates it generically.',
                        {'id': volume.id, 'host': host['host'],
                         'status': temporary.status})
            if temporary.status == 'error':
                temporary.destroy()
            return cannot
        # The data is on the destination under the temporary's name: the
        # volume takes that name; this host's copy goes.
        name_id = temporary.id
        temporary.destroy()
        self.delete_volume(volume)
        LOG.info('Volume %(id)s migrated to %(host)s by a pull.',
                 {'id': volume.id, 'host': host['host']})
        return True, {'_name_id': name_id, 'provider_id': None}

    # --- the agent ---

    def _agent_id(self, volume):
        return volume.provider_id or volume.name

    def _put_volume(self, volume, body):
        """Makes agent volume ``volume.name``; waits out a copy (bounded), cancelling it on timeout.

        Answers the model update: a ``provider_id`` the new record carries
        over from another volume (Cinder's generic migration copies it from
        its source, a managed volume) is cleared, since this volume is
        ``volume.name`` in the agent.
        """
        action = 'create volume %s' % volume.id
        status, answer = self._request('PUT', '/v1/volumes/%s' % _quote(volume.name),
                                       body=body, action=action)
        if status == 202:
            self._wait(answer['operation'], action)
        return {'provider_id': None} if volume.provider_id else None

    def _wait(self, operation, action):
        try:
            self.agent.wait_operation(operation, self.configuration.volagent_copy_timeout)
        except agent_client.OperationTimeout as e:
            raise exception.VolumeBackendAPIException(data='%s: %s' % (action, e))
        except agent_client.AgentError as e:
            raise self._backend_error(action, e)
        except agent_client.AgentUnreachable as e:
            raise exception.VolumeBackendAPIException(data='%s: %s' % (action, e))

    def _call(self, method, path, body=None, action=None):
        return self._request(method, path, body=body, action=action)[1]

    def _request(self, method, path, body=None, action=None):
        try:
            return self.agent.request(method, path, body=body)
        except agent_client.AgentUnreachable as e:
            raise exception.VolumeBackendAPIException(
                data='%s: %s' % (action or '%s %s' % (method, path), e))
        except agent_client.AgentError as e:
            if action is None:
                raise
            raise self._backend_error(action, e)

    @staticmethod
    def _backend_error(action, error):
        if error.code == 'VOLUME_BUSY' and 'snapshot' in error.details:
            return exception.SnapshotIsBusy(snapshot_name=error.details['snapshot'])
        if error.code == 'VOLUME_BUSY':
            return exception.VolumeIsBusy(
                volume_name=error.details.get('volume', action))
        return exception.VolumeBackendAPIException(
            data='%s: volagent %s: %s' % (action, error.code, error.message))


def _cinder_volume_ids(urls):
    """The volume ids of ``cinder://`` locations (``cinder://ID`` or ``cinder://STORE/ID``)."""
    ids = []
    for url in urls:
        if not url:
            continue
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != 'cinder':
            continue
        volume_id = parts.path.rsplit('/', 1)[-1] if parts.path.strip('/') else parts.netloc
        if volume_id and volume_id not in ids:
            ids.append(volume_id)
    return ids


def _image_usable_by(image_meta, project_id):
    """Whether ``project_id`` may have a clone of this image's Image-Volume.

    Its owner may, and every project may use a public or community image.
    A shared image's members are not judged here: such a volume takes
    Cinder's own path (a clone only for the owner, else a download).
    """
    if image_meta.get('visibility') in ('public', 'community'):
        return True
    owner = image_meta.get('owner')
    return owner is not None and owner == project_id


def _tls_uri(export):
    """The export's ``nbds://`` URI: the address a peer reads it at."""
    for uri in export.get('uris') or []:
        if uri.startswith('nbds://'):
            return uri
    raise exception.VolumeBackendAPIException(
        data=_('volagent export %s has no nbds:// address: the agent needs a '
               'tcp: [nbd] listen address with [nbd] tls to serve other '
               'hosts') % export['id'])


def _attached_read_only(volume, connector):
    if (connector or {}).get('mode') == 'ro':
        return True
    admin = volume.admin_metadata or {}
    return admin.get('readonly') == 'True' or admin.get('attached_mode') == 'ro'

