// The volume-backed-image flow under Debian 12's real Cinder and Glance, with
// the real `cinder` and `glance` CLIs, over a real volagentd (XFS reflink
// pool `xfs`, ext4 copy pool `ext4`) through the volagent Cinder driver.
// The stack comes up once (test/helpers/openstack.ts); every subtest checks
// what Cinder and Glance say against what the agent and the pool files say.
import { createHash, randomBytes } from 'node:crypto';
import { open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';

import { fiemapExtents } from '../../src/clone/extents.js';
import { run } from '../helpers/run.js';
import { SYSTEM_PYTHON } from '../helpers/driver-unittest.js';
import { BACKEND_B, gib, HOST_B, listTable, OpenStack, PROJECTS, propertyTable, stackMissing } from '../helpers/openstack.js';

const MiB = 1024 * 1024;
const HOST = os.hostname();
const { one: P1, two: P2, admin: ADMIN, internal: INTERNAL } = PROJECTS;

type PoolName = 'xfs' | 'ext4';

const missing = stackMissing();
if (missing) {
  t.fail(`the openstack lane cannot run here: ${missing}`);
} else {
  const stack = new OpenStack({ poolBytes: 8 * 1024 * MiB });
  t.before(() => stack.start());
  t.teardown(async () => {
    if (!t.passing()) t.comment(await stack.errorsLogged());
    await stack.stop();
  });

  const agentId = (cinderId: string): string => `volume-${cinderId}`;

  /** `cinder create`, waited until available: its id. */
  const createVolume = async (project: string, pool: PoolName | 'a-any' | 'b-any', sizeGb: number, extra: string[] = []): Promise<string> => {
    const shown = propertyTable(await stack.cinder(project, ['create', '--volume-type', pool, ...extra, String(sizeGb)]));
    await stack.waitVolume(project, shown.id!, ['available']);
    return shown.id!;
  };

  const deleteVolume = async (project: string, id: string): Promise<void> => {
    await stack.cinder(project, ['delete', id]);
    await stack.waitVolumeGone(project, id);
  };

  /**
   * Attaches `id` to this host through Cinder, runs `use` on the device
   * path, and detaches. Read-write: `attachment-create --connect True`, in
   * one step. Read-only: `attachment-create --mode ro`, then
   * `attachment-update` with the connector, in two (Cinder 21 records the
   * mode of a one-step attachment after it has connected it, so the driver
   * would not see `ro`; glance_store attaches in two steps too). Checks the
   * connection is os-brick's local connector with a block device. (The
   * connection's `access_mode` is Cinder's own, from the volume's admin
   * metadata, not the attachment's mode: it says `rw` here either way.)
   */
  const withAttached = async <T>(project: string, id: string, mode: 'rw' | 'ro', use: (device: string) => Promise<T>): Promise<T> => {
    const connector = ['--ip', '127.0.0.1', '--host', HOST];
    let output: string;
    let attachmentId: string;
    if (mode === 'rw') {
      output = await stack.cinder(project, ['attachment-create', '--connect', 'True', ...connector, '--mode', mode, id], '3.54');
      attachmentId = output.split(/\n(?=\+)/).map(propertyTable).find((table) => table.attach_mode !== undefined)!.id!;
    } else {
      attachmentId = propertyTable(await stack.cinder(project, ['attachment-create', '--mode', mode, id], '3.54')).id!;
      output = await stack.cinder(project, ['attachment-update', ...connector, attachmentId], '3.54');
    }
    const connection = output.split(/\n(?=\+)/).map(propertyTable).find((table) => table.device_path !== undefined)!;
    try {
      if (connection.driver_volume_type !== 'local') throw new Error(`driver_volume_type ${connection.driver_volume_type}`);
      if (!(await stat(connection.device_path!)).isBlockDevice()) throw new Error(`${connection.device_path} is not a block device`);
      return await use(connection.device_path!);
    } finally {
      await stack.cinder(project, ['attachment-delete', attachmentId], '3.54');
      await stack.waitVolume(project, id, ['available']);
    }
  };

  const writeAt = async (device: string, offset: number, data: Buffer): Promise<void> => {
    const handle = await open(device, 'r+');
    try {
      await handle.write(data, 0, data.length, offset);
      await handle.sync();
    } finally {
      await handle.close();
    }
  };

  const readAt = async (file: string, offset: number, length: number): Promise<Buffer> => {
    const handle = await open(file, 'r');
    try {
      const buffer = Buffer.alloc(length);
      const { bytesRead } = await handle.read(buffer, 0, length, offset);
      return buffer.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  };

  const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

  /** Whether two files (or a file and a device) hold the same bytes over `length`. */
  const sameBytes = (a: string, b: string, length: number): Promise<boolean> =>
    run('cmp', ['-n', String(length), a, b]).then(() => true, () => false);

  /** Lines of glance-api's log that read image `imageId`'s data (GET .../file). */
  const imageDataReads = async (imageId: string): Promise<number> =>
    (await stack.glanceLog()).split('\n').filter((line) => line.includes('eventlet.wsgi.server') && line.includes(`"GET /v2/images/${imageId}/file`)).length;

  /** A glance image of `project` pointing at volume `volumeId` (`location-add cinder://`). */
  const imageOfVolume = async (project: string, name: string, volumeId: string): Promise<string> => {
    const created = propertyTable(await stack.glance(project, ['image-create', '--disk-format', 'raw', '--container-format', 'bare', '--name', name]));
    if (created.status !== 'queued') throw new Error(`image-create without data made a ${created.status} image`);
    const added = propertyTable(await stack.glance(project, ['location-add', created.id!, '--url', `cinder://${volumeId}`]));
    if (added.locations !== `[{"url": "cinder://${volumeId}", "metadata": {}}]`) throw new Error(`the image's locations are ${added.locations}`);
    return created.id!;
  };

  /** Cinder's admin metadata of a volume, read from its database (no CLI shows it). */
  const adminMetadata = async (volumeId: string): Promise<Record<string, string>> => {
    if (!/^[0-9a-f-]{36}$/.test(volumeId)) throw new Error(`not a volume id: ${volumeId}`);
    const rows = await stack.sql(`SELECT \`key\`, value FROM cinder.volume_admin_metadata WHERE volume_id = '${volumeId}' AND deleted = 0`);
    return Object.fromEntries(rows.split('\n').filter((row) => row !== '').map((row) => row.split('\t') as [string, string]));
  };

  const tenantOf = async (volumeId: string): Promise<string> =>
    propertyTable(await stack.cinder(ADMIN, ['show', volumeId]))['os-vol-tenant-attr:tenant_id']!;

  await t.test('stats: each agent pool is a Cinder pool with its capacities and thin provisioning', async (t) => {
    const agentPools = await stack.agent('/v1/pools') as Array<{ name: string; capacity: { totalBytes: number } }>;
    const listed = (await stack.cinder(ADMIN, ['get-pools', '--detail'])).split(/\n(?=\+-+\+-+\+\n\| Property)/).map(propertyTable);
    t.same(listed.map((p) => p.name).sort(), [`${HOST}@volagent#ext4`, `${HOST}@volagent#xfs`, `${HOST_B}@${BACKEND_B}#xfs`].sort(), 'host A\'s two pools and host B\'s one');
    for (const pool of agentPools) {
      const cinderPool = listed.find((p) => p.name === `${HOST}@volagent#${pool.name}`)!;
      t.equal(Number(cinderPool.total_capacity_gb), Math.round((pool.capacity.totalBytes / gib(1)) * 100) / 100, `${pool.name}: total capacity`);
      t.equal(cinderPool.thin_provisioning_support, 'True');
      t.equal(cinderPool.thick_provisioning_support, 'False');
      t.equal(cinderPool.max_over_subscription_ratio, '20.0');
      t.equal(cinderPool.storage_protocol, 'local');
      t.equal(cinderPool.volagent_reflink, pool.name === 'xfs' ? 'True' : 'False');
    }
  });

  for (const pool of ['xfs', 'ext4'] as const) {
    await t.test(`${pool}: create, attach read-write and read-only, delete`, async (t) => {
      const id = await createVolume(P1, pool, 1);
      const volume = await stack.agent(`/v1/volumes/${agentId(id)}`);
      t.match(volume, { pool, tenant: P1, sizeBytes: gib(1), kind: 'volume', cloneMethod: 'create', state: 'available' });
      const data = randomBytes(4 * MiB);
      await withAttached(P1, id, 'rw', (device) => writeAt(device, 3 * MiB, data));
      t.equal(sha(await readAt(stack.volumeFile(pool, agentId(id)), 3 * MiB, data.length)), sha(data), 'the write through the attached device is in the volume');
      t.same(await stack.agent('/v1/exports'), [], 'the detach removed the export');
      await withAttached(P1, id, 'ro', async (device) => {
        t.equal((await run('blockdev', ['--getro', device])).trim(), '1', 'a read-only attachment is a read-only block device');
        t.equal(sha(await readAt(device, 3 * MiB, data.length)), sha(data), 'it reads the volume');
        const [exported] = await stack.agent('/v1/exports') as Array<{ readOnly: boolean; protocol: string }>;
        t.match(exported, { protocol: 'block', readOnly: true });
      });
      await deleteVolume(P1, id);
      const after = await stack.agentRequest('GET', `/v1/volumes/${agentId(id)}`);
      t.equal(after.status, 404, 'the agent volume is gone');
      await t.rejects(stat(stack.volumeFile(pool, agentId(id))), { code: 'ENOENT' }, 'and its file');
    });
  }

  for (const pool of ['xfs', 'ext4'] as const) {
    await t.test(`${pool}: snapshot, volume from snapshot, clone (grown), revert, extend`, async (t) => {
      const id = await createVolume(P1, pool, 1);
      const file = stack.volumeFile(pool, agentId(id));
      const first = randomBytes(2 * MiB);
      await withAttached(P1, id, 'rw', (device) => writeAt(device, MiB, first));
      const snapshot = propertyTable(await stack.cinder(P1, ['snapshot-create', id])).id!;
      await stack.waitSnapshot(P1, snapshot, ['available']);
      const agentSnapshot = await stack.agent(`/v1/volumes/${agentId(id)}/snapshots/snapshot-${snapshot}`);
      t.match(agentSnapshot, { volume: agentId(id), pool, state: 'available', cloneMethod: pool === 'xfs' ? 'reflink' : 'copy_file_range' });
      const second = randomBytes(2 * MiB);
      await withAttached(P1, id, 'rw', (device) => writeAt(device, MiB, second));

      const fromSnapshot = await createVolume(P1, pool, 2, ['--snapshot-id', snapshot]);
      t.match(await stack.agent(`/v1/volumes/${agentId(fromSnapshot)}`), { pool, tenant: P1, sizeBytes: gib(2), source: { snapshot: `snapshot-${snapshot}` } });
      t.equal(sha(await readAt(stack.volumeFile(pool, agentId(fromSnapshot)), MiB, first.length)), sha(first), 'the volume from the snapshot holds the snapshot\'s bytes');

      const clone = await createVolume(P1, pool, 2, ['--source-volid', id]);
      t.match(await stack.agent(`/v1/volumes/${agentId(clone)}`), { pool, sizeBytes: gib(2), source: { volume: agentId(id) }, cloneMethod: pool === 'xfs' ? 'reflink' : 'copy_file_range' });
      t.ok(await sameBytes(file, stack.volumeFile(pool, agentId(clone)), gib(1)), 'the clone holds the source\'s bytes');

      await stack.cinder(P1, ['revert-to-snapshot', snapshot], '3.40');
      await stack.waitVolume(P1, id, ['available']);
      t.equal(sha(await readAt(file, MiB, first.length)), sha(first), 'reverted: the volume holds the snapshot\'s bytes again');

      await stack.cinder(P1, ['extend', id, '3']);
      await stack.waitVolume(P1, id, ['available']);
      t.equal((await stack.agent(`/v1/volumes/${agentId(id)}`)).sizeBytes, gib(3), 'extended');
      t.equal((await stat(file)).size, gib(3));

      await stack.cinder(P1, ['snapshot-delete', snapshot]);
      for (let i = 0; i < 240; i += 1) {
        const listed = listTable(await stack.cinder(P1, ['snapshot-list']));
        if (!listed.some((row) => row.ID === snapshot)) break;
        await new Promise((r) => setTimeout(r, 500));
      }
      t.same(await stack.agent(`/v1/volumes/${agentId(id)}/snapshots`), [], 'the agent snapshot is gone');
      for (const volume of [id, fromSnapshot, clone]) await deleteVolume(P1, volume);
    });
  }

  await t.test('manage an agent volume into Cinder, and unmanage it', async (t) => {
    const put = await stack.agentRequest('PUT', '/v1/volumes/legacy-1', { pool: 'xfs', tenant: 'before-cinder', sizeBytes: gib(1) + 512 * 1024 });
    t.equal(put.status, 201);
    const managed = propertyTable(await stack.cinder(P1, ['manage', '--id-type', 'source-name', '--name', 'managed', '--volume-type', 'xfs', `${HOST}@volagent#xfs`, 'legacy-1']));
    await stack.waitVolume(P1, managed.id!, ['available']);
    t.equal(propertyTable(await stack.cinder(P1, ['show', managed.id!])).size, '2', 'Cinder counts whole GiB');
    t.match(await stack.agent('/v1/volumes/legacy-1'), { tenant: P1, sizeBytes: gib(2) }, 'the agent volume is the project\'s now, grown to what Cinder records');
    const data = randomBytes(MiB);
    await withAttached(P1, managed.id!, 'rw', (device) => writeAt(device, 0, data));
    t.equal(sha(await readAt(stack.volumeFile('xfs', 'legacy-1'), 0, data.length)), sha(data), 'Cinder\'s volume is the managed agent volume');
    await stack.cinder(P1, ['unmanage', managed.id!]);
    await stack.waitVolumeGone(P1, managed.id!);
    t.match(await stack.agent('/v1/volumes/legacy-1'), { state: 'available', tenant: P1 }, 'unmanage keeps the agent volume');
    t.equal(sha(await readAt(stack.volumeFile('xfs', 'legacy-1'), 0, data.length)), sha(data), 'and its data');
    t.equal((await stack.agentRequest('DELETE', '/v1/volumes/legacy-1')).status, 204);
    // What Cinder could manage besides agent volumes: objects of the pools' storage that the
    // agent did not make. These are file pools, which adopt nothing (an lvm pool lists the
    // thin LVs it did not make, and adopts one: test/vm/guest/lvm-agent.ts).
    const manageable = await stack.cinder(ADMIN, ['manageable-list', `${HOST}@volagent`], '3.8');
    t.match(manageable, /reference/, `cinder manageable-list answered its table (${manageable.trim()})`);
    t.same(listTable(manageable), [], 'with no row: file pools adopt nothing');
  });

  await t.test('transfer a volume to another project: the agent record moves with it', async (t) => {
    const id = await createVolume(P1, 'ext4', 1);
    const transfer = propertyTable(await stack.cinder(P1, ['transfer-create', id]));
    await stack.cinder(P2, ['transfer-accept', transfer.id!, transfer.auth_key!]);
    t.equal(await tenantOf(id), P2, 'Cinder: the volume is the second project\'s');
    t.equal((await stack.agent(`/v1/volumes/${agentId(id)}`)).tenant, P2, 'the agent: its tenant is the second project');
    await deleteVolume(P2, id);
  });

  await t.test('Image-Volumes: location-add cinder://, create --image clones, upload-to-image, public and private', async (t) => {
    const source = await createVolume(P1, 'ext4', 1);
    const sourceFile = stack.volumeFile('ext4', agentId(source));
    const data = randomBytes(8 * MiB);
    await withAttached(P1, source, 'rw', (device) => writeAt(device, 5 * MiB, data));

    const image = await imageOfVolume(P1, 'from-volume', source);
    const shown = await stack.waitImage(P1, image, ['active']);
    t.equal(shown.size, String(gib(1)), 'the image is active with the volume\'s size');

    // Same pool, and across pools: both clone (no download). copy_file_range
    // copies within the ext4 filesystem; between two filesystems the kernel
    // refuses it (EXDEV) and the agent copies the data extents by read/write.
    for (const [pool, method] of [['ext4', 'copy_file_range'], ['xfs', 'read_write']] as const) {
      const id = await createVolume(P1, pool, 1, ['--image', image]);
      const made = await stack.agent(`/v1/volumes/${agentId(id)}`);
      t.match(made, { pool, tenant: P1, source: { volume: agentId(source) }, cloneMethod: method }, `${pool}: cloned from the Image-Volume`);
      t.ok(await sameBytes(sourceFile, stack.volumeFile(pool, agentId(id)), gib(1)), `${pool}: the bytes are the source's`);
      await deleteVolume(P1, id);
    }
    t.equal(await imageDataReads(image), 0, 'Glance never served the image\'s data');

    // upload-to-image: a clone into the internal tenant, registered as cinder://.
    const { imageId: uploadedId, image: uploadedImage } = await stack.uploadToImage(P1, source, ['--disk-format', 'raw', '--container-format', 'bare', source, 'uploaded']);
    const location = /cinder:\/\/([0-9a-f-]{36})/.exec(uploadedImage.locations!)?.[1];
    t.ok(location, `the image's location is cinder:// (${uploadedImage.locations})`);
    t.equal(uploadedImage.owner, P1, 'the image is the project\'s');
    t.equal(await tenantOf(location!), INTERNAL, 'its Image-Volume is in Cinder\'s internal tenant');
    t.equal((await adminMetadata(location!)).readonly, 'True', 'and read-only');
    t.match(await stack.agent(`/v1/volumes/${agentId(location!)}`), { tenant: INTERNAL, source: { volume: agentId(source) } });
    t.ok(await sameBytes(sourceFile, stack.volumeFile('ext4', agentId(location!)), gib(1)), 'the Image-Volume holds the volume\'s bytes');

    const again = await createVolume(P1, 'xfs', 1, ['--image', uploadedId]);
    t.match(await stack.agent(`/v1/volumes/${agentId(again)}`), { pool: 'xfs', source: { volume: agentId(location!) } }, 'a volume from the uploaded image clones its Image-Volume');
    t.equal(await imageDataReads(uploadedId), 0);
    await deleteVolume(P1, again);

    // A public image serves the second project; a private one does not.
    await stack.glance(ADMIN, ['image-update', '--visibility', 'public', image]);
    const theirs = await createVolume(P2, 'xfs', 1, ['--image', image]);
    t.match(await stack.agent(`/v1/volumes/${agentId(theirs)}`), { tenant: P2, source: { volume: agentId(source) } }, 'the second project clones the public image');
    t.ok(await sameBytes(sourceFile, stack.volumeFile('xfs', agentId(theirs)), gib(1)));
    await deleteVolume(P2, theirs);
    const volumesBefore = await stack.agent('/v1/volumes');
    const refused = await stack.cinderRaw(P2, ['create', '--volume-type', 'xfs', '--image', uploadedId, '1']);
    t.not(refused.code, 0, 'the second project cannot make a volume of the first one\'s private image');
    t.match(refused.stderr, /Invalid image identifier or unable to access requested image/);
    t.same(await stack.agent('/v1/volumes'), volumesBefore, 'and the agent made nothing');
    t.equal(await imageDataReads(uploadedId), 0, 'nor did Glance serve its bytes');

    // glance image-download of a cinder:// image: through the driver's read-only attach.
    const downloaded = path.join(stack.dir, 'downloaded.raw');
    await stack.glance(P1, ['image-download', '--file', downloaded, uploadedId]);
    t.ok(await sameBytes(downloaded, sourceFile, gib(1)), 'image-download of a cinder:// image gives the volume\'s bytes');
    t.equal((await stat(downloaded)).size, gib(1));
    await rm(downloaded);
    t.same(await stack.agent('/v1/exports'), [], 'no export is left');

    await stack.glance(P1, ['image-delete', uploadedId]);
    await stack.waitVolumeGone(ADMIN, location!);
    // A volume given to Glance with location-add is the image's data now: deleting the image deletes it.
    await stack.glance(ADMIN, ['image-delete', image]);
    await stack.waitVolumeGone(P1, source);
    t.equal((await stack.agentRequest('GET', `/v1/volumes/${agentId(source)}`)).status, 404, 'deleting the image deleted its volume');
  });

  await t.test('the image-volume cache: the first volume from a file-store image downloads into an entry, the next clones it', async (t) => {
    const imageFile = path.join(stack.dir, 'file-store.raw');
    const data = randomBytes(16 * MiB);
    await writeFile(imageFile, Buffer.alloc(0));
    const handle = await open(imageFile, 'r+');
    await handle.truncate(gib(1));
    await handle.write(data, 0, data.length, 100 * MiB);
    await handle.close();
    const image = propertyTable(await stack.glance(P1, ['image-create', '--disk-format', 'raw', '--container-format', 'bare', '--name', 'file-store', '--file', imageFile])).id!;
    await stack.waitImage(P1, image, ['active']);

    const first = await createVolume(P1, 'ext4', 1, ['--image', image]);
    t.equal(await imageDataReads(image), 1, 'the first volume downloaded the image once');
    t.ok(await sameBytes(imageFile, stack.volumeFile('ext4', agentId(first)), gib(1)), 'with the image\'s bytes');
    const all = listTable(await stack.cinder(ADMIN, ['list', '--all-tenants']));
    const entry = all.find((row) => row.Name === `image-${image}` && row['Tenant ID'] === INTERNAL);
    t.ok(entry, 'Cinder made a cache entry in its internal tenant');
    t.match(await stack.agent(`/v1/volumes/${agentId(entry!.ID!)}`), { tenant: INTERNAL });

    const second = await createVolume(P1, 'ext4', 1, ['--image', image]);
    t.match(await stack.agent(`/v1/volumes/${agentId(second)}`), { source: { volume: agentId(entry!.ID!) } }, 'the second volume is a clone of the cache entry');
    t.equal(await imageDataReads(image), 1, 'no second download');
    t.ok(await sameBytes(imageFile, stack.volumeFile('ext4', agentId(second)), gib(1)));

    // The entry goes first: the volumes cloned from it do not depend on it.
    await deleteVolume(ADMIN, entry!.ID!);
    t.ok(await sameBytes(imageFile, stack.volumeFile('ext4', agentId(second)), gib(1)), 'the clone of the deleted entry keeps its bytes');
    for (const id of [first, second]) await deleteVolume(P1, id);
    await stack.glance(P1, ['image-delete', image]);
    await rm(imageFile);
  });

  /** The physical byte ranges of a pool file (FIEMAP), as [start, end) pairs. */
  const physicalRanges = async (file: string): Promise<Array<[number, number]>> => {
    const handle = await open(file, 'r');
    try {
      const extents = await fiemapExtents(handle.fd, (await handle.stat()).size, file);
      return extents.map((e) => [e.physical, e.physical + e.length] as [number, number]);
    } finally {
      await handle.close();
    }
  };
  const overlaps = (a: Array<[number, number]>, b: Array<[number, number]>): boolean =>
    a.some(([s1, e1]) => b.some(([s2, e2]) => s1 < e2 && s2 < e1));

  await t.test('a new volume never shows the data of a deleted one, also where it reuses its blocks', async (t) => {
    for (const pool of ['xfs', 'ext4'] as const) {
      const id = await createVolume(P1, pool, 1);
      await withAttached(P1, id, 'rw', (device) => writeAt(device, 0, Buffer.alloc(256 * MiB, 0xa5)));
      const oldBlocks = await physicalRanges(stack.volumeFile(pool, agentId(id)));
      await deleteVolume(P1, id);
      let reused = false;
      for (let i = 0; i < 8 && !reused; i += 1) {
        const fresh = await createVolume(P1, pool, 1);
        // New data lands past the old pattern's offsets: the first 256 MiB of the new volume stay unwritten.
        await withAttached(P1, fresh, 'rw', (device) => writeAt(device, 512 * MiB, Buffer.alloc(256 * MiB, 0x11)));
        reused = overlaps(oldBlocks, await physicalRanges(stack.volumeFile(pool, agentId(fresh))));
        await withAttached(P1, fresh, 'ro', async (device) => {
          t.equal(sha(await readAt(device, 0, 512 * MiB)), sha(Buffer.alloc(512 * MiB)), `${pool}: new volume ${i + 1} reads zeros where it was not written`);
          t.equal(sha(await readAt(device, 512 * MiB, 256 * MiB)), sha(Buffer.alloc(256 * MiB, 0x11)), 'and its own data where it was');
        });
        await deleteVolume(P1, fresh);
      }
      t.ok(reused, `${pool}: a new volume was given blocks the deleted one had held`);
    }
  });

  await t.test('deletes in any order never leave error_deleting; clones outlive their origins', async (t) => {
    const volumesBefore = await stack.agent('/v1/volumes');
    const orders = [['source', 'image', 'clone'], ['source', 'clone', 'image'], ['image', 'source', 'clone'],
      ['image', 'clone', 'source'], ['clone', 'source', 'image'], ['clone', 'image', 'source']];
    for (const [index, order] of orders.entries()) {
      const pool: PoolName = index % 2 === 0 ? 'xfs' : 'ext4';
      const source = await createVolume(P1, pool, 1);
      const data = randomBytes(MiB);
      await withAttached(P1, source, 'rw', (device) => writeAt(device, 0, data));
      const { imageId, image } = await stack.uploadToImage(P1, source, ['--disk-format', 'raw', '--container-format', 'bare', source, `order-${index}`]);
      const imageVolume = /cinder:\/\/([0-9a-f-]{36})/.exec(image.locations!)![1]!;
      const clone = await createVolume(P1, pool, 1, ['--image', imageId]);
      t.match(await stack.agent(`/v1/volumes/${agentId(clone)}`), { source: { volume: agentId(imageVolume) } });
      for (const what of order) {
        if (what === 'source') await deleteVolume(P1, source);
        if (what === 'image') {
          await stack.glance(P1, ['image-delete', imageId]);
          await stack.waitVolumeGone(ADMIN, imageVolume);
        }
        if (what === 'clone') {
          t.equal(sha(await readAt(stack.volumeFile(pool, agentId(clone)), 0, data.length)), sha(data), `${order.join(',')}: the clone reads its bytes before its own delete`);
          await deleteVolume(P1, clone);
        }
      }
      for (const id of [source, imageVolume, clone]) {
        t.equal((await stack.agentRequest('GET', `/v1/volumes/${agentId(id)}`)).status, 404, `${pool} ${order.join(' → ')}: ${id} gone from the agent`);
      }
    }
    t.same(await stack.agent('/v1/volumes'), volumesBefore, 'the agent holds what it held before');
  });

  await t.test('copy volume to image: upload-to-image with container format ovf takes Cinder\'s generic path through the local attach', async (t) => {
    // Only raw and bare is registered as cinder:// (the clone path); anything else is Cinder's
    // generic copy_volume_to_image: attach, read the device, upload to Glance's store.
    const id = await createVolume(P1, 'xfs', 1);
    const data = randomBytes(6 * MiB);
    await withAttached(P1, id, 'rw', (device) => writeAt(device, 200 * MiB, data));
    const { imageId, image } = await stack.uploadToImage(P1, id, ['--disk-format', 'raw', '--container-format', 'ovf', id, 'as-ovf'], 300_000);
    t.equal(image.container_format, 'ovf');
    t.notMatch(image.locations ?? '', /cinder:/, 'stored in Glance\'s file store, not registered as cinder://');
    const downloaded = path.join(stack.dir, 'as-ovf.raw');
    await stack.glance(P1, ['image-download', '--file', downloaded, imageId]);
    t.equal((await stat(downloaded)).size, gib(1));
    t.ok(await sameBytes(downloaded, stack.volumeFile('xfs', agentId(id)), gib(1)), 'the image holds the volume\'s bytes');
    t.same(await stack.agent('/v1/exports'), [], 'Cinder\'s attach for the upload left no export');
    await stack.glance(P1, ['image-delete', imageId]);
    await deleteVolume(P1, id);
    await rm(downloaded);
  });

  await t.test('glance image-create --file into the cinder store, and image-download of it', async (t) => {
    await stack.restartGlance('cinder');
    const imageFile = path.join(stack.dir, 'upload.raw');
    const data = randomBytes(24 * MiB);
    await writeFile(imageFile, data);
    const created = propertyTable(await stack.glance(P1, ['image-create', '--disk-format', 'raw', '--container-format', 'bare', '--name', 'into-cinder', '--file', imageFile]));
    const shown = await stack.waitImage(P1, created.id!, ['active']);
    const volumeId = /cinder:\/\/([0-9a-f-]{36})/.exec(shown.locations!)?.[1];
    t.ok(volumeId, `stored in a Cinder volume (${shown.locations})`);
    t.match(propertyTable(await stack.cinder(ADMIN, ['show', volumeId!]))['os-vol-host-attr:host'], new RegExp(`^${HOST}@volagent#`), "on host A: Cinder's default type (a-any)");
    const agentVolume = await stack.agent(`/v1/volumes/${agentId(volumeId!)}`);
    t.equal(sha(await readAt(stack.volumeFile(agentVolume.pool as PoolName, agentId(volumeId!)), 0, data.length)), sha(data), 'the agent volume holds the uploaded bytes');
    const downloaded = path.join(stack.dir, 'downloaded.raw');
    await stack.glance(P1, ['image-download', '--file', downloaded, created.id!]);
    t.equal(sha(await readFile(downloaded)), sha(data), 'image-download gives them back');
    t.same(await stack.agent('/v1/exports'), [], 'no export is left');
    await stack.glance(P1, ['image-delete', created.id!]);
    await stack.waitVolumeGone(ADMIN, volumeId!);
    await rm(downloaded);
    await rm(imageFile);
  });

  // --- two hosts: each its own cinder-volume and agent, the agents in their own namespaces ---

  /** Host B's agent volumes that were pulled from `sourceAgentId` on host A. */
  const pulledOnB = async (sourceAgentId: string): Promise<Array<Record<string, any>>> =>
    ((await stack.agentB('GET', '/v1/volumes')).json as Array<Record<string, any>>).filter((v) => v.source?.remote?.volume === sourceAgentId);

  const hostOf = async (id: string): Promise<string> => propertyTable(await stack.cinder(ADMIN, ['show', id]))['os-vol-host-attr:host']!;

  /** Waits until `cinder show` says the migration ended (success or error): the final table. */
  const waitMigration = async (id: string): Promise<Record<string, string>> => {
    const deadline = Date.now() + 300_000;
    for (;;) {
      const shown = propertyTable(await stack.cinder(ADMIN, ['show', id]));
      if (['success', 'error'].includes(shown.migration_status!)) return shown;
      if (Date.now() > deadline) throw new Error(`volume ${id}: migration still ${shown.migration_status} after 300 s`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  };

  await t.test('two hosts: create --image on host B pulls the Image-Volume of host A over NBD with TLS, and its image-volume cache keeps it; Glance serves no data', async (t) => {
    const source = await createVolume(P1, 'xfs', 1);
    const data = randomBytes(6 * MiB);
    await withAttached(P1, source, 'rw', (device) => writeAt(device, 300 * MiB, data));
    const { imageId, image } = await stack.uploadToImage(P1, source, ['--disk-format', 'raw', '--container-format', 'bare', source, 'on-host-a']);
    const location = /cinder:\/\/([0-9a-f-]{36})/.exec(image.locations!)?.[1];
    t.ok(location, `the image's location is cinder:// (${image.locations})`);
    t.match(await hostOf(location!), new RegExp(`^${HOST}@volagent#`), 'its Image-Volume is on host A');

    const id = await createVolume(P1, 'b-any', 1, ['--image', imageId]);
    t.equal(await hostOf(id), `${HOST_B}@${BACKEND_B}#xfs`, 'the new volume is on host B');
    const made = (await stack.agentB('GET', `/v1/volumes/${agentId(id)}`)).json;
    t.match(made, { pool: 'xfs', tenant: P1, cloneMethod: 'nbd_pull', source: { remote: { volume: agentId(location!), sizeBytes: gib(1) } } }, 'host B\'s agent pulled it from host A\'s Image-Volume');
    t.match(made.source.remote.uri, new RegExp(`^nbds://${stack.hosts[0]!.address}:10809/exp-`), 'over TLS, from host A\'s address');
    t.ok(await sameBytes(stack.volumeFile('xfs', agentId(location!)), stack.volumeFileB(agentId(id)), gib(1)), 'the bytes are the Image-Volume\'s');
    const allocated = (await stat(stack.volumeFileB(agentId(id)))).blocks * 512;
    t.ok(allocated <= 16 * MiB, `sparse on host B: ${allocated / MiB} MiB allocated for 6 MiB of data`);
    t.equal(await imageDataReads(imageId), 0, 'Glance never served the image\'s data');
    t.same(await stack.agent('/v1/exports'), [], 'host A\'s export for the pull is gone');
    t.same((await stack.agentB('GET', '/v1/exports')).json, [], 'host B has no export');

    // Host B's image-volume cache keeps the pulled image: the next volume of it there clones the entry.
    const onB = (await stack.agentB('GET', '/v1/volumes')).json as Array<Record<string, any>>;
    const entries = onB.filter((v) => v.source?.volume === agentId(id));
    t.equal(entries.length, 1, 'host B keeps one cache entry, cloned from the pulled volume');
    t.match(entries[0], { tenant: INTERNAL, pool: 'xfs', cloneMethod: 'reflink' }, 'in Cinder\'s internal tenant, a reflink (no second pull)');
    const entryId = (entries[0]!.id as string).replace(/^volume-/, '');
    t.match(propertyTable(await stack.cinder(ADMIN, ['show', entryId])), { name: `image-${imageId}`, 'os-vol-host-attr:host': `${HOST_B}@${BACKEND_B}#xfs` }, 'Cinder knows it as the image\'s cache volume on host B');
    const second = await createVolume(P1, 'b-any', 1, ['--image', imageId]);
    t.match((await stack.agentB('GET', `/v1/volumes/${agentId(second)}`)).json, { cloneMethod: 'reflink', source: { volume: entries[0]!.id } }, 'the second volume on host B clones the cache entry');
    t.equal(((await stack.agentB('GET', '/v1/volumes')).json as Array<Record<string, any>>).filter((v) => v.source?.remote).length,
      onB.filter((v) => v.source?.remote).length, 'nothing was pulled again');
    t.ok(await sameBytes(stack.volumeFile('xfs', agentId(location!)), stack.volumeFileB(agentId(second)), gib(1)), 'its bytes are the Image-Volume\'s');
    t.equal(await imageDataReads(imageId), 0, 'Glance still served no data');
    await deleteVolume(P1, second);
    await deleteVolume(P1, id);
    t.equal((await stack.agentB('GET', `/v1/volumes/${agentId(id)}`)).status, 404, 'deleting it through Cinder deleted it on host B');
    // The entry is Cinder's to evict; it goes with its volume here, through Cinder.
    await stack.cinder(ADMIN, ['delete', entryId]);
    await stack.waitVolumeGone(ADMIN, entryId);
    await stack.glance(P1, ['image-delete', imageId]);
    await stack.waitVolumeGone(ADMIN, location!);
    await deleteVolume(P1, source);
  });

  for (const how of ['migrate', 'retype'] as const) {
    await t.test(`two hosts: cinder ${how} moves a volume from host A to host B by the driver's pull, not Cinder's copy`, async (t) => {
      const data = randomBytes(5 * MiB);
      let id: string;
      let sourceAgentId: string;
      let pool: PoolName;
      if (how === 'migrate') {
        // A volume of type `plain` (no extra specs, so host B passes the scheduler's filters), put on host A by manage.
        sourceAgentId = 'to-migrate';
        pool = 'xfs';
        t.equal((await stack.agentRequest('PUT', `/v1/volumes/${sourceAgentId}`, { pool, tenant: P1, sizeBytes: gib(1) })).status, 201);
        const managed = propertyTable(await stack.cinder(P1, ['manage', '--id-type', 'source-name', '--volume-type', 'plain', `${HOST}@volagent#${pool}`, sourceAgentId]));
        id = managed.id!;
        await stack.waitVolume(P1, id, ['available']);
      } else {
        id = await createVolume(P1, 'a-any', 1);
        sourceAgentId = agentId(id);
        pool = (await hostOf(id)).split('#')[1] as PoolName;
      }
      await withAttached(P1, id, 'rw', (device) => writeAt(device, 700 * MiB, data));
      const before = createHash('sha256').update(await readFile(stack.volumeFile(pool, sourceAgentId))).digest('hex');
      if (how === 'migrate') await stack.cinder(ADMIN, ['migrate', id, `${HOST_B}@${BACKEND_B}#xfs`]);
      else await stack.cinder(P1, ['retype', '--migration-policy', 'on-demand', id, 'b-any']);
      const shown = await waitMigration(id);
      t.equal(shown.migration_status, 'success', `${how}: the migration succeeded`);
      await stack.waitVolume(P1, id, ['available']);
      t.equal(await hostOf(id), `${HOST_B}@${BACKEND_B}#xfs`, 'the volume is on host B now');
      if (how === 'retype') t.equal(propertyTable(await stack.cinder(ADMIN, ['show', id])).volume_type, 'b-any', 'and of the new type');
      const pulled = await pulledOnB(sourceAgentId);
      t.equal(pulled.length, 1, 'host B\'s agent holds one volume pulled from it');
      t.match(pulled[0], { pool: 'xfs', tenant: P1, cloneMethod: 'nbd_pull', sizeBytes: gib(1) });
      const file = stack.volumeFileB(pulled[0]!.id as string);
      t.equal(createHash('sha256').update(await readFile(file)).digest('hex'), before, 'with the volume\'s bytes');
      t.equal((await stack.agentRequest('GET', `/v1/volumes/${sourceAgentId}`)).status, 404, 'host A\'s copy is gone');
      t.same(await stack.agent('/v1/exports'), [], 'host A has no export left');
      // Cinder finds the moved volume under its new name: an attach reads the bytes from host B.
      const read = await withAttached(P1, id, 'ro', (device) => readAt(device, 700 * MiB, data.length));
      t.equal(sha(read), sha(data), 'an attach through Cinder reads the data on host B');
      const log = await stack.cinderLog('cinder-volume');
      t.match(log, `Volume ${id} migrated to ${HOST_B}@${BACKEND_B}#xfs by a pull.`, 'host A\'s driver moved it');
      t.notMatch(log, `_copy_volume_data volume-${id}`, 'Cinder did not copy it generically');
      await deleteVolume(P1, id);
      t.equal((await stack.agentB('GET', `/v1/volumes/${pulled[0]!.id as string}`)).status, 404, 'deleting it through Cinder deleted it on host B');
    });
  }

  await t.test('two hosts: migrate --force-host-copy is Cinder\'s generic copy, also of a managed volume (its provider_id is not the new volume\'s)', async (t) => {
    const sourceAgentId = 'to-copy';
    t.equal((await stack.agentRequest('PUT', `/v1/volumes/${sourceAgentId}`, { pool: 'xfs', tenant: P1, sizeBytes: gib(1) })).status, 201);
    const id = propertyTable(await stack.cinder(P1, ['manage', '--id-type', 'source-name', '--volume-type', 'plain', `${HOST}@volagent#xfs`, sourceAgentId])).id!;
    await stack.waitVolume(P1, id, ['available']);
    const data = randomBytes(3 * MiB);
    await withAttached(P1, id, 'rw', (device) => writeAt(device, 100 * MiB, data));
    const before = (await stack.agentB('GET', '/v1/volumes')).json as Array<{ id: string }>;
    await stack.cinder(ADMIN, ['migrate', '--force-host-copy', 'True', id, `${HOST_B}@${BACKEND_B}#xfs`]);
    t.equal((await waitMigration(id)).migration_status, 'success');
    await stack.waitVolume(P1, id, ['available']);
    t.equal(await hostOf(id), `${HOST_B}@${BACKEND_B}#xfs`, 'the volume is on host B');
    const made = ((await stack.agentB('GET', '/v1/volumes')).json as Array<Record<string, any>>).filter((v) => !before.some((b) => b.id === v.id));
    t.equal(made.length, 1, 'host B\'s agent made one volume');
    t.match(made[0], { id: /^volume-/, cloneMethod: 'create', tenant: P1 }, 'an empty volume that Cinder filled (no pull)');
    t.notOk(made[0]!.source, 'with no source');
    t.equal((await stack.agentRequest('GET', `/v1/volumes/${sourceAgentId}`)).status, 404, 'host A\'s copy is gone');
    const read = await withAttached(P1, id, 'ro', (device) => readAt(device, 100 * MiB, data.length));
    t.equal(sha(read), sha(data), 'an attach through Cinder reads the data on host B');
    t.match(await stack.cinderLog('cinder-volume'), `_copy_volume_data volume-${id}`, 'Cinder copied it generically');
    await deleteVolume(P1, id);
    t.equal((await stack.agentB('GET', `/v1/volumes/${made[0]!.id as string}`)).status, 404);
  });
}
