// Guest-only tap file: a real volagentd with a `thin` pool on the guest's
// kernel, run by test/vm/thin-pool.test.ts with four virtio disks: vda data
// (64 MiB) and vdb metadata (8 MiB) of the agent's pool; vdc and vdd hold a
// pool made beside the agent, whose metadata the agent must refuse.
// Each subtest builds on the previous one (one pool, one catalog), in order:
// bad devices refused; format; volumes, clones and patterns; images; restart;
// re-activation after the devices are gone; kill -9 at failpoints; fill the pool.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';
import type { Test } from 'tap';

import { native } from '../../../src/native/binding.js';
import { blockDeviceSize } from '../../../src/pools/thin/block-device.js';
import { parseThinPoolStatus, thinPoolTarget } from '../../../src/devices/dm-thin.js';
import type { DeviceNumber } from '../../../src/devices/dm-thin.js';
import type { AgentProcess, ThinPoolSpec } from '../../helpers/agent.js';
import { downloadOn, outcomeOf, spawnAgent, startAgent, streamOn, writeAgentConfig } from '../../helpers/agent.js';
import type { ThinRows } from '../../helpers/thin-state.js';
import {
  activeThinIds as activeThinIdsOf, poolStatus as poolStatusOf, poolThinIds as poolThinIdsOf, readThinRows as readThinRowsOf, removeAgentDevices,
} from '../../helpers/thin-state.js';
import { inVmGuest } from '../../helpers/vm.js';

const MiB = 1024 * 1024;
const KiB = 1024;
const POOL = 'thin0';
const POOL_DM = `volagent-${POOL}-pool`;
const DEVICE_DIR = '/dev/volagent-test';
const OTHER_POOL_DM = 'volagent-test-other-pool';

function nodeOf(name: string): string {
  return path.join(DEVICE_DIR, POOL, name);
}

async function writePattern(node: string, byte: number, bytes = MiB, offset = 0): Promise<void> {
  const handle = await open(node, 'r+');
  try {
    await handle.write(Buffer.alloc(bytes, byte), 0, bytes, offset);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function readRange(node: string, bytes = MiB, offset = 0): Promise<Buffer> {
  const handle = await open(node, 'r');
  try {
    const buffer = Buffer.alloc(bytes);
    await handle.read(buffer, 0, bytes, offset);
    return buffer;
  } finally {
    await handle.close();
  }
}

function filled(byte: number, bytes = MiB): Buffer {
  return Buffer.alloc(bytes, byte);
}

async function devNumber(disk: string): Promise<DeviceNumber> {
  return (await readFile(`/sys/block/${disk}/dev`, 'utf8')).trim() as DeviceNumber;
}

async function head(device: string, bytes = 4096): Promise<Buffer> {
  return readRange(device, bytes, 0);
}

const readThinRows = (catalogPath: string): ThinRows => readThinRowsOf(catalogPath, POOL);
const activeThinIds = (): Promise<number[]> => activeThinIdsOf(POOL);
const poolThinIds = (metadataDevice: string): Promise<number[]> => poolThinIdsOf(POOL, metadataDevice);
const poolStatus = (): ReturnType<typeof poolStatusOf> => poolStatusOf(POOL);

/** The invariant after every restart: catalog rows, active devices and the pool's metadata name the same thin ids. */
async function checkConsistent(t: Test, catalogPath: string, metadataDevice: string, label: string): Promise<void> {
  const rows = readThinRows(catalogPath);
  const ids = rows.devices.map((d) => d.thin_id);
  t.equal(rows.pool?.pending, null, `${label}: no change pending in the catalog`);
  t.same(await activeThinIds(), ids, `${label}: the active devices are the catalog's`);
  t.same(await poolThinIds(metadataDevice), ids, `${label}: the pool's metadata holds exactly the catalog's thin ids`);
  const status = await poolStatus();
  t.equal(status.state === 'working' && status.transactionId, rows.pool?.transaction_id, `${label}: pool and catalog agree on the transaction id`);
  t.same(rows.volumes.filter((v) => v.state !== 'available'), [], `${label}: no volume row in a transitional state`);
}

const removeEveryAgentDevice = (): Promise<void> => removeAgentDevices(POOL);

/** Loop devices bound to `file`, from sysfs. */
async function loopsBoundTo(file: string): Promise<string[]> {
  const bound: string[] = [];
  for (const entry of (await readdir('/sys/block')).filter((e) => /^loop\d+$/.test(e))) {
    const backing = await readFile(`/sys/block/${entry}/loop/backing_file`, 'utf8').catch(() => '');
    if (backing.trim() === file) bound.push(`/dev/${entry}`);
  }
  return bound;
}

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/thin-pool.test.ts');
} else {
  const [DATA, META, OTHER_META] = ['/dev/vda', '/dev/vdb', '/dev/vdd'];
  /** Agents outlive the subtest that starts them: the next one uses or restarts them. */
  const top = t;
  t.setTimeout(480_000); // some 10 agent start-ups under TCG; the host side bounds the whole VM

  const dir = await mkdtemp('/tmp/thin-agent-');
  const catalogPath = path.join(dir, 'catalog.db');
  const thinPool = (extra: Partial<ThinPoolSpec> = {}): ThinPoolSpec => ({
    name: POOL, backend: 'thin', dataDevice: DATA, metadataDevice: META, deviceDir: DEVICE_DIR, blockSize: '64KiB', minFree: '5%', lowWater: '20%', ...extra,
  });
  const spec = (extra: { pool?: Partial<ThinPoolSpec>; env?: NodeJS.ProcessEnv } = {}) => ({
    dir, pools: [thinPool(extra.pool)], startTimeoutMs: 120_000, ...(extra.env ? { env: extra.env } : {}),
  });
  t.teardown(async () => {
    await removeEveryAgentDevice().catch(() => undefined);
    await native.dmRemove(OTHER_POOL_DM).catch(() => undefined);
  });

  /** Starts volagentd on `config` expecting it to refuse to start; its stderr and exit code. */
  const refusedStart = async (pool: Partial<ThinPoolSpec>): Promise<{ code: number | null; text: string }> => {
    const configFile = await writeAgentConfig(spec({ pool }));
    const outcome = await outcomeOf(spawnAgent(['--config', configFile]));
    return { code: outcome.code, text: outcome.stderr + outcome.stdout };
  };

  await t.test('bad devices are refused with a clear error and change nothing', async (t) => {
    // A real pool beside the agent's, on vdc + vdd, so vdd holds genuine dm-thin metadata.
    await native.dmCreate(OTHER_POOL_DM);
    await native.dmLoad(OTHER_POOL_DM, [thinPoolTarget(await devNumber('vdd'), await devNumber('vdc'), (16 * MiB) / 512, {
      blockSectors: 128, lowWaterBlocks: 0, errorIfNoSpace: true, skipBlockZeroing: false,
    })]);
    await native.dmResume(OTHER_POOL_DM);
    await native.dmMessage(OTHER_POOL_DM, 0, 'create_thin 0');
    await native.dmRemove(OTHER_POOL_DM);
    const otherMetaHead = await head(OTHER_META);
    const metaHead = await head(META);
    const dataHead = await head(DATA);

    const charDevice = await refusedStart({ dataDevice: '/dev/null' });
    t.not(charDevice.code, 0, 'a character device as data_device: the agent does not start');
    t.match(charDevice.text, /\/dev\/null is a character device: a thin pool needs a block device/, 'and says why');

    const directory = await refusedStart({ metadataDevice: dir });
    t.not(directory.code, 0, 'a directory as metadata_device: the agent does not start');
    t.match(directory.text, /is a directory: a thin pool needs a block device/);

    const used = await refusedStart({ metadataDevice: OTHER_META });
    t.not(used.code, 0, "another pool's metadata device: the agent does not start");
    t.match(used.text, /already holds dm-thin metadata of a pool this catalog does not know; refusing to format it/);

    const same = await refusedStart({ metadataDevice: DATA });
    t.not(same.code, 0, 'the same device twice: the agent does not start');
    t.match(same.text, /data_device and metadata_device are the same device/);

    t.same(await head(OTHER_META), otherMetaHead, "the other pool's metadata is untouched");
    t.same(await head(META), metaHead, 'the metadata device is untouched');
    t.same(await head(DATA), dataHead, 'the data device is untouched');
    t.equal(readThinRows(catalogPath).pool, undefined, 'no pool recorded in the catalog');
    t.same((await native.dmListDevices()).filter((d) => d.name.startsWith('volagent-')), [], 'no device-mapper device made');
  });

  let agent: AgentProcess;

  await t.test('format: the pool is made, recorded and reported', async (t) => {
    agent = await startAgent(top, spec());
    const pools = await agent.request('GET', '/v1/pools');
    t.equal(pools.status, 200);
    const [pool] = pools.body;
    t.match(pool, {
      name: POOL, backend: 'thin',
      capabilities: { reflink: true, constantTimeClone: true, sizeAlignmentBytes: 64 * KiB },
      capacity: { totalBytes: 64 * MiB, usedBytes: 0, freeBytes: 64 * MiB, dataPercent: 0 },
      health: { mode: 'rw', needsCheck: false, noSpace: 'error', lowWater: false, transactionId: 0 },
    });
    t.ok(pool.capacity.metadataPercent > 0 && pool.capacity.metadataPercent < 100, 'metadata usage is reported');
    t.match(readThinRows(catalogPath).pool, { transaction_id: 0, next_thin_id: 0, pending: null, phase: 'ready' });
    const status = await poolStatus();
    t.match(status, { state: 'working', transactionId: 0, noSpace: 'error' }, 'the kernel pool runs with error_if_no_space');
  });

  await t.test('volumes: create, clone keeps the first pattern bit for bit, delete the origin, resize, snapshot', async (t) => {
    const created = await agent.request('PUT', '/v1/volumes/v1', { tenant: 't1', sizeBytes: 8 * MiB });
    t.equal(created.status, 201, JSON.stringify(created.body));
    t.match(created.body, { id: 'v1', pool: POOL, sizeBytes: 8 * MiB, state: 'available', cloneMethod: 'create', allocatedBytes: 0 });
    t.equal(await blockDeviceSize(nodeOf('v1')), 8 * MiB, 'its own device node, 8 MiB');
    const first = Buffer.concat([filled(0xa1, MiB / 2), filled(0x5c, MiB / 2)]);
    await writePattern(nodeOf('v1'), 0xa1, MiB / 2, 0);
    await writePattern(nodeOf('v1'), 0x5c, MiB / 2, MiB / 2);

    const clone = await agent.request('PUT', '/v1/volumes/v2', { tenant: 't1', source: { volume: 'v1' } });
    t.equal(clone.status, 201, JSON.stringify(clone.body));
    t.match(clone.body, { id: 'v2', cloneMethod: 'thin_snapshot', sizeBytes: 8 * MiB, source: { volume: 'v1' } });
    await writePattern(nodeOf('v1'), 0x3e, MiB, 0);
    t.ok((await readRange(nodeOf('v2'))).equals(first), 'the clone reads the first pattern, bit for bit');
    t.ok((await readRange(nodeOf('v1'))).equals(filled(0x3e)), 'the origin reads the second');

    t.equal((await agent.request('DELETE', '/v1/volumes/v1')).status, 204);
    t.equal((await stat(nodeOf('v1')).catch(() => undefined)), undefined, "the origin's node is gone");
    t.ok((await readRange(nodeOf('v2'))).equals(first), 'the clone survives its origin');

    const resized = await agent.request('POST', '/v1/volumes/v2/resize', { sizeBytes: 16 * MiB });
    t.equal(resized.status, 200, JSON.stringify(resized.body));
    t.equal(await blockDeviceSize(nodeOf('v2')), 16 * MiB, 'the device grew');
    t.ok((await readRange(nodeOf('v2'))).equals(first), 'and kept its data');

    const snapshot = await agent.request('PUT', '/v1/volumes/v2/snapshots/s1');
    t.equal(snapshot.status, 201, JSON.stringify(snapshot.body));
    t.match(snapshot.body, { cloneMethod: 'thin_snapshot', readOnly: true });
    const fromSnapshot = await agent.request('PUT', '/v1/volumes/v3', { tenant: 't1', source: { snapshot: 's1' }, sizeBytes: 32 * MiB });
    t.equal(fromSnapshot.status, 201, JSON.stringify(fromSnapshot.body));
    t.equal(await blockDeviceSize(nodeOf('v3')), 32 * MiB, 'a clone grown past its source');
    t.ok((await readRange(nodeOf('v3'))).equals(first), 'reads the snapshot');
    const snapshotNode = nodeOf('v2@s1');
    await t.rejects(writePattern(snapshotNode, 0xff, 4096), { code: /^(EPERM|EACCES|EROFS)$/ }, 'the snapshot device refuses writes (read-only table)');
  });

  await t.test('bad input on a thin pool: a clear 4xx, and nothing changes on the pool or in the catalog', async (t) => {
    const before = readThinRows(catalogPath);
    const statusBefore = await poolStatus();
    const unaligned = await agent.request('PUT', '/v1/volumes/odd', { tenant: 't1', sizeBytes: 64 * KiB + 512 });
    t.equal(unaligned.status, 400);
    t.match(unaligned.body.error, { code: 'INVALID_SIZE', details: { sizeAlignmentBytes: 64 * KiB, pool: POOL } });
    t.match(unaligned.body.error.message, /not a multiple of 65536 bytes/);
    const badResize = await agent.request('POST', '/v1/volumes/v2/resize', { sizeBytes: 17 * MiB + 4096 });
    t.equal(badResize.status, 400);
    t.equal(badResize.body.error.code, 'INVALID_SIZE');
    const badGrow = await agent.request('PUT', '/v1/volumes/odd2', { tenant: 't1', source: { volume: 'v2' }, sizeBytes: 16 * MiB + 512 });
    t.equal(badGrow.status, 400);
    const unalignedUpload = await streamOn(agent.socket, 'PUT', '/v1/images/odd/data?tenant=t1', filled(7, 64 * KiB + 512));
    t.equal(unalignedUpload.status, 400, 'an upload whose length is not whole blocks');
    const exists = await agent.request('PUT', '/v1/volumes/v2', { tenant: 't1', sizeBytes: 8 * MiB });
    t.equal(exists.status, 409);
    const holder = await open(nodeOf('v3'), 'r');
    const busy = await agent.request('DELETE', '/v1/volumes/v3').finally(() => holder.close());
    t.equal(busy.status, 409, 'DELETE of a volume whose device is held open');
    t.equal(busy.body.error.code, 'VOLUME_BUSY');
    const after = readThinRows(catalogPath);
    t.same(after, before, 'catalog: same pool row, same devices, same volumes (v3 still available)');
    const statusAfter = await poolStatus();
    t.equal(statusAfter.state === 'working' && statusAfter.transactionId, statusBefore.state === 'working' && statusBefore.transactionId, 'same transaction id');
    t.equal((await agent.request('GET', '/v1/images/odd')).status, 404, 'no image');
  });

  await t.test('images on a thin pool: upload, download, create-from-image, register by clone', async (t) => {
    const image = Buffer.concat([filled(0x11, 256 * KiB), Buffer.alloc(MiB), filled(0x22, 64 * KiB), Buffer.alloc(704 * KiB)]); // 2 MiB, sparse middle
    const uploaded = await streamOn(agent.socket, 'PUT', '/v1/images/img1/data?tenant=t1&visibility=public', image, { headers: { 'content-length': image.length } });
    t.equal(uploaded.status, 201, JSON.stringify(uploaded.body));
    t.match(uploaded.body, { imageId: 'img1', mode: 'upload', sizeBytes: image.length, state: 'available' });
    const imageVolume = await agent.request('GET', `/v1/volumes/${uploaded.body.volumeId}`);
    t.match(imageVolume.body, { readOnly: true, sizeBytes: 2 * MiB, allocatedBytes: 320 * KiB }, 'zero blocks were not written');
    const downloaded = await downloadOn(agent.socket, '/v1/images/img1/data');
    t.equal(downloaded.status, 200);
    t.equal(createHash('sha256').update(downloaded.body!).digest('hex'), createHash('sha256').update(image).digest('hex'), 'the download is the upload');

    const fromImage = await agent.request('PUT', '/v1/volumes/v4', { tenant: 't2', source: { image: 'img1' }, sizeBytes: 4 * MiB });
    t.equal(fromImage.status, 201, JSON.stringify(fromImage.body));
    t.match(fromImage.body, { cloneMethod: 'thin_snapshot', sizeBytes: 4 * MiB });
    t.ok((await readRange(nodeOf('v4'), 2 * MiB)).equals(image), 'a volume made from the image reads it');
    await writePattern(nodeOf('v4'), 0x99, 64 * KiB);
    const again = await downloadOn(agent.socket, '/v1/images/img1/data');
    t.ok(again.body!.equals(image), 'writing the new volume leaves the image alone');

    const registered = await agent.request('PUT', '/v1/images/img2', { volume: 'v3', mode: 'clone', tenant: 't1' });
    t.equal(registered.status, 201, JSON.stringify(registered.body));
    const registeredVolume = await agent.request('GET', `/v1/volumes/${registered.body.volumeId}`);
    t.match(registeredVolume.body, { cloneMethod: 'thin_snapshot', readOnly: true });
    t.equal((await agent.request('DELETE', '/v1/images/img2')).status, 204);
    // The Image-Volume goes in the background, once nothing reads it.
    const deadline = Date.now() + 30_000;
    while ((await agent.request('GET', `/v1/volumes/${registered.body.volumeId}`)).status !== 404 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    t.equal((await agent.request('GET', `/v1/volumes/${registered.body.volumeId}`)).status, 404, "the image's Image-Volume is removed");
  });

  await t.test('exports of thin volumes: NBD through the device node, and the node itself as a block export', async (t) => {
    const nbd = await agent.request('POST', '/v1/volumes/v2/exports', { protocol: 'nbd', readOnly: true });
    t.equal(nbd.status, 201, nbd.text);
    const copy = path.join(dir, 'v2-over-nbd.raw');
    const copied = spawnSync('nbdcopy', [nbd.body.uri, copy], { encoding: 'utf8' });
    t.equal(copied.status, 0, copied.stderr);
    const overNbd = await readRange(copy, 16 * MiB);
    t.ok(overNbd.equals(await readRange(nodeOf('v2'), 16 * MiB)), 'nbdcopy reads what the device holds');
    const busy = await agent.request('DELETE', '/v1/volumes/v2');
    t.equal(busy.status, 409, 'an exported thin volume is not deleted');
    const block = await agent.request('POST', '/v1/volumes/v2/exports', { protocol: 'block' });
    t.equal(block.status, 201, block.text);
    t.equal(block.body.uri, nodeOf('v2'), 'a block export of a thin volume is its own node');
    for (const id of [nbd.body.id, block.body.id]) t.equal((await agent.request('DELETE', `/v1/exports/${id}`)).status, 204);
    t.same((await agent.request('GET', '/v1/exports')).body, []);

    // Read-only holds on the node handed out (regression: it was the writable
    // dm device): the table is reloaded read-only for the export's life, so
    // even root's write fails, and no writer may share the node meanwhile.
    const getRo = (): string => spawnSync('blockdev', ['--getro', nodeOf('v2')], { encoding: 'utf8' }).stdout.trim();
    const content = await readRange(nodeOf('v2'), 16 * MiB);
    const readOnly = await agent.request('POST', '/v1/volumes/v2/exports', { protocol: 'block', readOnly: true });
    t.equal(readOnly.status, 201, readOnly.text);
    t.equal(readOnly.body.uri, nodeOf('v2'));
    t.equal(getRo(), '1', 'the node is read-only (DM_READONLY_FLAG)');
    const dd = spawnSync('dd', ['if=/dev/zero', `of=${nodeOf('v2')}`, 'bs=64k', 'count=1', 'oflag=direct'], { encoding: 'utf8' });
    t.not(dd.status, 0, 'dd as root cannot write it');
    t.match(dd.stderr, /error writing '[^']+': Operation not permitted/, `the kernel refuses the write with EPERM, the read-only disk's answer: ${dd.stderr.trim()}`);
    t.ok((await readRange(nodeOf('v2'), 16 * MiB)).equals(content), 'the volume is as it was');
    for (const protocol of ['nbd', 'block']) {
      const writer = await agent.request('POST', '/v1/volumes/v2/exports', { protocol, readOnly: false });
      t.equal(writer.status, 409, `a writable ${protocol} export meanwhile: ${writer.text}`);
      t.equal(writer.body.error.code, 'VOLUME_IN_USE');
    }
    t.match((await agent.request('GET', '/v1/volumes/v2')).body, { readOnly: false }, 'the volume itself stays writable');
    t.equal((await agent.request('DELETE', `/v1/exports/${readOnly.body.id}`)).status, 204);
    t.equal(getRo(), '0', 'unexported: the node is writable again');
    const writerFirst = await agent.request('POST', '/v1/volumes/v2/exports', { protocol: 'nbd', readOnly: false });
    t.equal(writerFirst.status, 201, writerFirst.text);
    const roAfterWriter = await agent.request('POST', '/v1/volumes/v2/exports', { protocol: 'block', readOnly: true });
    t.equal(roAfterWriter.status, 409, 'a read-only block export while a writable export is open');
    t.equal(roAfterWriter.body.error.code, 'VOLUME_IN_USE');
    t.equal(getRo(), '0', 'and the node stays writable for that writer');
    t.equal((await agent.request('DELETE', `/v1/exports/${writerFirst.body.id}`)).status, 204);
    t.same((await agent.request('GET', '/v1/exports')).body, []);
  });

  await t.test('block status of a thin export answers from the thin mapping: nbdinfo --map and qemu-img map see only the written blocks', async (t) => {
    const made = await agent.request('PUT', '/v1/volumes/sparse', { tenant: 't1', sizeBytes: 8 * MiB });
    t.equal(made.status, 201, made.text);
    // Two provisioned ranges: blocks 0-1 (one partial write provisions a whole 64 KiB block) and blocks 48-51.
    await writePattern(nodeOf('sparse'), 0x3c, 64 * KiB + 512, 0);
    await writePattern(nodeOf('sparse'), 0x4d, 256 * KiB, 3 * MiB);
    const exported = await agent.request('POST', '/v1/volumes/sparse/exports', { protocol: 'nbd', readOnly: false });
    t.equal(exported.status, 201, exported.text);
    const uri = exported.body.uri as string;
    const dataRanges = (entries: Array<{ offset: number; length: number; data: boolean }>): Array<[number, number]> =>
      entries.filter((e) => e.data).map((e) => [e.offset, e.offset + e.length]);

    const map = spawnSync('nbdinfo', ['--map', '--json', uri], { encoding: 'utf8' });
    t.equal(map.status, 0, map.stderr);
    const extents = JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>;
    t.same(extents.filter((e) => (e.type & 1) === 0).map((e) => [e.offset, e.offset + e.length]), [[0, 128 * KiB], [3 * MiB, 3 * MiB + 256 * KiB]], 'nbdinfo: data exactly where blocks are provisioned');
    t.ok(extents.filter((e) => (e.type & 1) === 1).every((e) => e.type === 3), 'the rest is hole+zero');
    t.equal(extents.reduce((sum, e) => sum + e.length, 0), 8 * MiB, 'the map covers the volume');

    const qemuMap = spawnSync('qemu-img', ['map', '--output=json', '-f', 'raw', uri], { encoding: 'utf8' });
    t.equal(qemuMap.status, 0, qemuMap.stderr);
    t.same(dataRanges(JSON.parse(qemuMap.stdout)), [[0, 128 * KiB], [3 * MiB, 3 * MiB + 256 * KiB]], 'qemu-img map agrees');

    // A write through the export provisions a block; the next map shows it (the snapshot commits first).
    const written = spawnSync('qemu-io', ['-f', 'raw', '-c', `write -P 0x5e ${6 * MiB} 4k`, uri], { encoding: 'utf8' });
    t.equal(written.status, 0, written.stderr);
    const after = JSON.parse(spawnSync('nbdinfo', ['--map', '--json', uri], { encoding: 'utf8' }).stdout) as Array<{ offset: number; length: number; type: number }>;
    t.same(after.filter((e) => (e.type & 1) === 0).map((e) => [e.offset, e.offset + e.length]),
      [[0, 128 * KiB], [3 * MiB, 3 * MiB + 256 * KiB], [6 * MiB, 6 * MiB + 64 * KiB]], 'the new block is data at once');

    const copy = path.join(dir, 'sparse-over-nbd.raw');
    const copied = spawnSync('nbdcopy', [uri, copy], { encoding: 'utf8' });
    t.equal(copied.status, 0, copied.stderr);
    t.ok((await readFile(copy)).equals(await readRange(nodeOf('sparse'), 8 * MiB)), 'nbdcopy, skipping the holes, copies every byte');
    t.ok((await stat(copy)).blocks * 512 <= 512 * KiB, 'and the copy is sparse');

    // Someone else holds the pool's one metadata snapshot: the answer is "all data", never a guess.
    await native.dmMessage(POOL_DM, 0, 'reserve_metadata_snap');
    try {
      const held = JSON.parse(spawnSync('nbdinfo', ['--map', '--json', uri], { encoding: 'utf8' }).stdout) as Array<{ type: number; length: number }>;
      t.same(held.map((e) => [e.length, e.type & 1]), [[8 * MiB, 0]], 'with the snapshot held elsewhere: one data extent');
    } finally {
      await native.dmMessage(POOL_DM, 0, 'release_metadata_snap');
    }
    const status = parseThinPoolStatus((await native.dmTable(POOL_DM))[0]!.params);
    t.match(status, { state: 'working', heldMetadataRoot: undefined }, 'the agent released its snapshots');
    t.equal((await agent.request('DELETE', `/v1/exports/${exported.body.id}`)).status, 204);
    t.equal((await agent.request('DELETE', '/v1/volumes/sparse')).status, 204);
  });

  await t.test('restart: the pool reopens, every volume is active, the catalog equals the pool', async (t) => {
    const before = (await agent.request('GET', '/v1/volumes')).body;
    t.equal(await agent.stop(), 0, 'SIGTERM: clean exit');
    agent = await startAgent(top, spec());
    t.same((await agent.request('GET', '/v1/volumes')).body, before, 'the same volumes');
    t.ok((await readRange(nodeOf('v3'), 64 * KiB)).equals(filled(0xa1, 64 * KiB)), 'v3 reads its data');
    await checkConsistent(t, catalogPath, META, 'after restart');
  });

  await t.test('the devices gone (as after a reboot): start-up makes the pool and every volume active again', async (t) => {
    t.equal(await agent.stop(), 0);
    await removeEveryAgentDevice();
    t.same((await native.dmListDevices()).filter((d) => d.name.startsWith('volagent-thin0')), [], 'nothing active');
    agent = await startAgent(top, spec());
    t.ok((await readRange(nodeOf('v2'), 64 * KiB)).equals(filled(0xa1, 64 * KiB)), 'v2 is active again with its data');
    t.ok((await readRange(nodeOf('v4'), 64 * KiB)).equals(filled(0x99, 64 * KiB)), 'v4 too');
    await checkConsistent(t, catalogPath, META, 'after re-activation');
  });

  for (const [failpoint, operation] of [
    ['thin.after-message', 'clone'],
    ['thin.before-commit', 'clone'],
    ['thin.after-message', 'delete'],
    ['thin.after-begin', 'create'],
  ] as const) {
    await t.test(`kill -9 at ${failpoint} during a ${operation}: after restart no leaked thin id and no half-made volume`, async (t) => {
      t.equal(await agent.stop(), 0);
      const before = readThinRows(catalogPath);
      agent = await startAgent(top, spec({ env: { VOLAGENT_FAILPOINTS: `${failpoint}=kill` } }));
      const target = `k-${operation}-${failpoint.replace(/\W/g, '')}`;
      const request = operation === 'clone'
        ? agent.request('PUT', `/v1/volumes/${target}`, { tenant: 't1', source: { volume: 'v2' } })
        : operation === 'create' ? agent.request('PUT', `/v1/volumes/${target}`, { tenant: 't1', sizeBytes: MiB })
          : agent.request('DELETE', '/v1/volumes/v4');
      await t.rejects(request, 'the connection breaks: the agent died');
      t.match(await agent.exited, { signal: 'SIGKILL' }, 'killed by the failpoint');
      agent = await startAgent(top, spec());
      const after = readThinRows(catalogPath);
      if (operation === 'delete') {
        t.equal((await agent.request('GET', '/v1/volumes/v4')).status, 404, 'the delete was finished');
        t.notOk(after.devices.some((d) => d.name === 'v4'), 'its thin id is gone from the catalog');
      } else {
        t.equal((await agent.request('GET', `/v1/volumes/${target}`)).status, 404, 'the unanswered create left no volume');
        t.same(after.devices, before.devices, 'the same thin devices as before');
      }
      t.ok(after.pool!.next_thin_id >= before.pool!.next_thin_id, 'thin ids are never handed out twice');
      await checkConsistent(t, catalogPath, META, `after kill at ${failpoint}`);
      const check = await agent.request('GET', '/v1/check');
      t.match(check.body, { clean: true }, 'volagent check: clean');
    });
  }

  await t.test('fill the pool: the failing request gets 507, the state is reported, nothing else is lost', async (t) => {
    const big = await agent.request('PUT', '/v1/volumes/fill', { tenant: 't1', sizeBytes: 128 * MiB });
    t.equal(big.status, 201, 'a volume larger than the pool (thin: virtual size)');
    const dd = spawnSync('dd', ['if=/dev/zero', `of=${nodeOf('fill')}`, 'bs=1M', 'count=128', 'oflag=direct'], { encoding: 'utf8' });
    t.not(dd.status, 0, 'writing past the free space fails');
    t.match(dd.stderr, /No space left on device/, 'with ENOSPC at once (error_if_no_space fails the bio with BLK_STS_NOSPC; O_DIRECT returns it), not a hang');
    const [pool] = (await agent.request('GET', '/v1/pools')).body;
    t.match(pool, { health: { mode: 'out_of_data_space', lowWater: true }, capacity: { freeBytes: 0, dataPercent: 100 } }, 'GET /v1/pools reports the full pool');
    const refused = await agent.request('PUT', '/v1/volumes/late', { tenant: 't1', sizeBytes: MiB });
    t.equal(refused.status, 507);
    t.equal(refused.body.error.code, 'INSUFFICIENT_SPACE');
    const refusedUpload = await streamOn(agent.socket, 'PUT', '/v1/images/late/data?tenant=t1', filled(1, MiB));
    t.equal(refusedUpload.status, 507, 'an upload is refused too');
    t.equal((await agent.request('GET', '/v1/volumes/late')).status, 404, 'no volume row');
    t.equal((await agent.request('GET', '/v1/images/late')).status, 404, 'no image row');
    t.ok((await readRange(nodeOf('v2'))).equals(Buffer.concat([filled(0xa1, MiB / 2), filled(0x5c, MiB / 2)])), 'v2 still reads its data');
    t.ok(agent.logs.some((line) => /low-water mark/.test(line)), 'the low-water warning was logged');
    t.equal((await agent.request('DELETE', '/v1/volumes/fill')).status, 204, 'the full volume can be deleted');
    await checkConsistent(t, catalogPath, META, 'after filling');
  });

  await t.test('files as devices (development): bound to loop devices once, found again after a restart', async (t) => {
    t.equal(await agent.stop(), 0);
    const filesDir = await mkdtemp('/tmp/thin-files-');
    const [dataFile, metaFile] = [path.join(filesDir, 'data.img'), path.join(filesDir, 'meta.img')];
    await writeFile(dataFile, '');
    await truncate(dataFile, 32 * MiB);
    await writeFile(metaFile, '');
    await truncate(metaFile, 4 * MiB);
    const filesSpec = { dir: filesDir, startTimeoutMs: 120_000, pools: [{ name: 'files0', backend: 'thin' as const, dataDevice: dataFile, metadataDevice: metaFile, deviceDir: DEVICE_DIR }] };
    t.teardown(async () => {
      for (const device of (await native.dmListDevices()).filter((d) => d.name.startsWith('volagent-files0-') && d.name !== 'volagent-files0-pool')) await native.dmRemove(device.name);
      await native.dmRemove('volagent-files0-pool').catch(() => undefined);
      for (const loop of [...await loopsBoundTo(dataFile), ...await loopsBoundTo(metaFile)]) await native.loopDetach(loop).catch(() => undefined);
    });
    const refusedFiles = await outcomeOf(spawnAgent(['--config', await writeAgentConfig({ ...filesSpec, pools: [{ ...filesSpec.pools[0]!, metadataDevice: '/dev/null' }] })]));
    t.not(refusedFiles.code, 0, 'a refused start-up with a data file');
    t.same(await loopsBoundTo(dataFile), [], 'leaves no loop device bound to the data file');
    let files = await startAgent(top, filesSpec);
    const [data] = await loopsBoundTo(dataFile);
    t.match(data, /^\/dev\/loop\d+$/, 'the data file is bound to a loop device');
    t.equal((await loopsBoundTo(metaFile)).length, 1, 'and the metadata file to one');
    t.equal((await files.request('PUT', '/v1/volumes/f1', { tenant: 't1', sizeBytes: 4 * MiB })).status, 201);
    const node = path.join(DEVICE_DIR, 'files0', 'f1');
    await writePattern(node, 0x6b);
    t.equal((await files.request('PUT', '/v1/volumes/f2', { tenant: 't1', source: { volume: 'f1' } })).status, 201);
    t.equal(await files.stop(), 0);
    files = await startAgent(top, filesSpec);
    t.same(await loopsBoundTo(dataFile), [data], 'after a restart the same loop device is used, not a second one');
    t.equal((await loopsBoundTo(metaFile)).length, 1);
    t.ok((await readRange(path.join(DEVICE_DIR, 'files0', 'f2'))).equals(filled(0x6b)), 'the clone reads the data');
    t.equal(await files.stop(), 0);
  });
}
