// Guest-only tap file, run by test/vm/lvm-faults.test.ts: volagentd with an
// `lvm` pool in a volume group `vgf` on vda (128 MiB) whose thin pool `tp`
// has 64 MiB of data and errors when full (`--errorwhenfull y`), beside a
// thin LV of another owner, on the guest's kernel.
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
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess, AgentSpec, Reply } from '../../helpers/agent.js';
import { startAgent, streamOn } from '../../helpers/agent.js';
import type { SweptOperation } from '../../helpers/crash-sweep.js';
import { expectCreated, literal, newSweepFigures, sweepOperation, volumeOperations } from '../../helpers/crash-sweep.js';
import { readAt, sha256 } from '../../helpers/files.js';
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
  lvmRun('pvcreate', ['-q', '/dev/vda']);
  lvmRun('vgcreate', ['-q', '-s', '4m', VG, '/dev/vda']);
  lvmRun('lvcreate', ['-q', '--type', 'thin-pool', '-L', '64m', '-c', '64k', '-Zy', '-n', THIN_POOL, VG]);
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
}
