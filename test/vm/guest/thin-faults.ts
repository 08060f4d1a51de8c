// Guest-only tap file, run by test/vm/thin-faults.test.ts: a thin pool whose
// data (vda, 64 MiB) and metadata (vdb, 8 MiB) devices are dm-flakey
// devices, on the guest's kernel.
//
//   crash sweep: create, clone, snapshot, resize, delete a volume, delete a
//     snapshot, each killed at every thin failpoint it passes (and a
//     resize after its ledger update)
//     (test/helpers/crash-sweep.ts). After each restart the invariants hold,
//     and the catalog's thin ids are exactly the active devices' and the
//     pool metadata's (thin_dump), with no change pending. (The catalog's
//     own failpoints are swept on file pools, crash-sweep.test.ts: the
//     agent's layer above the pool is the same.)
//   out of space: an upload larger than the pool gets 507, and the partial
//     Image-Volume is removed.
//   I/O errors: the data device fails every write. A guest's write to a
//     volume fails with EIO, and an upload answers 503; the agent stays up.
//     Then the metadata device fails too: the pool goes read-only or fails,
//     GET /v1/pools says so, every change is refused with 503
//     POOL_UNAVAILABLE and leaves no row, and reads are still served.
import { mkdtemp, open } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess, AgentSpec, Reply } from '../../helpers/agent.js';
import { startAgent, streamOn } from '../../helpers/agent.js';
import { expectCreated, newSweepFigures, sweepOperation, volumeOperations } from '../../helpers/crash-sweep.js';
import { FlakeyDevice } from '../../helpers/flakey.js';
import { catalogRows, checkInvariants, InvariantError } from '../../helpers/invariants.js';
import { activeThinIds, poolStatus, poolThinIds, readThinRows, removeAgentDevices } from '../../helpers/thin-state.js';
import { inVmGuest } from '../../helpers/vm.js';

const MiB = 1024 * 1024;
const POOL = 'tf';
const DEVICE_DIR = '/dev/volagent-tf';
const VOLUME_BYTES = MiB;

interface Context { agent: AgentProcess }

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/thin-faults.test.ts');
} else {
  t.setTimeout(1_080_000);
  const flakey = { data: await FlakeyDevice.create('tf-data', '/dev/vda'), meta: await FlakeyDevice.create('tf-meta', '/dev/vdb') };
  const dir = await mkdtemp('/tmp/thin-faults-');
  const traceFile = path.join(dir, 'failpoints.trace');
  const spec = (env: NodeJS.ProcessEnv = {}): AgentSpec => ({
    dir, startTimeoutMs: 120_000, env,
    pools: [{ name: POOL, backend: 'thin', dataDevice: flakey.data.path, metadataDevice: flakey.meta.path, deviceDir: DEVICE_DIR, blockSize: '64KiB', minFree: '5%' }],
  });
  const ctx: Context = { agent: await startAgent(t, spec()) };
  t.teardown(async () => {
    // The I/O-error subtest leaves both devices failing writes: let them pass again first, so that
    // nothing still in flight against them (the agent's, the pool's) waits on them while the agent is
    // killed and the devices removed.
    for (const device of Object.values(flakey)) await device.swap('pass').catch(() => undefined);
    if (ctx.agent.child.exitCode === null && ctx.agent.child.signalCode === null) await ctx.agent.kill();
    await removeAgentDevices(POOL).catch(() => undefined);
    for (const device of Object.values(flakey)) await device.remove().catch(() => undefined);
  });
  const nodeOf = (object: string): string => path.join(DEVICE_DIR, POOL, object);
  const request = (method: string, urlPath: string, body?: unknown): Promise<Reply> => ctx.agent.request(method, urlPath, body);
  await expectCreated(request('PUT', '/v1/volumes/src', { tenant: 't1', sizeBytes: VOLUME_BYTES }), 'create src');
  {
    const handle = await open(nodeOf('src'), 'r+');
    await handle.write(Buffer.alloc(VOLUME_BYTES, 0xa5), 0, VOLUME_BYTES, 0);
    await handle.sync();
    await handle.close();
  }

  /** The invariants, and the thin ids of catalog, active devices and pool metadata the same. */
  const invariants = async () => {
    const rows = await checkInvariants(ctx.agent, new Map());
    const thin = readThinRows(ctx.agent.catalogPath, POOL);
    const ids = thin.devices.map((d) => d.thin_id);
    const active = await activeThinIds(POOL);
    const metadata = await poolThinIds(POOL, flakey.meta.path);
    if (thin.pool?.pending !== null) throw new InvariantError(`a thin change is pending in the catalog: ${thin.pool?.pending}`);
    if (JSON.stringify(active) !== JSON.stringify(ids)) throw new InvariantError(`active thin ids ${JSON.stringify(active)}, the catalog's ${JSON.stringify(ids)}`);
    if (JSON.stringify(metadata) !== JSON.stringify(ids)) throw new InvariantError(`the pool's metadata holds ${JSON.stringify(metadata)}, the catalog ${JSON.stringify(ids)}`);
    const status = await poolStatus(POOL);
    if (status.state !== 'working' || status.transactionId !== thin.pool.transaction_id) {
      throw new InvariantError(`pool transaction id ${JSON.stringify(status)}, the catalog's ${thin.pool.transaction_id}`);
    }
    return rows;
  };

  const create = (c: Context, id: string): Promise<Reply> => c.agent.request('PUT', `/v1/volumes/${id}`, { tenant: 't1', sizeBytes: VOLUME_BYTES });
  const OPERATIONS = volumeOperations<Context>({ pool: POOL, volumeBytes: VOLUME_BYTES, cloneMethod: 'a thin snapshot' });

  const harness = {
    ctx,
    start: (env: NodeJS.ProcessEnv) => startAgent(t, spec(env)), // the whole test's teardown: it outlives a subtest
    invariants,
    traceFile,
    // The pool's own points. Each catalog point of the thin ledger sits next to
    // one of them with nothing durable between (thin.after-begin is
    // catalog.after-begin-thin-change, ...), except a resize's, which is swept.
    sweeps: (point: string) => point.startsWith('thin.') || point === 'catalog.after-update-thin-device',
    deathTimeoutMs: 60_000,
  };
  const figures = newSweepFigures();
  let n = 0;
  for (const op of OPERATIONS) await sweepOperation(t, harness, op, () => ++n, figures);
  t.comment(`thin crash sweep: ${figures.operations} operations, ${figures.kills} kills at thin failpoints; ` +
    `after restart ${figures.done} done, ${figures.absent} absent; lost: 0`);

  await t.test('out of data space during an upload: 507, the partial Image-Volume removed, the pool usable again', async (t) => {
    const before = catalogRows(ctx.agent.catalogPath);
    const srcBefore = await readHead(nodeOf('src'));
    // Random bytes (never a zero block the pool would skip), more than the 64 MiB data device holds.
    const { randomBytes } = await import('node:crypto');
    const data = randomBytes(80 * MiB);
    const reply = await streamOn(ctx.agent.socket, 'PUT', '/v1/images/too-big/data?tenant=t1', data, { headers: { 'content-length': data.length } });
    t.equal(reply.status, 507, `the upload is refused when the pool fills (${reply.text.slice(0, 300)})`);
    t.equal(reply.body?.error?.code, 'INSUFFICIENT_SPACE', 'INSUFFICIENT_SPACE');
    const after = await invariants();
    t.same(after.volumes.map((v) => v.id), before.volumes.map((v) => v.id), 'no Image-Volume row is left');
    t.same(after.images, before.images, 'no image row is left');
    t.ok(srcBefore.equals(Buffer.alloc(srcBefore.length, 0xa5)) && (await readHead(nodeOf('src'))).equals(srcBefore), 'the source volume is intact');
    const [pool] = (await request('GET', '/v1/pools')).body;
    t.comment(`pool after the partial upload was removed: ${JSON.stringify({ health: pool.health, capacity: pool.capacity })}`);
    const small = await create(ctx, 'after-full');
    t.equal(small.status, 201, `the agent keeps serving: a volume is made once the space is back (${small.text.slice(0, 200)})`);
    t.equal((await request('DELETE', '/v1/volumes/after-full')).status, 204);
  });

  await t.test('I/O errors on the data device, then the metadata device: clear errors, the agent up, nothing kept that failed', async (t) => {
    await expectCreated(create(ctx, 'victim'), 'create victim');
    const before = catalogRows(ctx.agent.catalogPath);
    await flakey.data.swap('error');
    const handle = await open(nodeOf('victim'), 'r+');
    const write = await handle.write(Buffer.alloc(64 * 1024, 0x5a), 0, 64 * 1024, 0).then(() => handle.sync()).then(() => 'written', (e: NodeJS.ErrnoException) => e.code);
    await handle.close().catch(() => undefined);
    t.equal(write, 'EIO', "a guest's write to a volume fails with EIO");
    const upload = await streamOn(ctx.agent.socket, 'PUT', '/v1/images/eio-img/data?tenant=t1', Buffer.alloc(2 * MiB, 0x33), { headers: { 'content-length': 2 * MiB } });
    t.equal(upload.status, 503, `an upload answers 503 (${upload.text.slice(0, 300)})`);
    t.equal(upload.body?.error?.code, 'POOL_UNAVAILABLE', 'POOL_UNAVAILABLE');
    t.equal((await request('GET', '/v1/version')).status, 200, 'the agent keeps answering');

    await flakey.meta.swap('error');
    const refused = await request('PUT', '/v1/volumes/eio-vol', { tenant: 't1', sizeBytes: VOLUME_BYTES });
    t.equal(refused.status, 503, `a create once the metadata fails: 503 (${refused.text.slice(0, 300)})`);
    t.equal(refused.body?.error?.code, 'POOL_UNAVAILABLE', 'POOL_UNAVAILABLE');
    const [pool] = (await request('GET', '/v1/pools')).body;
    // A failed metadata write aborts the transaction and switches the pool to read-only with needs_check (dm-thin's metadata_operation_failed).
    t.match(pool.health, { mode: 'ro', needsCheck: true }, `GET /v1/pools reports the pool read-only, needing a check: ${JSON.stringify(pool.health)}`);
    for (const [label, send] of [
      ['snapshot', () => request('PUT', '/v1/volumes/src/snapshots/eio-snap')],
      ['clone', () => request('PUT', '/v1/volumes/eio-clone', { tenant: 't1', source: { volume: 'src' } })],
      ['create', () => request('PUT', '/v1/volumes/eio-vol2', { tenant: 't1', sizeBytes: VOLUME_BYTES })],
    ] as Array<[string, () => Promise<Reply>]>) {
      const reply = await send();
      t.equal(reply.status, 503, `${label} is refused: 503 (${reply.text.slice(0, 200)})`);
      t.equal(reply.body?.error?.code, 'POOL_UNAVAILABLE', `${label}: POOL_UNAVAILABLE`);
    }
    const listed = await request('GET', '/v1/volumes');
    t.equal(listed.status, 200, 'reads are still served');
    const after = catalogRows(ctx.agent.catalogPath);
    t.same(after.volumes.map((v) => `${v.id} ${v.state}`), before.volumes.map((v) => `${v.id} ${v.state}`), 'no refused change left a row, and no row changed state');
    t.same(after.snapshots, before.snapshots, 'nor a snapshot');
    t.same(after.images, before.images, 'nor an image');
    t.equal((await request('GET', '/v1/version')).status, 200, 'the agent is up');
  });
}

async function readHead(node: string): Promise<Buffer> {
  const handle = await open(node, 'r');
  try {
    const buffer = Buffer.alloc(64 * 1024);
    await handle.read(buffer, 0, buffer.length, 0);
    return buffer;
  } finally {
    await handle.close();
  }
}
