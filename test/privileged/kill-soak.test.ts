// The random-kill soak (issue 8, part 3; docs/reliability.md): 1 000 mixed
// operations from 8 clients against file pools on XFS (reflink) and ext4
// (copy), with the agent killed (SIGKILL, from outside) 50 times at random
// moments. After each kill a fresh agent is started and, before any client
// goes on:
//
//   - the invariants hold (test/helpers/invariants.ts);
//   - each client's objects in the catalog are exactly what it was answered
//     2xx for, except the objects its cut-off request touched, which may be
//     either way (the sweep, crash-sweep.test.ts, proves all-or-nothing for
//     each failpoint; here the moments are random).
//
// Each client works on its own objects (ids `c<N>-...`) one request at a
// time, so its expectations are exact. A 5xx other than 507 fails the soak.
// The seed (VOLAGENT_SOAK_SEED, printed) fixes each client's choices and the
// kill schedule; the interleaving of 8 clients is the machine's, so a replay
// follows the same plan, not the same timing. Needs root.
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess, AgentSpec, Reply } from '../helpers/agent.js';
import { startAgent, streamOn } from '../helpers/agent.js';
import type { CatalogRows } from '../helpers/invariants.js';
import { checkInvariants } from '../helpers/invariants.js';
import { makeLoopFs } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { seededRandom } from '../helpers/random.js';

const MiB = 1024 * 1024;
const SEED = Number(process.env.VOLAGENT_SOAK_SEED ?? 20261125);
const OPERATIONS = Number(process.env.VOLAGENT_SOAK_OPERATIONS ?? 1000);
const KILLS = Number(process.env.VOLAGENT_SOAK_KILLS ?? 50);
const CLIENTS = 8;
const TENANT = 'acme';
const POOLS = ['fast', 'slow'] as const;
const MAX_BLOCK_EXPORTS = 2; // per client: loop devices are a host resource


interface VolumeModel { pool: string; kind: string; sizeBytes: number; readOnly: boolean }

/** What a client was answered 2xx for: its objects as the catalog must hold them. */
interface Model {
  volumes: Map<string, VolumeModel>;
  snapshots: Set<string>;
  /** Image id -> its Image-Volume: `iv` for one the agent named, else the adopted volume's id. */
  images: Map<string, string>;
  /** Export id -> `volume protocol`. */
  exports: Map<string, { volume: string; protocol: string }>;
}

function modelOf(rows: CatalogRows, prefix: string): Model {
  const mine = (id: string): boolean => id.startsWith(prefix);
  return {
    volumes: new Map(rows.volumes.filter((v) => mine(v.id)).map((v) => [v.id, { pool: v.pool, kind: v.kind, sizeBytes: v.sizeBytes, readOnly: v.readOnly }])),
    snapshots: new Set(rows.snapshots.filter((s) => mine(s.object)).map((s) => s.object)),
    images: new Map(rows.images.filter((i) => mine(i.id)).map((i) => [i.id, mine(i.volumeId) ? i.volumeId : 'iv'])),
    exports: new Map(rows.exports.filter((e) => mine(e.volumeId)).map((e) => [e.id, { volume: e.volumeId, protocol: e.protocol }])),
  };
}

/** One line per fact; the second word names the object the fact is about. */
function linesOf(model: Model): Set<string> {
  return new Set([
    ...[...model.volumes].map(([id, v]) => `volume ${id} ${v.pool} ${v.kind} ${v.sizeBytes} ${v.readOnly ? 'ro' : 'rw'}`),
    ...[...model.snapshots].map((object) => `snapshot ${object}`),
    ...[...model.images].map(([id, volume]) => `image ${id} ${volume}`),
    ...[...model.exports].map(([id, e]) => `export ${e.volume} ${e.protocol} ${id}`),
  ]);
}

interface Step {
  label: string;
  /** Objects the request may change (for a cut-off request, these may be either way). */
  touches: string[];
  send(agent: AgentProcess): Promise<Reply>;
  /** The model once the request was answered 2xx. */
  apply(model: Model, reply: Reply): void;
  /** The code of the 409 the model says this request gets, instead of a 2xx. */
  refusal?: string;
}

if (!skipUnlessRoot(t)) {
  const xfs = await makeLoopFs('xfs', GiBs(1));
  t.teardown(() => xfs.cleanup());
  const ext4 = await makeLoopFs('ext4', GiBs(1));
  t.teardown(() => ext4.cleanup());
  const poolPaths = new Map([['fast', path.join(xfs.mountPoint, 'pool')], ['slow', path.join(ext4.mountPoint, 'pool')]]);
  for (const dir of poolPaths.values()) await mkdir(dir);
  const dir = path.join(xfs.mountPoint, 'agent');
  await mkdir(dir);
  const spec: AgentSpec = { dir, pools: [...poolPaths].map(([name, p]) => ({ name, path: p })), lockWaitMs: 2000 };
  let agent = await startAgent(t, spec);
  const uploadData = randomBytes(MiB);
  uploadData[0] = 1;

  t.comment(`soak seed ${SEED} (replay: VOLAGENT_SOAK_SEED=${SEED}): ${OPERATIONS} operations, ${CLIENTS} clients, ${KILLS} kills`);
  const random = seededRandom(SEED);
  const killAt = new Set<number>();
  while (killAt.size < KILLS) killAt.add(10 + Math.floor(random() * (OPERATIONS - 20)));
  const killDelay = seededRandom(SEED ^ 0x5eed);
  const kills: Array<Promise<void>> = [];

  const figures = { sent: 0, answered2xx: 0, refused: 0, cutOff: 0, kills: 0, restarts: 0, statuses: new Map<number, number>() };
  let started = 0;
  let paused: Promise<void> | undefined;
  const inFlight = new Set<Promise<unknown>>();
  let failure: Error | undefined;

  /** Picks a client's next request from what it knows it has. */
  function nextStep(client: number, model: Model, pick: () => number, serial: () => number): Step {
    const prefix = `c${client}-`;
    const choose = <T>(items: T[]): T => items[Math.floor(pick() * items.length)]!;
    const plain = [...model.volumes].filter(([, v]) => v.kind === 'volume').map(([id]) => id);
    const exportedVolumes = new Set([...model.exports.values()].map((e) => e.volume));
    const snapshotted = new Set([...model.snapshots].map((s) => s.split('@')[0]!));
    const free = plain.filter((id) => !exportedVolumes.has(id) && !snapshotted.has(id));
    const blockExports = [...model.exports.values()].filter((e) => e.protocol === 'block').length;
    /**
     * A copy (the ext4 pool copies; XFS reflinks) of a volume with a
     * writable block export cannot be one point in time: 409 VOLUME_IN_USE.
     * (Block exports here are writable: the default.)
     */
    const copyRefusal = (volume: string): { refusal?: string } =>
      model.volumes.get(volume)?.pool === 'slow' && [...model.exports.values()].some((e) => e.volume === volume && e.protocol === 'block') ? { refusal: 'VOLUME_IN_USE' } : {};
    const candidates: Array<[number, () => Step]> = [
      [3, () => {
        const id = `${prefix}v${serial()}`;
        const pool = choose([...POOLS]);
        const sizeBytes = (1 + Math.floor(pick() * 8)) * MiB;
        return {
          label: `create ${id}`, touches: [id],
          send: (a) => a.request('PUT', `/v1/volumes/${id}`, { tenant: TENANT, pool, sizeBytes }),
          apply: (m) => { m.volumes.set(id, { pool, kind: 'volume', sizeBytes, readOnly: false }); },
        };
      }],
      ...(plain.length > 0 ? [[3, () => {
        const source = choose(plain);
        const id = `${prefix}v${serial()}`;
        const from = model.volumes.get(source)!;
        return {
          label: `clone ${source} to ${id}`, touches: [id], ...copyRefusal(source),
          send: (a) => a.request('PUT', `/v1/volumes/${id}?wait=true`, { tenant: TENANT, source: { volume: source } }),
          apply: (m) => { m.volumes.set(id, { ...from, readOnly: false, kind: 'volume' }); },
        };
      }] as [number, () => Step],
      [2, () => {
        const volume = choose(plain);
        const object = `${volume}@${prefix}s${serial()}`;
        const sid = object.split('@')[1]!;
        return {
          label: `snapshot ${object}`, touches: [object], ...copyRefusal(volume),
          send: (a) => a.request('PUT', `/v1/volumes/${volume}/snapshots/${sid}?wait=true`),
          apply: (m) => { m.snapshots.add(object); },
        };
      }] as [number, () => Step],
      [1, () => {
        const id = `${prefix}i${serial()}`;
        const volume = choose(plain);
        return {
          label: `register ${id} from ${volume}`, touches: [id], ...copyRefusal(volume),
          send: (a) => a.request('PUT', `/v1/images/${id}?wait=true`, { volume, mode: 'clone', tenant: TENANT, visibility: 'private', internal: false }),
          apply: (m) => { m.images.set(id, 'iv'); },
        };
      }] as [number, () => Step]] : []),
      ...(free.length > 0 ? [[2, () => {
        const id = choose(free);
        return {
          label: `delete ${id}`, touches: [id],
          send: (a) => a.request('DELETE', `/v1/volumes/${id}`),
          apply: (m) => { m.volumes.delete(id); },
        };
      }] as [number, () => Step],
      [1, () => {
        const id = choose(free);
        const sizeBytes = model.volumes.get(id)!.sizeBytes + MiB;
        return {
          label: `resize ${id}`, touches: [id],
          send: (a) => a.request('POST', `/v1/volumes/${id}/resize`, { sizeBytes }),
          apply: (m) => { m.volumes.get(id)!.sizeBytes = sizeBytes; },
        };
      }] as [number, () => Step],
      [0.5, () => {
        const volume = choose(free);
        const id = `${prefix}i${serial()}`;
        return {
          label: `adopt ${volume} as ${id}`, touches: [id, volume],
          send: (a) => a.request('PUT', `/v1/images/${id}`, { volume, mode: 'adopt', tenant: TENANT, visibility: 'private', internal: false }),
          apply: (m) => {
            m.images.set(id, volume);
            const v = m.volumes.get(volume)!;
            m.volumes.set(volume, { ...v, kind: 'image', readOnly: true });
          },
        };
      }] as [number, () => Step]] : []),
      ...(model.snapshots.size > 0 ? [[1.5, () => {
        const object = choose([...model.snapshots]);
        const [volume, sid] = object.split('@') as [string, string];
        return {
          label: `delete snapshot ${object}`, touches: [object],
          send: (a) => a.request('DELETE', `/v1/volumes/${volume}/snapshots/${sid}`),
          apply: (m) => { m.snapshots.delete(object); },
        };
      }] as [number, () => Step]] : []),
      [1, () => {
        const id = `${prefix}u${serial()}`;
        const pool = choose([...POOLS]);
        return {
          label: `upload ${id}`, touches: [id],
          send: (a) => streamOn(a.socket, 'PUT', `/v1/images/${id}/data?tenant=${TENANT}&pool=${pool}`, uploadData, { headers: { 'content-length': uploadData.length } }),
          apply: (m) => { m.images.set(id, 'iv'); },
        };
      }],
      ...(model.images.size > 0 ? [[1, () => {
        const id = choose([...model.images.keys()]);
        const volume = model.images.get(id)!;
        return {
          label: `delete image ${id}`, touches: [id, volume],
          send: (a) => a.request('DELETE', `/v1/images/${id}`),
          apply: (m) => {
            m.images.delete(id);
            if (volume !== 'iv') m.volumes.delete(volume);
          },
        };
      }] as [number, () => Step]] : []),
      ...(plain.length > 0 ? [[1, () => {
        const volume = choose(plain);
        const protocol = blockExports < MAX_BLOCK_EXPORTS && pick() < 0.5 ? 'block' : 'nbd';
        return {
          label: `export ${volume} over ${protocol}`, touches: [volume],
          send: (a) => a.request('POST', `/v1/volumes/${volume}/exports`, { protocol }),
          apply: (m, reply) => { m.exports.set(reply.body.id as string, { volume, protocol }); },
        };
      }] as [number, () => Step]] : []),
      ...(model.exports.size > 0 ? [[1.5, () => {
        const [id, e] = choose([...model.exports]);
        return {
          label: `unexport ${id}`, touches: [e.volume],
          send: (a) => a.request('DELETE', `/v1/exports/${id}`),
          apply: (m) => { m.exports.delete(id); },
        };
      }] as [number, () => Step]] : []),
    ];
    const total = candidates.reduce((sum, [w]) => sum + w, 0);
    let at = pick() * total;
    for (const [weight, make] of candidates) {
      at -= weight;
      if (at < 0) return make();
    }
    return candidates.at(-1)![1]();
  }

  const models = Array.from({ length: CLIENTS }, () => ({ volumes: new Map(), snapshots: new Set(), images: new Map(), exports: new Map() }) as Model);
  /** Objects each client's cut-off request touched, since the last restart. */
  const uncertain = Array.from({ length: CLIENTS }, () => new Set<string>());

  /** Compares each client's catalog objects with what it was answered; the cut-off ones may be either way. Then adopts the catalog's. */
  function settleModels(rows: CatalogRows, when: string): void {
    for (let client = 0; client < CLIENTS; client++) {
      const actual = modelOf(rows, `c${client}-`);
      const want = linesOf(models[client]!);
      const got = linesOf(actual);
      const differing = [...new Set([...want, ...got])].filter((line) => want.has(line) !== got.has(line));
      const unexplained = differing.filter((line) => !uncertain[client]!.has(line.split(' ')[1]!));
      if (unexplained.length > 0) {
        throw new Error(`${when}: client ${client}'s objects differ from what it was answered: ${unexplained.map((l) => `${want.has(l) ? 'lost' : 'appeared'}: ${l}`).join('; ')}`);
      }
      models[client] = actual;
      uncertain[client]!.clear();
    }
  }

  async function killAndRestart(): Promise<void> {
    while (paused) await paused;
    let resume!: () => void;
    paused = new Promise((r) => { resume = r; });
    try {
      await agent.kill();
      figures.kills += 1;
      await Promise.allSettled([...inFlight]);
      agent = await startAgent(t, spec);
      figures.restarts += 1;
      settleModels(await checkInvariants(agent, poolPaths), `after kill ${figures.kills}`);
    } catch (error) {
      failure ??= error as Error;
    } finally {
      paused = undefined;
      resume();
    }
  }

  async function runClient(client: number): Promise<void> {
    const pick = seededRandom(SEED + client + 1);
    let serial = 0;
    while (!failure) {
      while (paused) await paused;
      if (started >= OPERATIONS) return;
      started += 1;
      if (killAt.has(started)) {
        // A moment 0-40 ms after this request was chosen: mid-request for some clients, between requests for others.
        const delay = Math.floor(killDelay() * 40);
        kills.push(new Promise((resolve) => setTimeout(() => void killAndRestart().then(resolve), delay)));
      }
      const step = nextStep(client, models[client]!, pick, () => ++serial);
      const target = agent;
      const request = step.send(target).then((r) => r, (error: Error) => error);
      inFlight.add(request);
      const reply = await request;
      inFlight.delete(request);
      figures.sent += 1;
      if (reply instanceof Error) {
        // Cut off by a kill (or refused while the agent was down): either way until the next restart says.
        for (const object of step.touches) uncertain[client]!.add(object);
        figures.cutOff += 1;
        continue;
      }
      figures.statuses.set(reply.status, (figures.statuses.get(reply.status) ?? 0) + 1);
      // Each client acts on its own objects, as its model (the catalog's, after every restart) has them:
      // every answer is the one documented outcome, a 2xx or the refusal the model predicts.
      if (step.refusal !== undefined) {
        if (reply.status === 409 && reply.body?.error?.code === step.refusal) figures.refused += 1;
        else failure ??= new Error(`client ${client}: ${step.label} answered ${reply.status}, not 409 ${step.refusal}: ${reply.text}`);
      } else if (reply.status >= 200 && reply.status < 300) {
        step.apply(models[client]!, reply);
        figures.answered2xx += 1;
      } else {
        failure ??= new Error(`client ${client}: ${step.label} answered ${reply.status}, not a 2xx: ${reply.text}`);
      }
    }
  }

  await t.test(`${OPERATIONS} operations from ${CLIENTS} clients, ${KILLS} kills: nothing acknowledged is lost, the invariants hold after each restart`, async (st) => {
    const began = Date.now();
    await Promise.all(Array.from({ length: CLIENTS }, (_, client) => runClient(client)));
    await Promise.all(kills);
    if (failure) throw failure;
    // The end: a clean stop, a fresh start, and every client's objects exactly as answered.
    st.equal(await agent.stop(), 0, 'the agent stops cleanly after the soak');
    agent = await startAgent(t, spec);
    settleModels(await checkInvariants(agent, poolPaths), 'after the soak');
    const statuses = [...figures.statuses].sort(([a], [b]) => a - b).map(([s, c]) => `${c} × ${s}`).join(', ');
    st.equal(figures.kills, KILLS, `${KILLS} kills, each followed by a restart and the checks`);
    st.equal(figures.sent, OPERATIONS, `${OPERATIONS} requests sent`);
    st.ok(figures.answered2xx > OPERATIONS / 2, `most requests succeeded (${figures.answered2xx})`);
    st.pass(`soak seed ${SEED}: ${figures.sent} requests (${statuses}; ${figures.refused} refused as predicted; ${figures.cutOff} cut off by a kill), ${figures.kills} kills and restarts, ` +
      `invariants held after each; lost: 0; ${((Date.now() - began) / 1000).toFixed(0)} s`);
    await agent.stop();
  });
}

function GiBs(n: number): number {
  return n * 1024 * MiB;
}
