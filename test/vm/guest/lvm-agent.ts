// Guest-only tap file: a real volagentd with an `lvm` pool on the guest's
// kernel, run by test/vm/lvm-pool.test.ts with one virtio disk (vda, 512 MiB)
// made into a volume group `vgtest` with a thin pool `tp` (pvcreate,
// vgcreate, lvcreate --thinpool), in which another owner's LVs already live:
// a thin LV with data and a thin snapshot of it, a linear LV outside the thin
// pool, a thin LV carrying the agent's `volagent` tag but not its pool's, and
// a thin LV named like one of the agent's objects (`va.lvm0.trap`) without
// its tags. After every subtest those LVs are as they were: `lvs` reports
// the same rows and their bytes hash the same. LVs of that owner made for
// the adoption subtests are adopted, or given back after a kill mid-way.
// Each subtest builds on the previous one (one VG, one catalog), in order.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, open, stat } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';
import type { Test } from 'tap';

import { blockDeviceSize } from '../../../src/pools/thin/block-device.js';
import type { AgentProcess, LvmPoolSpec } from '../../helpers/agent.js';
import { downloadOn, outcomeOf, readCatalog, spawnAgent, startAgent, streamOn, writeAgentConfig } from '../../helpers/agent.js';
import { readAt, writeAt } from '../../helpers/files.js';
import { agentLvName, lvmRun } from '../../helpers/lvm.js';
import { inVmGuest } from '../../helpers/vm.js';

const MiB = 1024 * 1024;
const KiB = 1024;
const POOL = 'lvm0';
const VG = 'vgtest';
const THIN_POOL = 'tp';
const FOREIGN = ['other', 'other-snap', 'linear', 'tagged', 'va.lvm0.trap'];

const lvOf = (name: string): string => agentLvName(POOL, name);

function nodeOf(name: string): string {
  return `/dev/${VG}/${lvOf(name)}`;
}

type LvRow = Record<string, string>;

/** Every LV of the VG as lvs reports it (JSON, bytes), by name. */
function lvs(fields = 'lv_name,lv_attr,lv_size,lv_tags,origin,pool_lv,lv_active,data_percent'): Map<string, LvRow> {
  const report = JSON.parse(lvmRun('lvs', ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-a', '-o', fields, VG])) as { report: Array<{ lv: LvRow[] }> };
  return new Map(report.report[0]!.lv.map((row) => [row.lv_name!, row]));
}

/** `dmsetup status NAME`'s one target: its type and status words. */
function dmStatus(dmName: string): { type: string; words: string[] } {
  const outcome = spawnSync('dmsetup', ['status', dmName], { encoding: 'utf8' });
  if (outcome.status !== 0) throw new Error(`dmsetup status ${dmName}: ${outcome.stderr}`);
  const [, , type, ...words] = outcome.stdout.trim().split(/\s+/);
  return { type: type!, words };
}

/** The thin pool's data and metadata use as device-mapper reports it (used/total blocks). */
function thinPoolUse(): { dataPercent: number; metadataPercent: number } {
  const { type, words } = dmStatus(`${VG}-${THIN_POOL}-tpool`);
  if (type !== 'thin-pool') throw new Error(`${VG}-${THIN_POOL}-tpool is a ${type} target`);
  const percent = (usage: string): number => {
    const [used, total] = usage.split('/').map(Number);
    return (100 * used!) / total!;
  };
  return { metadataPercent: percent(words[1]!), dataPercent: percent(words[2]!) };
}

/** The bytes a thin LV of the agent has provisioned: its thin target's mapped sectors. */
function mappedBytes(name: string): number {
  const { type, words } = dmStatus(`${VG}-${lvOf(name).replaceAll('-', '--')}`);
  if (type !== 'thin') throw new Error(`${lvOf(name)} is a ${type} target`);
  return Number(words[0]) * 512;
}

async function sha256Of(device: string): Promise<string> {
  const handle = await open(device, 'r');
  try {
    const hash = createHash('sha256');
    const buffer = Buffer.alloc(MiB);
    for (let offset = 0; ; offset += MiB) {
      const { bytesRead } = await handle.read(buffer, 0, MiB, offset);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
    }
    return hash.digest('hex');
  } finally {
    await handle.close();
  }
}

/** The other owner's LVs: their lvs rows and the hash of their bytes. */
async function foreignState(): Promise<Record<string, unknown>> {
  const rows = lvs();
  const state: Record<string, unknown> = {};
  for (const name of FOREIGN) state[name] = { row: rows.get(name), sha256: await sha256Of(`/dev/${VG}/${name}`) };
  return state;
}

async function writePattern(node: string, byte: number, bytes = MiB, offset = 0): Promise<void> {
  await writeAt(node, Buffer.alloc(bytes, byte), offset);
}

function filled(byte: number, bytes = MiB): Buffer {
  return Buffer.alloc(bytes, byte);
}

/** This pool's LVs (names starting `va.`/`vt.`/`vr.`/`vo.` + pool) that carry its tag. */
function agentLvs(): string[] {
  return [...lvs().values()].filter((row) => (row.lv_tags ?? '').split(',').includes(`volagent.pool.${POOL}`)).map((row) => row.lv_name!).sort();
}

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/lvm-pool.test.ts');
} else {
  const top = t;
  t.setTimeout(900_000);
  const dir = await mkdtemp('/tmp/lvm-agent-');
  const catalogPath = path.join(dir, 'catalog.db');
  const lvmPool = (extra: Partial<LvmPoolSpec> = {}): LvmPoolSpec => ({ name: POOL, backend: 'lvm', vg: VG, thinPool: THIN_POOL, minFree: '5%', lowWater: '20%', ...extra });
  const spec = (extra: { pool?: Partial<LvmPoolSpec>; env?: NodeJS.ProcessEnv } = {}) => ({
    dir, pools: [lvmPool(extra.pool)], startTimeoutMs: 120_000, ...(extra.env ? { env: extra.env } : {}),
  });
  t.teardown(() => {
    spawnSync('vgchange', ['-an', VG], { encoding: 'utf8' });
  });

  // The VG as an operator has it before the agent comes.
  lvmRun('pvcreate', ['-q', '/dev/vda']);
  lvmRun('vgcreate', ['-q', VG, '/dev/vda']);
  lvmRun('lvcreate', ['-q', '--type', 'thin-pool', '-L', '256m', '-c', '64k', '-Zy', '-n', THIN_POOL, VG]);
  lvmRun('lvcreate', ['-q', '-V', '16m', '-T', `${VG}/${THIN_POOL}`, '-n', 'other', '--addtag', 'owner.cinder']);
  await writePattern(`/dev/${VG}/other`, 0x0f, 2 * MiB);
  lvmRun('lvcreate', ['-q', '-s', '-kn', '-n', 'other-snap', `${VG}/other`]);
  await writePattern(`/dev/${VG}/other`, 0xf0, MiB);
  lvmRun('lvcreate', ['-q', '-L', '8m', '-n', 'linear', VG]);
  await writePattern(`/dev/${VG}/linear`, 0x3c, MiB);
  lvmRun('lvcreate', ['-q', '-V', '8m', '-T', `${VG}/${THIN_POOL}`, '-n', 'tagged', '--addtag', 'volagent']);
  lvmRun('lvcreate', ['-q', '-V', '8m', '-T', `${VG}/${THIN_POOL}`, '-n', 'va.lvm0.trap']);
  await writePattern(`/dev/${VG}/va.lvm0.trap`, 0x77, MiB);
  const foreignBefore = await foreignState();

  /** The other owner's LVs are as they were; this pool's LVs are exactly `expected`. */
  const untouched = async (t: Test, expected?: string[]): Promise<void> => {
    t.same(await foreignState(), foreignBefore, "the other owner's LVs are unchanged (lvs rows, bytes)");
    if (expected) t.same(agentLvs(), expected.map(lvOf).sort(), "the pool's LVs are exactly the catalog's objects");
  };

  let agent: AgentProcess;

  await t.test('refused: a VG or thin pool that is not there, an LV that is not a thin pool, a thin pool that does not zero new blocks', async (t) => {
    for (const [pool, pattern] of [
      [{ vg: 'novg' }, /volume group novg cannot be read/],
      [{ thinPool: 'nopool' }, /volume group vgtest has no LV named nopool/],
      [{ thinPool: 'linear' }, /vgtest\/linear is not a thin pool/],
    ] as const) {
      const outcome = await outcomeOf(spawnAgent(['--config', await writeAgentConfig(spec({ pool }))]));
      t.not(outcome.code, 0, `${JSON.stringify(pool)}: the agent does not start`);
      t.match(outcome.stderr + outcome.stdout, pattern, 'and says why');
    }
    // Without zeroing, a block provisioned for a new volume keeps what a deleted volume wrote there, past the new one's first write.
    lvmRun('lvchange', ['-q', '-Z', 'n', `${VG}/${THIN_POOL}`]);
    try {
      t.match(lvs('lv_name,lv_attr').get(THIN_POOL), { lv_attr: /^t.{6}[^z]/ }, 'the thin pool no longer zeroes');
      const outcome = await outcomeOf(spawnAgent(['--config', await writeAgentConfig(spec())]));
      t.not(outcome.code, 0, 'the agent does not start on it');
      t.match(outcome.stderr + outcome.stdout, /vgtest\/tp does not zero newly provisioned blocks .*lvchange -Z y vgtest\/tp/, 'and says why and what to run');
    } finally {
      lvmRun('lvchange', ['-q', '-Z', 'y', `${VG}/${THIN_POOL}`]);
    }
    t.match(lvs('lv_name,lv_attr').get(THIN_POOL), { lv_attr: /^t.{6}z/ }, 'zeroing is back on');
    await untouched(t, []);
  });

  await t.test('open: the pool is reported with the thin pool\'s capacity and health; it lists none of the other LVs', async (t) => {
    agent = await startAgent(top, spec());
    const [pool] = (await agent.request('GET', '/v1/pools')).body;
    const tp = lvs('lv_name,lv_size,data_percent,metadata_percent').get(THIN_POOL)!;
    const use = thinPoolUse();
    t.match(pool, {
      name: POOL, backend: 'lvm',
      capabilities: { reflink: true, constantTimeClone: true, sizeAlignmentBytes: 4 * MiB },
      capacity: { totalBytes: 256 * MiB, dataPercent: use.dataPercent, metadataPercent: use.metadataPercent },
      health: { mode: 'rw', needsCheck: false, lowWater: false },
    });
    t.ok(use.dataPercent > 0, `the other owner's data is counted (${use.dataPercent}%)`);
    t.equal(Number(use.dataPercent.toFixed(2)), Number(tp.data_percent), "data%: the kernel's, which lvs rounds to two decimals");
    t.equal(Number(use.metadataPercent.toFixed(2)), Number(tp.metadata_percent), 'and metadata%');
    t.equal(pool.capacity.usedBytes, Math.round((256 * MiB * use.dataPercent) / 100), 'used bytes from the data blocks in use');
    t.same((await agent.request('GET', '/v1/volumes')).body, [], 'no volume');
    const check = await agent.request('GET', '/v1/check');
    t.match(check.body, { clean: true, differences: [] }, "check: clean (the other owner's LVs are no orphans)");
    await untouched(t, []);
  });

  await t.test('volumes: create, clone keeps the first pattern, delete the origin, resize, snapshot, clone grown', async (t) => {
    const created = await agent.request('PUT', '/v1/volumes/v1', { tenant: 't1', sizeBytes: 8 * MiB });
    t.equal(created.status, 201, created.text);
    t.match(created.body, { id: 'v1', pool: POOL, sizeBytes: 8 * MiB, state: 'available', cloneMethod: 'create', allocatedBytes: 0 });
    t.equal(await blockDeviceSize(nodeOf('v1')), 8 * MiB, '/dev/vgtest/va.lvm0.v1, 8 MiB');
    t.match(lvs().get(lvOf('v1')), { lv_attr: /^Vwi-a-tz/, lv_size: String(8 * MiB), lv_tags: `volagent,volagent.pool.${POOL}`, pool_lv: THIN_POOL }, 'a thin LV of the pool, with the tags');
    const first = Buffer.concat([filled(0xa1, MiB / 2), filled(0x5c, MiB / 2)]);
    await writePattern(nodeOf('v1'), 0xa1, MiB / 2, 0);
    await writePattern(nodeOf('v1'), 0x5c, MiB / 2, MiB / 2);

    const clone = await agent.request('PUT', '/v1/volumes/v2', { tenant: 't1', source: { volume: 'v1' } });
    t.equal(clone.status, 201, clone.text);
    t.match(clone.body, { id: 'v2', cloneMethod: 'thin_snapshot', sizeBytes: 8 * MiB, source: { volume: 'v1' } });
    t.match(lvs().get(lvOf('v2')), { lv_attr: /^Vwi-a-tz/, origin: lvOf('v1'), lv_tags: `volagent,volagent.pool.${POOL}` }, 'a thin snapshot of v1, active, tagged');
    await writePattern(nodeOf('v1'), 0x3e, MiB, 0);
    t.ok((await readAt(nodeOf('v2'), MiB)).equals(first), 'the clone reads the first pattern, bit for bit');
    t.ok((await readAt(nodeOf('v1'), MiB)).equals(filled(0x3e)), 'the origin reads the second');
    const stated = (await agent.request('GET', '/v1/volumes/v1')).body;
    t.equal(stated.allocatedBytes, mappedBytes('v1'), "allocatedBytes: the thin target's mapped sectors");
    t.equal(Number(((100 * stated.allocatedBytes) / (8 * MiB)).toFixed(2)), Number(lvs().get(lvOf('v1'))!.data_percent), 'which lvs reports as data%');
    t.ok(stated.allocatedBytes >= MiB, 'at least the MiB written');

    // Deactivated behind the agent's back: no device to read, so lvm2 is asked; the volume is still there.
    lvmRun('lvchange', ['-an', `${VG}/${lvOf('v2')}`]);
    const inactive = await agent.request('GET', '/v1/volumes/v2');
    t.equal(inactive.status, 200, inactive.text);
    t.match(inactive.body, { id: 'v2', sizeBytes: 8 * MiB, readOnly: false }, 'an inactive LV is read from lvs');
    lvmRun('lvchange', ['-ay', '-K', `${VG}/${lvOf('v2')}`]);

    t.equal((await agent.request('DELETE', '/v1/volumes/v1')).status, 204);
    t.equal(lvs().get(lvOf('v1')), undefined, 'the LV is removed');
    t.equal(await stat(nodeOf('v1')).catch(() => undefined), undefined, 'and its node');
    t.ok((await readAt(nodeOf('v2'), MiB)).equals(first), 'the clone survives its origin');

    const resized = await agent.request('POST', '/v1/volumes/v2/resize', { sizeBytes: 16 * MiB });
    t.equal(resized.status, 200, resized.text);
    t.equal(await blockDeviceSize(nodeOf('v2')), 16 * MiB, 'the device grew (lvextend)');
    t.equal(lvs().get(lvOf('v2'))!.lv_size, String(16 * MiB));
    t.ok((await readAt(nodeOf('v2'), MiB)).equals(first), 'and kept its data');

    const snapshot = await agent.request('PUT', '/v1/volumes/v2/snapshots/s1');
    t.equal(snapshot.status, 201, snapshot.text);
    t.match(snapshot.body, { cloneMethod: 'thin_snapshot', readOnly: true });
    t.match(lvs().get(lvOf('v2@s1')), { lv_attr: /^Vri-a-tz/, origin: lvOf('v2') }, 'the snapshot is a read-only thin snapshot (LV va.lvm0.v2+as1)');
    await t.rejects(writePattern(nodeOf('v2@s1'), 0xff, 4096), { code: /^(EPERM|EACCES|EROFS)$/ }, 'its device refuses writes');
    const fromSnapshot = await agent.request('PUT', '/v1/volumes/v3', { tenant: 't1', source: { snapshot: 's1' }, sizeBytes: 32 * MiB });
    t.equal(fromSnapshot.status, 201, fromSnapshot.text);
    t.equal(await blockDeviceSize(nodeOf('v3')), 32 * MiB, 'a clone grown past its source');
    t.match(lvs().get(lvOf('v3')), { lv_attr: /^Vwi-a-tz/, origin: lvOf('v2@s1') }, 'writable');
    t.ok((await readAt(nodeOf('v3'), MiB)).equals(first), 'reads the snapshot');
    t.same(readCatalog(catalogPath).volumes.map((v) => [v.id, v.state, v.size_bytes]), [['v2', 'available', 16 * MiB], ['v3', 'available', 32 * MiB]], 'catalog rows');
    await untouched(t, ['v2', 'v2@s1', 'v3']);
  });

  await t.test('bad input and foreign names: a clear 4xx, and nothing changes in the VG or the catalog', async (t) => {
    const before = readCatalog(catalogPath);
    const lvsBefore = lvs();
    const unaligned = await agent.request('PUT', '/v1/volumes/odd', { tenant: 't1', sizeBytes: 6 * MiB });
    t.equal(unaligned.status, 400);
    t.match(unaligned.body.error, { code: 'INVALID_SIZE', details: { sizeAlignmentBytes: 4 * MiB, pool: POOL } });
    const badResize = await agent.request('POST', '/v1/volumes/v2/resize', { sizeBytes: 18 * MiB });
    t.equal(badResize.status, 400);
    t.equal(badResize.body.error.code, 'INVALID_SIZE');
    const exists = await agent.request('PUT', '/v1/volumes/v2', { tenant: 't1', sizeBytes: 8 * MiB });
    t.equal(exists.status, 409);
    const trap = await agent.request('PUT', '/v1/volumes/trap', { tenant: 't1', sizeBytes: 8 * MiB });
    t.equal(trap.status, 409, "an object whose LV name another owner's LV holds");
    t.equal(trap.body.error.code, 'OBJECT_EXISTS');
    const holder = await open(nodeOf('v3'), 'r');
    const busy = await agent.request('DELETE', '/v1/volumes/v3').finally(() => holder.close());
    t.equal(busy.status, 409, 'DELETE of a volume whose LV is open (lv_device_open)');
    t.equal(busy.body.error.code, 'VOLUME_BUSY');
    t.same(readCatalog(catalogPath), before, 'the catalog is as it was (v3 available)');
    t.same(lvs(), lvsBefore, 'the VG is as it was');
    await untouched(t, ['v2', 'v2@s1', 'v3']);
  });

  await t.test('images: upload, download, create-from-image, register by clone, and an NBD export', async (t) => {
    const image = Buffer.concat([filled(0x11, 256 * KiB), Buffer.alloc(3 * MiB), filled(0x22, 64 * KiB), Buffer.alloc(704 * KiB)]); // 4 MiB, sparse middle
    const uploaded = await streamOn(agent.socket, 'PUT', '/v1/images/img1/data?tenant=t1&visibility=public', image, { headers: { 'content-length': image.length } });
    t.equal(uploaded.status, 201, uploaded.text);
    t.match(uploaded.body, { imageId: 'img1', mode: 'upload', sizeBytes: image.length, state: 'available' });
    const imageVolume = (await agent.request('GET', `/v1/volumes/${uploaded.body.volumeId}`)).body;
    t.match(imageVolume, { readOnly: true, sizeBytes: 4 * MiB });
    t.match(lvs().get(lvOf(uploaded.body.volumeId)), { lv_attr: /^Vri-a-tz/, lv_size: String(4 * MiB) }, 'a read-only LV of the image\'s size, renamed from its temporary');
    t.ok(imageVolume.allocatedBytes <= 2 * MiB, `zero blocks were not written (${imageVolume.allocatedBytes} bytes allocated)`);
    const downloaded = await downloadOn(agent.socket, '/v1/images/img1/data');
    t.equal(downloaded.status, 200);
    t.ok(downloaded.body!.equals(image), 'the download is the upload');
    const unalignedUpload = await streamOn(agent.socket, 'PUT', '/v1/images/odd/data?tenant=t1', filled(7, 5 * MiB));
    t.equal(unalignedUpload.status, 400, 'an upload whose length is not whole extents');
    t.equal((await agent.request('GET', '/v1/images/odd')).status, 404, 'no image');

    const fromImage = await agent.request('PUT', '/v1/volumes/v4', { tenant: 't2', source: { image: 'img1' }, sizeBytes: 8 * MiB });
    t.equal(fromImage.status, 201, fromImage.text);
    t.match(fromImage.body, { cloneMethod: 'thin_snapshot', sizeBytes: 8 * MiB });
    t.ok((await readAt(nodeOf('v4'), 4 * MiB)).equals(image), 'a volume made from the image reads it');
    await writePattern(nodeOf('v4'), 0x99, 64 * KiB);
    t.ok((await downloadOn(agent.socket, '/v1/images/img1/data')).body!.equals(image), 'writing the new volume leaves the image alone');

    const registered = await agent.request('PUT', '/v1/images/img2', { volume: 'v3', mode: 'clone', tenant: 't1' });
    t.equal(registered.status, 201, registered.text);
    t.match((await agent.request('GET', `/v1/volumes/${registered.body.volumeId}`)).body, { cloneMethod: 'thin_snapshot', readOnly: true });
    t.equal((await agent.request('DELETE', '/v1/images/img2')).status, 204);
    const deadline = Date.now() + 60_000;
    while ((await agent.request('GET', `/v1/volumes/${registered.body.volumeId}`)).status !== 404 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    t.equal((await agent.request('GET', `/v1/volumes/${registered.body.volumeId}`)).status, 404, "the image's Image-Volume is removed");
    t.equal(lvs().get(lvOf(registered.body.volumeId)), undefined, 'and its LV');

    const nbd = await agent.request('POST', '/v1/volumes/v2/exports', { protocol: 'nbd', readOnly: true });
    t.equal(nbd.status, 201, nbd.text);
    const copy = path.join(dir, 'v2-over-nbd.raw');
    const copied = spawnSync('nbdcopy', [nbd.body.uri, copy], { encoding: 'utf8' });
    t.equal(copied.status, 0, copied.stderr);
    t.ok((await readAt(copy, 16 * MiB)).equals(await readAt(nodeOf('v2'), 16 * MiB)), 'nbdcopy reads what the LV holds');
    const busy = await agent.request('DELETE', '/v1/volumes/v2');
    t.equal(busy.status, 409, 'an exported volume is not deleted');
    t.equal((await agent.request('DELETE', `/v1/exports/${nbd.body.id}`)).status, 204);
    await untouched(t, ['v2', 'v2@s1', 'v3', 'v4', uploaded.body.volumeId]);
  });

  await t.test("block status of an lvm export answers from the thin pool's mapping: nbdinfo --map and qemu-img map see only the written chunks", async (t) => {
    const made = await agent.request('PUT', '/v1/volumes/sparse', { tenant: 't1', sizeBytes: 8 * MiB });
    t.equal(made.status, 201, made.text);
    // 64 KiB chunks: one partial write provisions a whole chunk.
    await writePattern(nodeOf('sparse'), 0x3c, 64 * KiB + 512, 0);
    await writePattern(nodeOf('sparse'), 0x4d, 256 * KiB, 3 * MiB);
    const exported = await agent.request('POST', '/v1/volumes/sparse/exports', { protocol: 'nbd', readOnly: true });
    t.equal(exported.status, 201, exported.text);
    const uri = exported.body.uri as string;
    const written: Array<[number, number]> = [[0, 128 * KiB], [3 * MiB, 3 * MiB + 256 * KiB]];
    const map = spawnSync('nbdinfo', ['--map', '--json', uri], { encoding: 'utf8' });
    t.equal(map.status, 0, map.stderr);
    const extents = JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>;
    t.same(extents.filter((e) => (e.type & 1) === 0).map((e) => [e.offset, e.offset + e.length]), written, 'nbdinfo: data exactly where chunks are provisioned');
    t.ok(extents.filter((e) => (e.type & 1) === 1).every((e) => e.type === 3), 'the rest is hole+zero');
    t.equal(extents.reduce((sum, e) => sum + e.length, 0), 8 * MiB, 'the map covers the volume');
    const qemuMap = spawnSync('qemu-img', ['map', '--output=json', '-f', 'raw', uri], { encoding: 'utf8' });
    t.equal(qemuMap.status, 0, qemuMap.stderr);
    t.same((JSON.parse(qemuMap.stdout) as Array<{ offset: number; length: number; data: boolean }>).filter((e) => e.data).map((e) => [e.offset, e.offset + e.length]), written, 'qemu-img map agrees');
    const copy = path.join(dir, 'sparse-over-nbd.raw');
    const copied = spawnSync('nbdcopy', [uri, copy], { encoding: 'utf8' });
    t.equal(copied.status, 0, copied.stderr);
    t.ok((await readAt(copy, 8 * MiB)).equals(await readAt(nodeOf('sparse'), 8 * MiB)), 'nbdcopy, skipping the holes, copies every byte');
    t.ok((await stat(copy)).blocks * 512 <= 512 * KiB, 'and the copy is sparse');

    // Someone else holds the pool's one metadata snapshot: the answer is "all data", never a guess.
    const tpool = `${VG}-${THIN_POOL}-tpool`;
    t.equal(spawnSync('dmsetup', ['message', tpool, '0', 'reserve_metadata_snap']).status, 0, 'an operator holds the metadata snapshot');
    try {
      const held = JSON.parse(spawnSync('nbdinfo', ['--map', '--json', uri], { encoding: 'utf8' }).stdout) as Array<{ type: number; length: number }>;
      t.same(held.map((e) => [e.length, e.type & 1]), [[8 * MiB, 0]], 'with the snapshot held elsewhere: one data extent');
    } finally {
      spawnSync('dmsetup', ['message', tpool, '0', 'release_metadata_snap']);
    }
    t.equal(dmStatus(tpool).words[3], '-', 'the agent released its snapshots: no held metadata root');
    t.equal((await agent.request('DELETE', `/v1/exports/${exported.body.id}`)).status, 204);
    t.equal((await agent.request('DELETE', '/v1/volumes/sparse')).status, 204);
    await untouched(t);
  });

  await t.test('restart: the pool reopens; LVs deactivated meanwhile (a reboot) are active again', async (t) => {
    const before = (await agent.request('GET', '/v1/volumes')).body;
    t.equal(await agent.stop(), 0, 'SIGTERM: clean exit');
    for (const lv of agentLvs()) lvmRun('lvchange', ['-an', `${VG}/${lv}`]);
    t.equal(await stat(nodeOf('v2')).catch(() => undefined), undefined, 'deactivated: no node');
    agent = await startAgent(top, spec());
    t.same((await agent.request('GET', '/v1/volumes')).body, before, 'the same volumes');
    t.ok(agentLvs().every((lv) => lvs().get(lv)!.lv_active === 'active'), 'every LV of the pool is active');
    t.ok((await readAt(nodeOf('v4'), 64 * KiB)).equals(filled(0x99, 64 * KiB)), 'v4 reads its data');
    t.match((await agent.request('GET', '/v1/check')).body, { clean: true });
    await untouched(t);
  });

  for (const [failpoint, operation] of [
    ['lvm.object-made', 'create'],
    ['lvm.object-made', 'clone'],
    ['lvm.temporary-made', 'upload'],
    ['lvm.temporary-written', 'upload'],
  ] as const) {
    await t.test(`kill -9 at ${failpoint} during ${operation === 'upload' ? 'an upload' : `a ${operation}`}: after restart no LV left, check clean`, async (t) => {
      t.equal(await agent.stop(), 0);
      const before = readCatalog(catalogPath);
      const lvsBefore = agentLvs();
      agent = await startAgent(top, spec({ env: { VOLAGENT_FAILPOINTS: `${failpoint}=kill` } }));
      const target = `k-${operation}-${failpoint.replace(/\W/g, '')}`;
      const request = operation === 'clone' ? agent.request('PUT', `/v1/volumes/${target}`, { tenant: 't1', source: { volume: 'v2' } })
        : operation === 'create' ? agent.request('PUT', `/v1/volumes/${target}`, { tenant: 't1', sizeBytes: 4 * MiB })
          : streamOn(agent.socket, 'PUT', `/v1/images/${target}/data?tenant=t1`, filled(0x5a, 4 * MiB), { headers: { 'content-length': 4 * MiB } });
      await t.rejects(request, 'the connection breaks: the agent died');
      t.match(await agent.exited, { signal: 'SIGKILL' }, 'killed by the failpoint');
      t.not(agentLvs().length, lvsBefore.length, 'the LV was made before the agent died');
      agent = await startAgent(top, spec());
      t.equal((await agent.request('GET', `/v1/volumes/${target}`)).status, 404, 'the unanswered request left no volume');
      t.same(agentLvs(), lvsBefore, 'start-up removed the LV it left');
      const after = readCatalog(catalogPath);
      t.same({ ...after, operations: [] }, { ...before, operations: [] }, 'the catalog rows are as before');
      t.match((await agent.request('GET', '/v1/check')).body, { clean: true, differences: [] }, 'volagent check: clean');
      await untouched(t);
    });
  }

  await t.test('adoption: the thin LVs the agent did not make are listed with their refusals; an adopted LV becomes a volume with its bytes; refusals change nothing', async (t) => {
    lvmRun('lvcreate', ['-q', '-V', '8m', '-T', `${VG}/${THIN_POOL}`, '-n', 'legacy', '--addtag', 'owner.cinder']);
    await writePattern(`/dev/${VG}/legacy`, 0x6b, 2 * MiB);
    lvmRun('lvcreate', ['-q', '-V', '8m', '-T', `${VG}/${THIN_POOL}`, '-n', 'legacy-ro']);
    lvmRun('lvchange', ['-q', '-p', 'r', `${VG}/legacy-ro`]);
    const legacySha = await sha256Of(`/dev/${VG}/legacy`);
    const listed = await agent.request('GET', `/v1/pools/${POOL}/unmanaged`);
    t.equal(listed.status, 200, listed.text);
    t.same(listed.body, [
      { name: 'legacy', sizeBytes: 8 * MiB },
      { name: 'legacy-ro', sizeBytes: 8 * MiB, refusal: 'read-only' },
      { name: 'other', sizeBytes: 16 * MiB },
      { name: 'other-snap', sizeBytes: 16 * MiB },
      { name: 'va.lvm0.trap', sizeBytes: 8 * MiB },
    ], 'the thin LVs of the thin pool without the tag volagent: not the linear LV, not the tagged one, none of the pool\'s own');
    t.same((await agent.request('GET', `/v1/pools/${POOL}/unmanaged/linear`)).body, { name: 'linear', sizeBytes: 8 * MiB, refusal: `not a thin LV of ${VG}/${THIN_POOL}` });

    const catalogBefore = readCatalog(catalogPath);
    const lvsBefore = lvs();
    const held = await open(`/dev/${VG}/legacy`, 'r');
    const refused: Array<[string, string, number, string, RegExp]> = [
      ['an LV held open', 'legacy', 409, 'UNMANAGED_REFUSED', /held open/],
      ['a read-only LV', 'legacy-ro', 409, 'UNMANAGED_REFUSED', /read-only/],
      ['an LV outside the thin pool', 'linear', 409, 'UNMANAGED_REFUSED', /not a thin LV of vgtest\/tp/],
      ['an LV with the tag volagent', 'tagged', 404, 'UNMANAGED_NOT_FOUND', /no tagged/],
      ['the thin pool', THIN_POOL, 404, 'UNMANAGED_NOT_FOUND', /no tp/],
      ['an LV of the pool', lvOf('v2'), 404, 'UNMANAGED_NOT_FOUND', /that the agent did not make/],
      ['no such LV', 'ghost', 404, 'UNMANAGED_NOT_FOUND', /no ghost/],
    ];
    try {
      for (const [what, name, status, code, message] of refused) {
        const reply = await agent.request('PUT', '/v1/volumes/a1', { tenant: 't1', pool: POOL, source: { unmanaged: name } });
        t.equal(reply.status, status, `${what}: ${reply.text}`);
        t.match(reply.body, { error: { code, message } }, what);
      }
      const sized = await agent.request('PUT', '/v1/volumes/a1', { tenant: 't1', pool: POOL, sizeBytes: 16 * MiB, source: { unmanaged: 'legacy' } });
      t.match(sized.body, { error: { code: 'BAD_REQUEST', message: /keeps the size it has/ } }, `a size named: ${sized.status}`);
    } finally {
      await held.close();
    }
    t.same(readCatalog(catalogPath), catalogBefore, 'no refusal left a row');
    t.same(lvs(), lvsBefore, 'no refusal changed an LV (lvs rows)');

    const adopted = await agent.request('PUT', '/v1/volumes/a1', { tenant: 't1', pool: POOL, source: { unmanaged: 'legacy' } });
    t.equal(adopted.status, 201, adopted.text);
    t.match(adopted.body, { id: 'a1', pool: POOL, tenant: 't1', sizeBytes: 8 * MiB, state: 'available', cloneMethod: 'adopt', source: { unmanaged: 'legacy' }, readOnly: false });
    t.equal(lvs().get('legacy'), undefined, 'the LV is no longer under its own name');
    t.same(lvs().get(lvOf('a1'))!.lv_tags!.split(',').sort(), ['owner.cinder', 'volagent', `volagent.pool.${POOL}`], 'it is the object\'s LV, tagged as the pool\'s, the other tags kept');
    t.equal(await sha256Of(nodeOf('a1')), legacySha, 'its bytes are the LV\'s');
    t.equal((await agent.request('PUT', '/v1/volumes/a1', { tenant: 't1', pool: POOL, source: { unmanaged: 'legacy' } })).status, 200, 'the same PUT again: 200');
    t.equal((await agent.request('GET', `/v1/pools/${POOL}/unmanaged/legacy`)).status, 404, 'no longer a candidate');
    const clone = await agent.request('PUT', '/v1/volumes/a1c', { tenant: 't1', source: { volume: 'a1' } });
    t.match(clone.body, { state: 'available', cloneMethod: 'thin_snapshot' }, 'a clone of it is a thin snapshot');
    t.equal(await sha256Of(nodeOf('a1c')), legacySha);
    for (const id of ['a1c', 'a1']) t.equal((await agent.request('DELETE', `/v1/volumes/${id}`)).status, 204, `delete ${id}`);
    t.equal(lvs().get(lvOf('a1')), undefined, 'deleting the adopted volume removed its LV');
    lvmRun('lvremove', ['-q', '-y', `${VG}/legacy-ro`]);
    t.match((await agent.request('GET', '/v1/check')).body, { clean: true, differences: [] });
    await untouched(t);
  });

  await t.test('two adoptions of one LV at once: one adopts it, the other finds it gone; the LV is whole and tagged', async (t) => {
    // A lock wait longer than an adoption under TCG: the second waits for the first to end.
    t.equal(await agent.stop(), 0);
    agent = await startAgent(top, { ...spec(), lockWaitMs: 120_000 });
    lvmRun('lvcreate', ['-q', '-V', '8m', '-T', `${VG}/${THIN_POOL}`, '-n', 'legacy3']);
    await writePattern(`/dev/${VG}/legacy3`, 0x3e, MiB);
    const shaBefore = await sha256Of(`/dev/${VG}/legacy3`);
    const replies = await Promise.all(['a3', 'a4'].map((id) => agent.request('PUT', `/v1/volumes/${id}`, { tenant: 't1', pool: POOL, source: { unmanaged: 'legacy3' } })));
    t.same(replies.map((reply) => reply.status).sort(), [201, 404], replies.map((reply) => reply.text).join(' '));
    const winner = replies.find((reply) => reply.status === 201)!.body.id as string;
    t.match(replies.find((reply) => reply.status === 404)!.body, { error: { code: 'UNMANAGED_NOT_FOUND' } });
    t.same(agentLvs().filter((lv) => lv === lvOf('a3') || lv === lvOf('a4')), [lvOf(winner)], 'one LV, the winner\'s');
    t.same(lvs().get(lvOf(winner))!.lv_tags!.split(',').sort(), ['volagent', `volagent.pool.${POOL}`], 'tagged as the pool\'s');
    t.equal(await sha256Of(nodeOf(winner)), shaBefore);
    t.same(readCatalog(catalogPath).volumes.filter((v) => v.id === 'a3' || v.id === 'a4').map((v) => v.id), [winner], 'one row');
    t.equal((await agent.request('DELETE', `/v1/volumes/${winner}`)).status, 204);
    t.match((await agent.request('GET', '/v1/check')).body, { clean: true, differences: [] });
    await untouched(t);
  });

  for (const failpoint of ['lvm.adopt-tagged', 'lvm.adopt-renamed', 'adopt.adopted']) {
    await t.test(`kill -9 at ${failpoint} during an adoption: after restart the LV is back under its name, as it was; no row; check clean`, async (t) => {
      t.equal(await agent.stop(), 0);
      lvmRun('lvcreate', ['-q', '-V', '8m', '-T', `${VG}/${THIN_POOL}`, '-n', 'legacy2', '--addtag', 'owner.cinder']);
      await writePattern(`/dev/${VG}/legacy2`, 0x2d, MiB);
      const rowBefore = lvs().get('legacy2');
      const shaBefore = await sha256Of(`/dev/${VG}/legacy2`);
      const catalogBefore = readCatalog(catalogPath);
      agent = await startAgent(top, spec({ env: { VOLAGENT_FAILPOINTS: `${failpoint}=kill` } }));
      await t.rejects(agent.request('PUT', '/v1/volumes/a2', { tenant: 't1', pool: POOL, source: { unmanaged: 'legacy2' } }), 'the connection breaks: the agent died');
      t.match(await agent.exited, { signal: 'SIGKILL' }, 'killed by the failpoint');
      t.match(readCatalog(catalogPath).volumes.find((v) => v.id === 'a2'), { state: 'creating' }, 'the adoption was recorded before the LV was touched');
      const left = lvs();
      t.ok(failpoint === 'lvm.adopt-tagged' ? left.get('legacy2')!.lv_tags!.includes(`volagent.pool.${POOL}`) : left.has(lvOf('a2')), `the adoption got that far (${[...left.keys()].join(' ')})`);
      agent = await startAgent(top, spec());
      t.equal((await agent.request('GET', '/v1/volumes/a2')).status, 404, 'the unanswered adoption left no volume');
      t.same(lvs().get('legacy2'), rowBefore, 'the LV is back under its name: the same lvs row (tags, size, attributes)');
      t.equal(lvs().get(lvOf('a2')), undefined);
      t.equal(await sha256Of(`/dev/${VG}/legacy2`), shaBefore, 'its bytes as they were');
      t.same({ ...readCatalog(catalogPath), operations: [] }, { ...catalogBefore, operations: [] }, 'the catalog rows are as before');
      t.match((await agent.request('GET', '/v1/check')).body, { clean: true, differences: [] }, 'volagent check: clean');
      lvmRun('lvremove', ['-q', '-y', `${VG}/legacy2`]);
      await untouched(t);
    });
  }

  await t.test('an LV removed behind the agent\'s back: check names it missing, repair marks its row error', async (t) => {
    const made = await agent.request('PUT', '/v1/volumes/gone', { tenant: 't1', sizeBytes: 4 * MiB });
    t.equal(made.status, 201, made.text);
    lvmRun('lvremove', ['-q', '-y', `${VG}/${lvOf('gone')}`]);
    const check = (await agent.request('GET', '/v1/check')).body;
    t.match(check, { clean: false, differences: [{ kind: 'missing', pool: POOL, object: 'gone' }] });
    t.equal(check.differences.length, 1, 'only that');
    const repaired = await agent.request('POST', '/v1/check/repair');
    t.match(repaired.body, { differences: [{ kind: 'missing', object: 'gone', action: 'marked-error' }] });
    t.match((await agent.request('GET', '/v1/volumes/gone')).body, { state: 'error' });
    t.equal((await agent.request('DELETE', '/v1/volumes/gone')).status, 204, 'and it can be deleted');
    t.match((await agent.request('GET', '/v1/check')).body, { clean: true });
    await untouched(t);
  });

  await t.test('an LV made behind the agent\'s back with its tags: check names an orphan; the other owner\'s LVs never are', async (t) => {
    lvmRun('lvcreate', ['-q', '-V', '4m', '-T', `${VG}/${THIN_POOL}`, '-n', lvOf('stray'), '--addtag', 'volagent', '--addtag', `volagent.pool.${POOL}`]);
    const check = (await agent.request('GET', '/v1/check')).body;
    t.match(check, { clean: false, differences: [{ kind: 'orphan', pool: POOL, object: 'stray' }] });
    t.equal(check.differences.length, 1, 'only that');
    const repaired = await agent.request('POST', '/v1/check/repair');
    t.match(repaired.body, { differences: [{ kind: 'orphan', object: 'stray', action: 'removed' }] });
    t.equal(lvs().get(lvOf('stray')), undefined, 'repair removed it');
    await untouched(t);
  });

  await t.test('delete everything: the pool has no LV left, the other owner\'s are as they were', async (t) => {
    const images = (await agent.request('GET', '/v1/images')).body as Array<{ imageId: string }>;
    t.same(images.map((image) => image.imageId), ['img1'], 'the image left from the images subtest');
    for (const image of images) t.equal((await agent.request('DELETE', `/v1/images/${image.imageId}`)).status, 204, image.imageId);
    t.equal((await agent.request('DELETE', '/v1/volumes/v2/snapshots/s1')).status, 204);
    for (const id of ['v2', 'v3', 'v4']) t.equal((await agent.request('DELETE', `/v1/volumes/${id}`)).status, 204, id);
    const deadline = Date.now() + 60_000;
    while (agentLvs().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    if (agentLvs().length > 0) t.comment(`left: images ${(await agent.request('GET', '/v1/images')).text} volumes ${(await agent.request('GET', '/v1/volumes')).text}`);
    t.same(agentLvs(), [], 'no LV of the pool');
    t.equal(await agent.stop(), 0);
    await untouched(t, []);
  });
}
