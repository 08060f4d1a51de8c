// Guest-only tap file, run by test/vm/lvm-faults.test.ts: volagentd with an
// `lvm` pool in a volume group `vgf` whose thin pool `tp` has 64 MiB of data
// and errors when full (`--errorwhenfull y`), beside a thin LV of another
// owner, on the guest's kernel. The VG's two PVs are dm-flakey devices: one
// over vda (128 MiB) holds the thin pool's data, the other over vdb (16 MiB)
// its metadata and the VG's metadata (the data PV keeps none).
//
//   crash sweep: create, clone, snapshot, resize, delete a volume, delete a
//     snapshot and upload an image, each killed at every point of the pool it
//     passes and at the catalog's on either side of the pool's work
//     (test/helpers/crash-sweep.ts). After each
//     restart the invariants hold, the pool's tagged LVs are exactly the
//     catalog's volumes and snapshots (no `vt.`, `vr.` or `vo.` LV left),
//     each LV made has the size its row records, clones and snapshots hold
//     their source's bytes, an upload the uploaded bytes, and the other
//     owner's LV is unchanged.
//   out of space: an upload larger than the thin pool gets 507, the partial
//     Image-Volume's LV is removed, and the pool makes volumes again.
//   no stale data: a deleted volume's chunks, provisioned again for a new
//     volume written 4 KiB per 64 KiB chunk, read as zeros past the pieces
//     (the pool zeroes new blocks; the agent refuses a pool that does not).
//   I/O errors: the data PV fails every write. A guest's write to a volume
//     fails with EIO, and an upload answers 503 and leaves no LV; the agent
//     stays up. Then the metadata PV fails instead: the pool's next metadata
//     commit fails, the pool goes read-only, GET /v1/pools says so, every
//     change is refused with 503 POOL_UNAVAILABLE and leaves no row and no
//     LV, and reads are still served.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, writeFile } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess, AgentSpec, Reply } from '../../helpers/agent.js';
import { startAgent, streamOn } from '../../helpers/agent.js';
import type { SweptOperation } from '../../helpers/crash-sweep.js';
import { expectCreated, literal, newSweepFigures, sweepOperation, volumeOperations } from '../../helpers/crash-sweep.js';
import { readAt, sha256 } from '../../helpers/files.js';
import { FlakeyDevice } from '../../helpers/flakey.js';
import type { CatalogRows } from '../../helpers/invariants.js';
import { catalogRows, checkInvariants, InvariantError } from '../../helpers/invariants.js';
import { agentLvName, agentLvs, lvmRun } from '../../helpers/lvm.js';
import { inVmGuest } from '../../helpers/vm.js';

const KiB = 1024;
const MiB = 1024 * 1024;
const POOL = 'lf';
const VG = 'vgf';
const THIN_POOL = 'tp';
const VOLUME_BYTES = 4 * MiB;
const UPLOAD_BYTES = 8 * MiB;

interface Context { agent: AgentProcess }

const nodeOf = (object: string): string => `/dev/${VG}/${agentLvName(POOL, object)}`;

/** The sizes lvs reports for the LVs of the VG, by name. */
function lvSizes(): Map<string, number> {
  const report = JSON.parse(lvmRun('lvs', ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', 'lv_name,lv_size', VG])) as { report: Array<{ lv: Array<{ lv_name: string; lv_size: string }> }> };
  return new Map(report.report[0]!.lv.map((row) => [row.lv_name, Number(row.lv_size)]));
}

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/lvm-faults.test.ts');
} else {
  t.setTimeout(1_140_000);
  // The VG's PVs are dm-flakey devices over the disks; lvm2 (the test's and the
  // agent's, which inherits this environment) sees only those, not the disks
  // under them with the same PV labels.
  const lvmDir = await mkdtemp('/tmp/lvm-faults-conf-');
  await writeFile(path.join(lvmDir, 'lvm.conf'), 'devices {\n  global_filter = [ "a|^/dev/mapper/lf-|", "r|^/dev/vd|" ]\n}\n');
  process.env.LVM_SYSTEM_DIR = lvmDir;
  const flakey = { data: await FlakeyDevice.create('lf-data', '/dev/vda'), meta: await FlakeyDevice.create('lf-meta', '/dev/vdb') };
  // The thin pool's data on one, its metadata and the VG's metadata on the other.
  lvmRun('pvcreate', ['-q', '--metadatacopies', '0', flakey.data.path]);
  lvmRun('pvcreate', ['-q', flakey.meta.path]);
  lvmRun('vgcreate', ['-q', '-s', '4m', VG, flakey.data.path, flakey.meta.path]);
  lvmRun('lvcreate', ['-q', '-L', '64m', '-n', THIN_POOL, VG, flakey.data.path]);
  lvmRun('lvcreate', ['-q', '-L', '4m', '-n', `${THIN_POOL}meta`, VG, flakey.meta.path]);
  lvmRun('lvconvert', ['-q', '-y', '--type', 'thin-pool', '--poolmetadata', `${VG}/${THIN_POOL}meta`, '--poolmetadataspare', 'n', '-c', '64k', '-Zy', `${VG}/${THIN_POOL}`]);
  lvmRun('lvchange', ['-q', '--errorwhenfull', 'y', `${VG}/${THIN_POOL}`]);
  lvmRun('lvcreate', ['-q', '-V', '4m', '-T', `${VG}/${THIN_POOL}`, '-n', 'theirs', '--addtag', 'owner.cinder']);
  {
    const handle = await open(`/dev/${VG}/theirs`, 'r+');
    await handle.write(Buffer.alloc(MiB, 0x7e), 0, MiB, 0);
    await handle.sync();
    await handle.close();
  }
  const theirs = await sha256(`/dev/${VG}/theirs`);
  const dir = await mkdtemp('/tmp/lvm-faults-');
  const traceFile = path.join(dir, 'failpoints.trace');
  const spec = (env: NodeJS.ProcessEnv = {}): AgentSpec => ({
    dir, startTimeoutMs: 120_000, env: { ...env, DM_DISABLE_UDEV: '1' },
    pools: [{ name: POOL, backend: 'lvm', vg: VG, thinPool: THIN_POOL, minFree: '5%' }],
  });
  const ctx: Context = { agent: await startAgent(t, spec()) };
  t.teardown(async () => {
    // The I/O-error subtest leaves both devices failing writes: they pass again before the agent is killed.
    for (const device of Object.values(flakey)) await device.swap('pass').catch(() => undefined);
    if (ctx.agent.child.exitCode === null && ctx.agent.child.signalCode === null) await ctx.agent.kill();
  });
  const request = (method: string, urlPath: string, body?: unknown): Promise<Reply> => ctx.agent.request(method, urlPath, body);
  await expectCreated(request('PUT', '/v1/volumes/src', { tenant: 't1', sizeBytes: VOLUME_BYTES }), 'create src');
  const srcBytes = randomBytes(VOLUME_BYTES);
  {
    const handle = await open(nodeOf('src'), 'r+');
    await handle.write(srcBytes, 0, VOLUME_BYTES, 0);
    await handle.sync();
    await handle.close();
  }
  const uploadData = randomBytes(UPLOAD_BYTES);
  const uploadSha = createHash('sha256').update(uploadData).digest('hex');

  /** The invariants; the pool's tagged LVs exactly the catalog's objects, each of its row's size. */
  const invariants = async (): Promise<CatalogRows> => {
    const rows = await checkInvariants(ctx.agent, new Map());
    const objects = [
      ...rows.volumes.filter((v) => v.pool === POOL).map((v) => ({ name: v.id, sizeBytes: v.sizeBytes })),
      ...rows.snapshots.map((s) => ({ name: s.object, sizeBytes: rows.volumes.find((v) => v.id === s.object.split('@')[0])?.sizeBytes })),
    ];
    const expected = objects.map((o) => agentLvName(POOL, o.name)).sort();
    const actual = agentLvs(VG, POOL);
    if (JSON.stringify(actual) !== JSON.stringify(expected)) throw new InvariantError(`the pool's LVs ${JSON.stringify(actual)}, the catalog's objects ${JSON.stringify(expected)}`);
    const sizes = lvSizes();
    for (const object of objects.filter((o) => !o.name.includes('@'))) {
      const lvSize = sizes.get(agentLvName(POOL, object.name));
      if (lvSize !== object.sizeBytes) throw new InvariantError(`${object.name}: the LV is ${lvSize} bytes, its row ${object.sizeBytes}`);
    }
    return rows;
  };
  const verifyUntouched = async (): Promise<void> => {
    if (!(await readAt(nodeOf('src'), VOLUME_BYTES)).equals(srcBytes)) throw new Error('the source volume changed');
    if ((await sha256(`/dev/${VG}/theirs`)) !== theirs) throw new Error("the other owner's LV changed");
  };
  const holdsSource = async (object: string): Promise<void> => {
    if (!(await readAt(nodeOf(object), VOLUME_BYTES)).equals(srcBytes)) throw new Error(`${object} does not hold the source's bytes`);
  };

  const create = (c: Context, id: string): Promise<Reply> => c.agent.request('PUT', `/v1/volumes/${id}`, { tenant: 't1', sizeBytes: VOLUME_BYTES });
  const OPERATIONS: Array<SweptOperation<Context>> = [
    ...volumeOperations<Context>({ pool: POOL, volumeBytes: VOLUME_BYTES, cloneMethod: 'a thin snapshot by lvcreate -s', holdsSource: (_c, object) => holdsSource(object) }),
    {
      name: 'upload an image (through a vt. temporary)',
      prepare: async (_c, n) => ({ id: `u-${n}` }),
      run: (c, { id }) => streamOn(c.agent.socket, 'PUT', `/v1/images/${id}/data?tenant=t1`, uploadData, { headers: { 'content-length': UPLOAD_BYTES } }),
      done: ({ id }) => ({ added: [new RegExp(`^volume iv-\\S+ ${POOL} image ${UPLOAD_BYTES} ro$`), new RegExp(`^image ${literal(id!)} iv-\\S+$`)], removed: [] }),
      verifyDone: async (_c, { id }, rows) => {
        if ((await sha256(nodeOf(rows.images.find((i) => i.id === id)!.volumeId))) !== uploadSha) throw new Error(`image ${id} does not hold the uploaded bytes`);
      },
    },
  ];

  const harness = {
    ctx,
    start: (env: NodeJS.ProcessEnv) => startAgent(t, spec(env)), // the whole test's teardown: it outlives a subtest
    invariants,
    verifyUntouched,
    traceFile,
    // The pool's points, and the catalog's on either side of the pool's work:
    // the intent durable before the lvm2 command, the result not yet. The rest
    // of the catalog's points are backend-independent and swept on file pools.
    sweeps: (point: string) => point.startsWith('lvm.') || point === 'upload.receiving' ||
      /^catalog\.(after-insert-(snapshot-)?creating|before-transition-(volume|snapshot)|before-remove-(volume|snapshot)|before-update-volume)$/.test(point),
    deathTimeoutMs: 60_000,
  };
  const figures = newSweepFigures();
  let n = 0;
  for (const op of OPERATIONS) await sweepOperation(t, harness, op, () => ++n, figures);
  t.comment(`lvm crash sweep: ${figures.operations} operations, ${figures.kills} kills; ` +
    `after restart ${figures.done} done (${figures.acknowledged} answered before the kill), ${figures.absent} absent; lost: 0`);

  await t.test('out of data space during an upload: 507, the partial Image-Volume\'s LV removed, the pool usable again', async (t) => {
    const before = catalogRows(ctx.agent.catalogPath);
    // Random bytes (never a zero block the writer would skip), more than the 64 MiB thin pool holds.
    const data = randomBytes(80 * MiB);
    const reply = await streamOn(ctx.agent.socket, 'PUT', '/v1/images/too-big/data?tenant=t1', data, { headers: { 'content-length': data.length } });
    t.equal(reply.status, 507, `the upload is refused when the pool fills (${reply.text.slice(0, 300)})`);
    t.equal(reply.body?.error?.code, 'INSUFFICIENT_SPACE', 'INSUFFICIENT_SPACE');
    const after = await invariants();
    t.same(after.volumes.map((v) => v.id), before.volumes.map((v) => v.id), 'no Image-Volume row is left');
    t.same(after.images, before.images, 'no image row is left');
    t.notOk(agentLvs(VG, POOL).some((lv) => lv.startsWith('vt.')), 'no temporary LV is left');
    await verifyUntouched();
    t.pass('the source volume and the other owner\'s LV are intact');
    const [pool] = (await request('GET', '/v1/pools')).body;
    t.comment(`pool after the partial upload was removed: ${JSON.stringify({ health: pool.health, capacity: pool.capacity })}`);
    const small = await create(ctx, 'after-full');
    t.equal(small.status, 201, `the agent keeps serving: a volume is made once the space is back (${small.text.slice(0, 200)})`);
    t.equal((await request('DELETE', '/v1/volumes/after-full')).status, 204);
  });

  await t.test('no data of a deleted volume: the chunks it freed, provisioned again for a new volume, read as zeros past the new writes', async (t) => {
    const CHUNK = 64 * KiB;
    const freeBytes = (await request('GET', '/v1/pools')).body[0].capacity.freeBytes as number;
    // Sized so that the new volume cannot be provisioned without most of the chunks the deleted one freed.
    const size = Math.floor((freeBytes - 12 * MiB) / (4 * MiB)) * 4 * MiB;
    const reused = size - (freeBytes - size);
    t.ok(reused >= 8 * MiB, `at least ${reused / MiB} MiB of the new volume's chunks were the deleted one's (${freeBytes / MiB} MiB free, volumes of ${size / MiB} MiB)`);
    await expectCreated(request('PUT', '/v1/volumes/stale', { tenant: 't1', sizeBytes: size }), 'create stale');
    {
      const handle = await open(nodeOf('stale'), 'r+');
      for (let offset = 0; offset < size; offset += MiB) await handle.write(Buffer.alloc(MiB, 0xee), 0, MiB, offset);
      await handle.sync();
      await handle.close();
    }
    t.equal((await request('GET', '/v1/volumes/stale')).body.allocatedBytes, size, 'the deleted volume had every chunk provisioned');
    t.equal((await request('DELETE', '/v1/volumes/stale')).status, 204);
    await expectCreated(request('PUT', '/v1/volumes/fresh', { tenant: 't1', sizeBytes: size }), 'create fresh');
    const piece = Buffer.alloc(4 * KiB, 0x11);
    {
      const handle = await open(nodeOf('fresh'), 'r+');
      for (let offset = 0; offset < size; offset += CHUNK) await handle.write(piece, 0, piece.length, offset);
      await handle.sync();
      await handle.close();
    }
    t.equal((await request('GET', '/v1/volumes/fresh')).body.allocatedBytes, size, 'the new volume has every chunk provisioned');
    const expected = Buffer.alloc(CHUNK);
    piece.copy(expected);
    let wrong = 0;
    for (let offset = 0; offset < size; offset += CHUNK) if (!(await readAt(nodeOf('fresh'), CHUNK, offset)).equals(expected)) wrong += 1;
    t.equal(wrong, 0, 'every chunk reads its 4 KiB piece, then zeros: nothing of the deleted volume');
    t.equal((await request('DELETE', '/v1/volumes/fresh')).status, 204);
    await verifyUntouched();
  });
  await t.test("I/O errors on the thin pool's data PV, then its metadata PV: clear errors, the agent up, nothing kept that failed", async (t) => {
    await expectCreated(create(ctx, 'victim'), 'create victim');
    const before = catalogRows(ctx.agent.catalogPath);
    const lvsBefore = agentLvs(VG, POOL);
    await flakey.data.swap('error');
    /** A 64 KiB write at `offset`, where the volume has no chunk yet, and an fsync: 'written' or the error's code. */
    const write = async (object: string, offset: number): Promise<string> => {
      const handle = await open(nodeOf(object), 'r+');
      try {
        await handle.write(Buffer.alloc(64 * KiB, 0x5a), 0, 64 * KiB, offset);
        await handle.sync();
        return 'written';
      } catch (e) {
        return (e as NodeJS.ErrnoException).code ?? String(e);
      } finally {
        await handle.close().catch(() => undefined);
      }
    };
    t.equal(await write('victim', 0), 'EIO', "a guest's write to a volume fails with EIO");
    const upload = await streamOn(ctx.agent.socket, 'PUT', '/v1/images/eio-img/data?tenant=t1', Buffer.alloc(VOLUME_BYTES, 0x33), { headers: { 'content-length': VOLUME_BYTES } });
    t.equal(upload.status, 503, `an upload answers 503 (${upload.text.slice(0, 300)})`);
    t.equal(upload.body?.error?.code, 'POOL_UNAVAILABLE', 'POOL_UNAVAILABLE');
    t.same(agentLvs(VG, POOL), lvsBefore, "the upload's temporary LV is removed");
    t.equal((await request('GET', '/v1/version')).status, 200, 'the agent keeps answering');

    // The data PV passes again, the metadata PV fails: the next commit of the
    // pool's metadata (a guest's write provisioning a chunk, flushed) fails.
    await flakey.data.swap('pass');
    await flakey.meta.swap('error');
    t.equal(await write('victim', MiB), 'EIO', "a guest's write and fsync once the metadata fails: EIO");
    const [pool] = (await request('GET', '/v1/pools')).body;
    // A failed metadata write aborts the transaction and switches the pool to read-only with needs_check (dm-thin's metadata_operation_failed).
    t.match(pool.health, { mode: 'ro', needsCheck: true }, `GET /v1/pools reports the pool read-only, needing a check: ${JSON.stringify(pool.health)}`);
    for (const [label, send] of [
      ['create', () => request('PUT', '/v1/volumes/eio-vol', { tenant: 't1', sizeBytes: VOLUME_BYTES })],
      ['snapshot', () => request('PUT', '/v1/volumes/victim/snapshots/eio-snap')],
      ['clone', () => request('PUT', '/v1/volumes/eio-clone', { tenant: 't1', source: { volume: 'victim' } })],
      ['resize', () => request('POST', '/v1/volumes/victim/resize', { sizeBytes: 2 * VOLUME_BYTES })],
    ] as Array<[string, () => Promise<Reply>]>) {
      const reply = await send();
      t.equal(reply.status, 503, `${label} is refused: 503 (${reply.text.slice(0, 200)})`);
      t.equal(reply.body?.error?.code, 'POOL_UNAVAILABLE', `${label}: POOL_UNAVAILABLE`);
    }
    t.equal((await request('GET', '/v1/volumes')).status, 200, 'reads are still served');
    t.ok((await readAt(nodeOf('src'), VOLUME_BYTES)).equals(srcBytes), "the source volume's bytes still read back");
    const after = catalogRows(ctx.agent.catalogPath);
    t.same(after.volumes.map((v) => `${v.id} ${v.state} ${v.sizeBytes}`), before.volumes.map((v) => `${v.id} ${v.state} ${v.sizeBytes}`), 'no refused change left a row, and no row changed');
    t.same(after.snapshots, before.snapshots, 'nor a snapshot');
    t.same(after.images, before.images, 'nor an image');
    t.same(agentLvs(VG, POOL), lvsBefore, "the pool's LVs are the same");
    t.equal((await request('GET', '/v1/version')).status, 200, 'the agent is up');
  });
}
