// The crash-point sweep (issue 8, part 2; docs/reliability.md): every
// mutating operation on file pools, and every failpoint it passes, one at a
// time. For each operation a traced run learns the failpoints it passes (in
// order, with repeats); then, for each of them, the agent is started with
// that one point armed to kill, the operation is sent, the agent dies there
// (SIGKILL to itself), and a fresh agent is started. After every restart:
//
//   - the invariants hold (test/helpers/invariants.ts): `volagent check`
//     clean, no transitional row, no operation running, each pool's files
//     exactly the catalog's, the bound loop devices exactly the block exports';
//   - the catalog is what was acknowledged before, plus the cut-off
//     operation wholly done or wholly absent, nothing else;
//   - an operation answered 2xx before the kill is done;
//   - the data is right: clones equal their sources, uploads their bytes,
//     and the sources are intact.
//
// Pools: `fast` on XFS (reflink clones and snapshots), `slow` on ext4
// (copy_file_range clones that run as operations). Needs root.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, stat } from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import type { AgentProcess, AgentSpec, Reply } from '../helpers/agent.js';
import { startAgent, streamOn } from '../helpers/agent.js';
import type { SweptOperation } from '../helpers/crash-sweep.js';
import { literal as esc, newSweepFigures, sweepOperation, volumeLine } from '../helpers/crash-sweep.js';
import { sha256 } from '../helpers/files.js';
import { checkInvariants } from '../helpers/invariants.js';
import { makeLoopFs } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 16 * MiB;
const UPLOAD_BYTES = 12 * MiB; // past the pool's 4 MiB staging buffer, so the upload passes upload.receiving
const TENANT = 'acme';

interface Context {
  agent: AgentProcess;
  objectFile(pool: string, object: string): string;
}

type Operation = SweptOperation<Context>;

async function fillRandom(file: string, runs: number): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    const stride = Math.floor(VOLUME_BYTES / runs);
    for (let i = 0; i < runs; i++) await handle.write(randomBytes(MiB), 0, MiB, i * stride);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function expectStatus(reply: Promise<Reply>, status: number, what: string): Promise<Reply> {
  const r = await reply;
  if (r.status !== status) throw new Error(`${what}: ${r.status} ${r.text}`);
  return r;
}

if (!skipUnlessRoot(t)) {
  const xfs = await makeLoopFs('xfs', 768 * MiB);
  t.teardown(() => xfs.cleanup());
  const ext4 = await makeLoopFs('ext4', 768 * MiB);
  t.teardown(() => ext4.cleanup());
  const poolPaths = new Map([['fast', path.join(xfs.mountPoint, 'pool')], ['slow', path.join(ext4.mountPoint, 'pool')]]);
  for (const dir of poolPaths.values()) await mkdir(dir);
  const dir = path.join(xfs.mountPoint, 'agent');
  await mkdir(dir);
  const traceFile = path.join(dir, 'failpoints.trace');
  const spec = (env: NodeJS.ProcessEnv = {}): AgentSpec => ({
    dir, pools: [...poolPaths].map(([name, p]) => ({ name, path: p })), env,
  });
  const objectFile = (pool: string, object: string): string => path.join(poolPaths.get(pool)!, 'objects', `${object}.raw`);
  const ctx: Context = { agent: await startAgent(t, spec()), objectFile };
  const request = (method: string, urlPath: string, body?: unknown): Promise<Reply> => ctx.agent.request(method, urlPath, body);

  // Sources the clones, snapshots and images read: data in four runs, hashed once.
  const sources = new Map<string, { pool: string; sha: string }>();
  for (const [id, pool] of [['src-fast', 'fast'], ['src-slow', 'slow']] as const) {
    await expectStatus(request('PUT', `/v1/volumes/${id}`, { tenant: TENANT, pool, sizeBytes: VOLUME_BYTES }), 201, `create ${id}`);
    await fillRandom(objectFile(pool, id), 4);
    sources.set(id, { pool, sha: await sha256(objectFile(pool, id)) });
  }
  const uploadData = randomBytes(UPLOAD_BYTES);
  uploadData[0] = 1; // never an all-zero first block
  const uploadSha = createHash('sha256').update(uploadData).digest('hex');

  const sameAsSource = (id: string, sourceId: string) => async (c: Context): Promise<void> => {
    const source = sources.get(sourceId)!;
    const got = await sha256(c.objectFile(source.pool, id));
    if (got !== source.sha) throw new Error(`${id} does not hold ${sourceId}'s bytes`);
  };
  const createVolume = async (c: Context, id: string, pool = 'fast', data = false): Promise<void> => {
    await expectStatus(c.agent.request('PUT', `/v1/volumes/${id}`, { tenant: TENANT, pool, sizeBytes: VOLUME_BYTES }), 201, `prepare ${id}`);
    if (data) await fillRandom(c.objectFile(pool, id), 2);
  };
  const registerClone = (c: Context, id: string): Promise<Reply> =>
    c.agent.request('PUT', `/v1/images/${id}`, { volume: 'src-fast', mode: 'clone', tenant: TENANT, visibility: 'private', internal: false });
  const exportVolume = (c: Context, id: string, protocol: string): Promise<Reply> => c.agent.request('POST', `/v1/volumes/${id}/exports`, { protocol });

  const OPERATIONS: Operation[] = [
    {
      name: 'create',
      prepare: async (_c, n) => ({ id: `c-${n}` }),
      run: (c, { id }) => c.agent.request('PUT', `/v1/volumes/${id}`, { tenant: TENANT, pool: 'fast', sizeBytes: VOLUME_BYTES }),
      done: ({ id }) => ({ added: [volumeLine(id!, 'fast', 'volume', VOLUME_BYTES, false)], removed: [] }),
      doneOnceReached: 'file.published', // the file pool publishes whole: reconcile completes the row
      verifyDone: async (c, { id }) => {
        if ((await stat(c.objectFile('fast', id!))).size !== VOLUME_BYTES) throw new Error(`${id} has the wrong size`);
      },
    },
    {
      name: 'clone by reflink',
      prepare: async (_c, n) => ({ id: `k-${n}` }),
      run: (c, { id }) => c.agent.request('PUT', `/v1/volumes/${id}`, { tenant: TENANT, source: { volume: 'src-fast' } }),
      done: ({ id }) => ({ added: [volumeLine(id!, 'fast', 'volume', VOLUME_BYTES, false)], removed: [] }),
      doneOnceReached: 'file.published', // its result is not waited for durably (writes.ts Durability): reconcile completes it
      verifyDone: (c, { id }) => sameAsSource(id!, 'src-fast')(c),
    },
    {
      name: 'clone by copy_file_range (an operation)',
      prepare: async (_c, n) => ({ id: `kc-${n}` }),
      run: (c, { id }) => c.agent.request('PUT', `/v1/volumes/${id}?wait=true`, { tenant: TENANT, source: { volume: 'src-slow' } }),
      done: ({ id }) => ({ added: [volumeLine(id!, 'slow', 'volume', VOLUME_BYTES, false)], removed: [] }),
      verifyDone: (c, { id }) => sameAsSource(id!, 'src-slow')(c),
    },
    {
      name: 'snapshot by reflink',
      prepare: async (_c, n) => ({ id: `s-${n}` }),
      run: (c, { id }) => c.agent.request('PUT', `/v1/volumes/src-fast/snapshots/${id}`),
      done: ({ id }) => ({ added: [new RegExp(`^snapshot src-fast@${esc(id!)}$`)], removed: [] }),
      verifyDone: (c, { id }) => sameAsSource(`src-fast@${id}`, 'src-fast')(c),
    },
    {
      name: 'snapshot by copy',
      prepare: async (_c, n) => ({ id: `sc-${n}` }),
      run: (c, { id }) => c.agent.request('PUT', `/v1/volumes/src-slow/snapshots/${id}?wait=true`),
      done: ({ id }) => ({ added: [new RegExp(`^snapshot src-slow@${esc(id!)}$`)], removed: [] }),
      verifyDone: (c, { id }) => sameAsSource(`src-slow@${id}`, 'src-slow')(c),
    },
    {
      name: 'resize',
      prepare: async (c, n) => {
        await createVolume(c, `r-${n}`);
        return { id: `r-${n}` };
      },
      run: (c, { id }) => c.agent.request('POST', `/v1/volumes/${id}/resize`, { sizeBytes: 2 * VOLUME_BYTES }),
      done: ({ id }) => ({ added: [volumeLine(id!, 'fast', 'volume', 2 * VOLUME_BYTES, false)], removed: [volumeLine(id!, 'fast', 'volume', VOLUME_BYTES, false)] }),
    },
    {
      name: 'delete a volume',
      prepare: async (c, n) => {
        await createVolume(c, `d-${n}`, 'fast', true);
        return { id: `d-${n}` };
      },
      run: (c, { id }) => c.agent.request('DELETE', `/v1/volumes/${id}`),
      done: ({ id }) => ({ added: [], removed: [volumeLine(id!, 'fast', 'volume', VOLUME_BYTES, false)] }),
    },
    {
      name: 'delete a snapshot',
      prepare: async (c, n) => {
        await expectStatus(c.agent.request('PUT', `/v1/volumes/src-fast/snapshots/ds-${n}`), 201, `prepare snapshot ds-${n}`);
        return { id: `ds-${n}` };
      },
      run: (c, { id }) => c.agent.request('DELETE', `/v1/volumes/src-fast/snapshots/${id}`),
      done: ({ id }) => ({ added: [], removed: [new RegExp(`^snapshot src-fast@${esc(id!)}$`)] }),
    },
    {
      name: 'register an image (clone)',
      prepare: async (_c, n) => ({ id: `ic-${n}` }),
      run: (c, { id }) => registerClone(c, id!),
      done: ({ id }) => ({ added: [new RegExp(`^volume iv-\\S+ fast image ${VOLUME_BYTES} ro$`), new RegExp(`^image ${esc(id!)} iv-\\S+$`)], removed: [] }),
      verifyDone: async (c, { id }, rows) => sameAsSource(rows.images.find((i) => i.id === id)!.volumeId, 'src-fast')(c),
    },
    {
      name: 'register an image (adopt)',
      prepare: async (c, n) => {
        await createVolume(c, `a-${n}`, 'fast', true);
        return { id: `ia-${n}`, volume: `a-${n}` };
      },
      run: (c, { id, volume }) => c.agent.request('PUT', `/v1/images/${id}`, { volume, mode: 'adopt', tenant: TENANT, visibility: 'private', internal: false }),
      done: ({ id, volume }) => ({
        added: [volumeLine(volume!, 'fast', 'image', VOLUME_BYTES, true), new RegExp(`^image ${esc(id!)} ${esc(volume!)}$`)],
        removed: [volumeLine(volume!, 'fast', 'volume', VOLUME_BYTES, false)],
      }),
      verifyDone: async (c, { volume }) => {
        if (((await stat(c.objectFile('fast', volume!))).mode & 0o777) !== 0o444) throw new Error(`adopted ${volume} is not mode 0444`);
      },
      verifyAbsent: async (c, { volume }) => {
        if (((await stat(c.objectFile('fast', volume!))).mode & 0o777) !== 0o644) throw new Error(`${volume}, not adopted, is not writable (0644) again`);
      },
    },
    {
      name: 'upload an image',
      prepare: async (_c, n) => ({ id: `u-${n}` }),
      run: (c, { id }) => streamOn(c.agent.socket, 'PUT', `/v1/images/${id}/data?tenant=${TENANT}&pool=fast`, uploadData, { headers: { 'content-length': UPLOAD_BYTES } }),
      done: ({ id }) => ({ added: [new RegExp(`^volume iv-\\S+ fast image ${UPLOAD_BYTES} ro$`), new RegExp(`^image ${esc(id!)} iv-\\S+$`)], removed: [] }),
      verifyDone: async (c, { id }, rows) => {
        if ((await sha256(c.objectFile('fast', rows.images.find((i) => i.id === id)!.volumeId))) !== uploadSha) throw new Error(`image ${id} does not hold the uploaded bytes`);
      },
    },
    {
      name: 'delete an image',
      prepare: async (c, n) => {
        await expectStatus(registerClone(c, `id-${n}`), 201, `prepare image id-${n}`);
        return { id: `id-${n}` };
      },
      run: (c, { id }) => c.agent.request('DELETE', `/v1/images/${id}`),
      done: ({ id }) => ({ added: [], removed: [new RegExp(`^volume iv-\\S+ fast image ${VOLUME_BYTES} ro$`), new RegExp(`^image ${esc(id!)} iv-\\S+$`)] }),
    },
    ...(['nbd', 'block'] as const).flatMap((protocol): Operation[] => [
      {
        name: `export over ${protocol}`,
        prepare: async (c, n) => {
          await createVolume(c, `e${protocol[0]}-${n}`);
          return { volume: `e${protocol[0]}-${n}` };
        },
        run: (c, { volume }) => exportVolume(c, volume!, protocol),
        done: ({ volume }) => ({ added: [new RegExp(`^export ${esc(volume!)} ${protocol} exp-[0-9a-f]{32}$`)], removed: [] }),
      },
      {
        name: `unexport ${protocol}`,
        prepare: async (c, n) => {
          await createVolume(c, `x${protocol[0]}-${n}`);
          const made = await expectStatus(exportVolume(c, `x${protocol[0]}-${n}`, protocol), 201, `prepare export of x${protocol[0]}-${n}`);
          return { volume: `x${protocol[0]}-${n}`, export: made.body.id as string };
        },
        run: (c, args) => c.agent.request('DELETE', `/v1/exports/${args.export}`),
        done: (args) => ({ added: [], removed: [new RegExp(`^export ${esc(args.volume!)} ${protocol} ${args.export}$`)] }),
      },
    ]),
  ];

  const harness = {
    ctx,
    start: (env: NodeJS.ProcessEnv) => startAgent(t, spec(env)), // the whole test's teardown: it outlives a subtest
    invariants: () => checkInvariants(ctx.agent, poolPaths),
    verifyUntouched: async () => {
      for (const [id, source] of sources) {
        if ((await sha256(objectFile(source.pool, id))) !== source.sha) throw new Error(`source ${id} changed`);
      }
    },
    traceFile,
  };

  // VOLAGENT_SWEEP_ONLY=REGEX sweeps only the operations whose name matches (to replay one).
  const only = process.env.VOLAGENT_SWEEP_ONLY ? new RegExp(process.env.VOLAGENT_SWEEP_ONLY) : undefined;
  const figures = newSweepFigures();
  let n = 0;
  for (const op of OPERATIONS.filter((o) => !only || only.test(o.name))) await sweepOperation(t, harness, op, () => ++n, figures);
  t.comment(`crash sweep: ${figures.operations} operations, ${figures.kills} failpoints, each a kill; ` +
    `after restart ${figures.done} done (${figures.acknowledged} answered before the kill), ${figures.absent} absent; lost: 0`);
  await ctx.agent.stop();
}
