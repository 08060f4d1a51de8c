// Guest-only tap file, run by test/vm/power-loss.test.ts: a file pool and
// its catalog on XFS over dm-flakey (vda), on the guest's kernel.
//
//   power loss: the agent serves a workload; at a random moment the flakey
//     table is swapped for one that drops every write (suspended without
//     flushing or freezing, so nothing in flight or in the page cache gets
//     out), as a power cut would; then the agent is killed, the device
//     removed, and vda mounted directly (XFS log recovery). Every operation
//     answered before the cut must be there with its exact bytes, SQLite's
//     integrity_check must say ok, and a fresh agent must find the
//     invariants (test/helpers/invariants.ts) hold. Several rounds, each
//     building on the last.
//   a clone's result not yet durable: the cut right after a reflink clone's
//     201, before any later commit. Its row is still `creating` on the disk
//     (the answer did not wait for that row's fsync), its object is whole,
//     and start-up completes the row: the clone is there with its bytes.
//   I/O errors: the table is swapped for one that fails every write (EIO).
//     Requests fail with 503 POOL_UNAVAILABLE, the agent keeps answering,
//     nothing is answered done that is not; after the device is healthy
//     again and the filesystem remounted, the invariants hold.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

import BetterSqlite3 from 'better-sqlite3';
import t from 'tap';

import type { AgentProcess, AgentSpec, Reply } from '../../helpers/agent.js';
import { startAgent, streamOn } from '../../helpers/agent.js';
import { sha256 } from '../../helpers/files.js';
import { FlakeyDevice } from '../../helpers/flakey.js';
import type { CatalogRows } from '../../helpers/invariants.js';
import { catalogRows, checkInvariants } from '../../helpers/invariants.js';
import { seededRandom } from '../../helpers/random.js';
import { outcome, run } from '../../helpers/run.js';
import { inVmGuest } from '../../helpers/vm.js';

const KiB = 1024;
const DISK = '/dev/vda';
const FLAKEY = 'test-flakey';
const MOUNT = '/mnt/pool-fs';
const ROUNDS = Number(process.env.VOLAGENT_POWER_LOSS_ROUNDS ?? 4);
const SEED = Number(process.env.VOLAGENT_POWER_LOSS_SEED ?? 20261125);

/** What was answered done: objects with the sha256 of their bytes, and the ids deleted. */
interface Model {
  images: Map<string, { sha: string }>;
  volumes: Map<string, { sha: string }>;
  deleted: Set<string>;
}

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/power-loss.test.ts');
} else {
  t.setTimeout(600_000);
  await run('mkfs.xfs', ['-q', '-f', '-m', 'reflink=1', DISK]);
  await mkdir(MOUNT, { recursive: true });
  /** The filesystem mounted over a fresh flakey device that passes every write. */
  const mountFlakey = async (): Promise<FlakeyDevice> => {
    const device = await FlakeyDevice.create(FLAKEY, DISK);
    await run('mount', [device.path, MOUNT]);
    return device;
  };
  /** After a cut: the flakey device gone, the disk itself mounted (XFS replays its log). */
  const remountDirect = async (): Promise<void> => {
    await outcome('umount', [MOUNT]);
    await flakey.remove();
    await run('mount', [DISK, MOUNT]);
  };
  let flakey = await mountFlakey();
  t.teardown(async () => {
    await outcome('umount', [MOUNT]);
    await flakey.remove().catch(() => undefined);
  });
  const poolPath = path.join(MOUNT, 'pool');
  const dir = path.join(MOUNT, 'agent');
  await mkdir(poolPath);
  await mkdir(dir);
  const poolPaths = new Map([['fast', poolPath]]);
  const spec: AgentSpec = { dir, pools: [{ name: 'fast', path: poolPath }], startTimeoutMs: 120_000 };
  const objectFile = (object: string): string => path.join(poolPath, 'objects', `${object}.raw`);
  const random = seededRandom(SEED);
  const model: Model = { images: new Map(), volumes: new Map(), deleted: new Set() };
  let serial = 0;

  /** One request of the workload, chosen from what was answered done; resolves with what it would add to the model. */
  function nextStep(): { label: string; touches: string[]; send: (a: AgentProcess) => Promise<Reply>; apply: (m: Model) => void } {
    const images = [...model.images.keys()];
    const volumes = [...model.volumes.keys()];
    const roll = random();
    if (images.length === 0 || roll < 0.3) {
      const id = `img-${++serial}`;
      const data = randomBytes((64 + Math.floor(random() * 448)) * KiB);
      data[0] = 1;
      const sha = createHash('sha256').update(data).digest('hex');
      return {
        label: `upload ${id}`, touches: [id],
        send: (a) => streamOn(a.socket, 'PUT', `/v1/images/${id}/data?tenant=t1`, data, { headers: { 'content-length': data.length } }),
        apply: (m) => { m.images.set(id, { sha }); },
      };
    }
    if (volumes.length === 0 || roll < 0.7) {
      const image = images[Math.floor(random() * images.length)]!;
      const id = `vol-${++serial}`;
      const sha = model.images.get(image)!.sha;
      return {
        label: `clone ${image} to ${id}`, touches: [id],
        send: (a) => a.request('PUT', `/v1/volumes/${id}`, { tenant: 't1', source: { image } }),
        apply: (m) => { m.volumes.set(id, { sha }); },
      };
    }
    const id = volumes[Math.floor(random() * volumes.length)]!;
    return {
      label: `delete ${id}`, touches: [id],
      send: (a) => a.request('DELETE', `/v1/volumes/${id}`),
      apply: (m) => { m.volumes.delete(id); m.deleted.add(id); },
    };
  }

  /** Every fact of the model holds on disk and in the catalog, except for the objects in `uncertain`, which are adopted as found. */
  async function verifyModel(rows: CatalogRows, uncertain: Set<string>): Promise<string[]> {
    const problems: string[] = [];
    const imageVolume = new Map(rows.images.map((i) => [i.id, i.volumeId]));
    const volumeIds = new Set(rows.volumes.map((v) => v.id));
    for (const [id, { sha }] of model.images) {
      if (uncertain.has(id)) continue;
      const volume = imageVolume.get(id);
      if (!volume) problems.push(`image ${id} was answered 201 but is gone`);
      else if ((await sha256(objectFile(volume))) !== sha) problems.push(`image ${id} does not hold its bytes`);
    }
    for (const [id, { sha }] of model.volumes) {
      if (uncertain.has(id)) continue;
      if (!volumeIds.has(id)) problems.push(`volume ${id} was answered 201 but is gone`);
      else if ((await sha256(objectFile(id))) !== sha) problems.push(`volume ${id} does not hold its image's bytes`);
    }
    for (const id of model.deleted) if (!uncertain.has(id) && volumeIds.has(id)) problems.push(`volume ${id} was answered 204 (deleted) but is back`);
    // The cut-off ones as they are now.
    for (const id of uncertain) {
      if (id.startsWith('img-')) {
        const volume = imageVolume.get(id);
        if (volume) model.images.set(id, { sha: await sha256(objectFile(volume)) });
        else model.images.delete(id);
      } else if (volumeIds.has(id)) {
        model.volumes.set(id, { sha: await sha256(objectFile(id)) });
        model.deleted.delete(id);
      } else {
        model.volumes.delete(id);
      }
    }
    return problems;
  }

  const figures = { rounds: 0, answeredBeforeCut: 0, answeredAfterCut: 0, cutOff: 0 };

  for (let round = 1; round <= ROUNDS; round++) {
    await t.test(`power loss ${round}: every operation answered before the cut survives with its bytes`, async (t) => {
      const agent = await startAgent(t, spec);
      // The workload: one client, one request at a time, until the cut.
      let cut = Infinity;
      let stop = false;
      const uncertain = new Set<string>();
      let answered = 0;
      const workload = (async () => {
        while (!stop) {
          const step = nextStep();
          const reply = await step.send(agent).then((r) => r, (e: Error) => e);
          const at = performance.now();
          if (reply instanceof Error || at >= cut) {
            // No answer, or one after the cut: either way.
            for (const id of step.touches) uncertain.add(id);
            if (reply instanceof Error) figures.cutOff += 1;
            else figures.answeredAfterCut += 1;
            if (reply instanceof Error) return;
            if (reply.status >= 200 && reply.status < 300) step.apply(model);
            continue;
          }
          if (reply.status < 200 || reply.status >= 300) throw new Error(`${step.label} before the cut: ${reply.status} ${reply.text}`);
          step.apply(model);
          answered += 1;
          figures.answeredBeforeCut += 1;
        }
      })();
      const delayMs = 1500 + Math.floor(random() * 4000);
      await new Promise((r) => setTimeout(r, delayMs));
      cut = performance.now(); // set before the swap starts: an answer after this line may be lost
      await flakey.swap('drop');
      await new Promise((r) => setTimeout(r, 300)); // the agent goes on writing into the void a moment
      stop = true;
      await agent.kill();
      await workload;
      await remountDirect();
      t.ok(answered > 0, `${answered} operations answered before the cut (${delayMs} ms in), ${uncertain.size} object(s) cut off or answered after it`);

      const db = new BetterSqlite3(path.join(dir, 'catalog.db'), { fileMustExist: true });
      try {
        t.same(db.pragma('integrity_check', { simple: true }), 'ok', 'SQLite integrity_check: ok');
      } finally {
        db.close();
      }
      const restarted = await startAgent(t, spec);
      const rows = await checkInvariants(restarted, poolPaths);
      t.same(await verifyModel(rows, uncertain), [], 'every answered operation is there with its bytes; no deleted volume came back');
      t.pass('the invariants hold: check clean, no transitional row, the pool exactly the catalog');
      await restarted.stop();
      // Next round on the same filesystem, over a fresh flakey device.
      await run('umount', [MOUNT]);
      flakey = await mountFlakey();
      figures.rounds += 1;
    });
  }

  await t.test('a clone answered just before the cut, its result row not yet durable: start-up completes it', async (t) => {
    // A catalog of its own (a fresh, short WAL: no checkpoint fsyncs it in between) on the flakey filesystem.
    const ownPool = path.join(MOUNT, 'pool-deferred');
    const ownDir = path.join(MOUNT, 'agent-deferred');
    await mkdir(ownPool);
    await mkdir(ownDir);
    const ownSpec: AgentSpec = { dir: ownDir, pools: [{ name: 'fast', path: ownPool }], startTimeoutMs: 120_000 };
    const ownFile = (object: string): string => path.join(ownPool, 'objects', `${object}.raw`);
    const data = randomBytes(256 * KiB);
    const dataSha = createHash('sha256').update(data).digest('hex');
    const agent = await startAgent(t, ownSpec);
    t.equal((await streamOn(agent.socket, 'PUT', '/v1/images/img-d/data?tenant=t1', data, { headers: { 'content-length': data.length } })).status, 201, 'an image uploaded');
    t.equal((await agent.request('PUT', '/v1/volumes/vol-a', { tenant: 't1', source: { image: 'img-d' } })).status, 201, 'a volume cloned from it');
    // A clone of a volume: nothing else (no image cache record) commits after its result.
    const answer = await agent.request('PUT', '/v1/volumes/vol-b', { tenant: 't1', source: { volume: 'vol-a' } });
    t.equal(answer.status, 201, 'a clone of that volume answered 201');
    t.equal(answer.body.cloneMethod, 'reflink');
    await flakey.swap('drop');
    await agent.kill();
    await remountDirect();

    const db = new BetterSqlite3(path.join(ownDir, 'catalog.db'), { fileMustExist: true });
    try {
      t.same(db.pragma('integrity_check', { simple: true }), 'ok', 'SQLite integrity_check: ok');
      t.same(db.prepare('SELECT id, state FROM volumes WHERE id IN (?, ?) ORDER BY id').all('vol-a', 'vol-b'),
        [{ id: 'vol-a', state: 'available' }, { id: 'vol-b', state: 'creating' }],
        'on the disk: the earlier clone available (a later durable commit covered it), the last one still creating');
    } finally {
      db.close();
    }
    t.equal(await sha256(ownFile('vol-b')), dataSha, 'its object was whole before the answer');

    const restarted = await startAgent(t, ownSpec);
    const rows = await checkInvariants(restarted, new Map([['fast', ownPool]]));
    t.match(rows.volumes.find((v) => v.id === 'vol-b'), { state: 'available' }, 'start-up completed the row');
    const view = await restarted.request('GET', '/v1/volumes/vol-b');
    t.match(view.body, { state: 'available', source: { volume: 'vol-a' } });
    t.equal(await sha256(ownFile('vol-b')), dataSha, 'and the clone holds its bytes');
    await restarted.stop();
    await run('umount', [MOUNT]);
    flakey = await mountFlakey();
  });

  await t.test('I/O errors: requests fail with 503 POOL_UNAVAILABLE, the agent stays up, nothing failed is kept', async (t) => {
    // A pool of its own on the flakey filesystem; its catalog on healthy storage (the guest's /tmp), so only the pool fails.
    const eioPool = path.join(MOUNT, 'pool-eio');
    await mkdir(eioPool);
    const eioSpec: AgentSpec = { dir: await mkdtemp('/tmp/eio-agent-'), pools: [{ name: 'eio', path: eioPool }], startTimeoutMs: 120_000 };
    const eioFile = (object: string): string => path.join(eioPool, 'objects', `${object}.raw`);
    const agent = await startAgent(t, eioSpec);
    const data = randomBytes(256 * KiB);
    data[0] = 1;
    const upload = (id: string): Promise<Reply> => streamOn(agent.socket, 'PUT', `/v1/images/${id}/data?tenant=t1`, data, { headers: { 'content-length': data.length } });
    t.equal((await upload('good-img')).status, 201, 'an upload before the errors');
    t.equal((await agent.request('PUT', '/v1/volumes/good-vol', { tenant: 't1', source: { image: 'good-img' } })).status, 201, 'and a clone of it');
    const before = catalogRows(agent.catalogPath);

    await flakey.swap('error');
    const attempts: Array<[string, () => Promise<Reply>]> = [
      ['upload', () => upload('eio-img')],
      ['create', () => agent.request('PUT', '/v1/volumes/eio-vol', { tenant: 't1', sizeBytes: 1024 * KiB })],
      ['clone', () => agent.request('PUT', '/v1/volumes/eio-clone', { tenant: 't1', source: { image: 'good-img' } })],
      ['snapshot', () => agent.request('PUT', '/v1/volumes/good-vol/snapshots/eio-snap')],
    ];
    for (const [label, send] of attempts) {
      const reply = await send();
      t.equal(reply.status, 503, `${label}: 503 (${reply.text.slice(0, 300)})`);
      t.equal(reply.body?.error?.code, 'POOL_UNAVAILABLE', `${label}: POOL_UNAVAILABLE`);
    }
    t.equal((await agent.request('GET', '/v1/version')).status, 200, 'the agent keeps answering');
    const after = catalogRows(agent.catalogPath);
    t.same(after.volumes.map((v) => `${v.id} ${v.state}`), before.volumes.map((v) => `${v.id} ${v.state}`), 'no failed request left a row');
    t.same(after.images.map((i) => i.id), before.images.map((i) => i.id), 'nor an image');
    t.same(after.snapshots, before.snapshots, 'nor a snapshot');
    t.equal(await agent.stop(), 0, 'it stops cleanly');

    // The device healthy again, the filesystem remounted (it shut itself down): the invariants hold, the earlier data is intact.
    await flakey.swap('pass');
    await outcome('umount', [MOUNT]);
    await flakey.remove();
    flakey = await mountFlakey();
    const restarted = await startAgent(t, eioSpec);
    const rows = await checkInvariants(restarted, new Map([['eio', eioPool]]));
    t.same(rows.volumes.map((v) => v.id), before.volumes.map((v) => v.id), 'the volumes are those from before the errors');
    const dataSha = createHash('sha256').update(data).digest('hex');
    t.equal(await sha256(eioFile('good-vol')), dataSha, 'the clone made before the errors holds its bytes');
    t.equal(await sha256(eioFile(rows.images.find((i) => i.id === 'good-img')!.volumeId)), dataSha, 'and its image');
    await restarted.stop();
  });

  t.comment(`power loss: ${figures.rounds} cuts; ${figures.answeredBeforeCut} operations answered before a cut (all kept), ` +
    `${figures.answeredAfterCut} answered after one, ${figures.cutOff} cut off; lost: 0`);
}
