// The crash-point sweep's harness (docs/reliability.md), shared by the file
// pools' sweep (test/privileged/crash-sweep.test.ts), the thin pool's
// (test/vm/guest/thin-faults.ts) and the lvm pool's (lvm-faults.ts), with the
// operations every block pool runs (volumeOperations). For one operation: a
// traced run learns the failpoints it passes, in order and with repeats; then for each of them the
// agent is started with that point armed to kill, the operation is sent,
// the agent must die there, and a fresh agent must find the invariants hold
// and the operation wholly done or wholly absent.
import { readFile, writeFile } from 'node:fs/promises';

import type { Test } from 'tap';

import { FAILPOINT_TRACE_ENV, FAILPOINTS_ENV } from '../../src/common/failpoints.js';
import type { AgentProcess, Reply } from './agent.js';
import type { CatalogRows } from './invariants.js';

/** One catalog fact per line: what a cut-off operation may add or remove. */
export function summary(rows: CatalogRows): Set<string> {
  return new Set([
    ...rows.volumes.map((v) => `volume ${v.id} ${v.pool} ${v.kind} ${v.sizeBytes} ${v.readOnly ? 'ro' : 'rw'}`),
    ...rows.snapshots.map((s) => `snapshot ${s.object}`),
    ...rows.images.map((i) => `image ${i.id} ${i.volumeId}`),
    ...rows.exports.map((e) => `export ${e.volumeId} ${e.protocol} ${e.id}`),
  ]);
}

interface Change { added: string[]; removed: string[] }

function difference(before: Set<string>, after: Set<string>): Change {
  return { added: [...after].filter((l) => !before.has(l)).sort(), removed: [...before].filter((l) => !after.has(l)).sort() };
}

/** Each pattern matches one line, and there are no other lines. */
function exactly(lines: string[], patterns: RegExp[]): boolean {
  return lines.length === patterns.length && patterns.every((p) => lines.filter((l) => p.test(l)).length === 1);
}

/** A regular expression matching `text` literally. */
export function literal(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\@]/g, '\\$&');
}

export const volumeLine = (id: string, pool: string, kind: string, size: number, readOnly: boolean): RegExp =>
  new RegExp(`^volume ${literal(id)} ${pool} ${kind} ${size} ${readOnly ? 'ro' : 'rw'}$`);

export interface SweptOperation<Context> {
  name: string;
  /** Makes what the operation needs (with an unarmed agent); returns its arguments. */
  prepare(ctx: Context, n: number): Promise<Record<string, string>>;
  run(ctx: Context, args: Record<string, string>): Promise<Reply>;
  /** The catalog change of the operation when it is wholly done. */
  done(args: Record<string, string>): { added: RegExp[]; removed: RegExp[] };
  /** Checks the data of a done operation (throws when it is wrong). */
  verifyDone?(ctx: Context, args: Record<string, string>, rows: CatalogRows): Promise<void>;
  /** Checks what an operation that left nothing left (throws when it is wrong). */
  verifyAbsent?(ctx: Context, args: Record<string, string>): Promise<void>;
  /**
   * A point of the operation's path from which a kill must leave it done,
   * answered or not (its object is whole there, and the start-up reconcile
   * completes its row).
   */
  doneOnceReached?: string;
}

export interface SweepHarness<Context extends { agent: AgentProcess }> {
  /** What the operations use; `ctx.agent` is the running agent. */
  ctx: Context;
  /** Starts a fresh agent with `env` (one whose teardown outlives a subtest). */
  start(env: NodeJS.ProcessEnv): Promise<AgentProcess>;
  /** Throws unless the invariants hold; returns the catalog's rows. */
  invariants(): Promise<CatalogRows>;
  /** Throws when data that no operation may change (the sources) changed. */
  verifyUntouched?(): Promise<void>;
  traceFile: string;
  /** Which of the points the operation passes are swept (default: all). */
  sweeps?(point: string): boolean;
  /** How long the armed agent may take to reach its point. */
  deathTimeoutMs?: number;
}

export interface SweepFigures { operations: number; kills: number; done: number; absent: number; acknowledged: number }

export function newSweepFigures(): SweepFigures {
  return { operations: 0, kills: 0, done: 0, absent: 0, acknowledged: 0 };
}

/** Stops the running agent (when it still runs) and starts a fresh one with `env`. */
async function restart<Context extends { agent: AgentProcess }>(h: SweepHarness<Context>, env: NodeJS.ProcessEnv = {}): Promise<void> {
  const running = h.ctx.agent;
  if (running.child.exitCode === null && running.child.signalCode === null) await running.stop();
  h.ctx.agent = await h.start(env);
}

async function traceLines(file: string): Promise<string[]> {
  return (await readFile(file, 'utf8')).split('\n').filter(Boolean);
}

/** After a restart: the invariants, the change against `before`, the data; whether the operation is done. */
async function judge<Context extends { agent: AgentProcess }>(h: SweepHarness<Context>, op: SweptOperation<Context>, args: Record<string, string>, before: Set<string>): Promise<boolean> {
  const rows = await h.invariants();
  const change = difference(before, summary(rows));
  const done = change.added.length > 0 || change.removed.length > 0;
  if (done) {
    const expected = op.done(args);
    if (!exactly(change.added, expected.added) || !exactly(change.removed, expected.removed)) {
      throw new Error(`${op.name} ${JSON.stringify(args)} is neither done nor absent: ${JSON.stringify(change)}`);
    }
    await op.verifyDone?.(h.ctx, args, rows);
  } else {
    await op.verifyAbsent?.(h.ctx, args);
  }
  await h.verifyUntouched?.();
  return done;
}

/** Sweeps one operation as a subtest of `t`; `serial` numbers the objects each case makes. */
export async function sweepOperation<Context extends { agent: AgentProcess }>(t: Test, h: SweepHarness<Context>, op: SweptOperation<Context>, serial: () => number, figures: SweepFigures): Promise<void> {
  await t.test(op.name, async (t) => {
    // The traced run: which points the operation passes, in order.
    const traceArgs = await op.prepare(h.ctx, serial());
    const traceBefore = summary(await h.invariants());
    await writeFile(h.traceFile, '');
    await restart(h, { [FAILPOINT_TRACE_ENV]: h.traceFile });
    const startupLines = (await traceLines(h.traceFile)).length;
    const traced = await op.run(h.ctx, traceArgs);
    t.ok(traced.status >= 200 && traced.status < 300, `the traced ${op.name} succeeds (${traced.status} ${traced.text.slice(0, 200)})`);
    await restart(h);
    t.ok(await judge(h, op, traceArgs, traceBefore), 'the traced run did it');
    const seen = new Map<string, number>();
    const passed = (await traceLines(h.traceFile)).map((name, i) => {
      const pass = (seen.get(name) ?? 0) + 1;
      seen.set(name, pass);
      return { name, pass, afterStartup: i >= startupLines };
    }).filter((p) => p.afterStartup);
    const points = passed.filter((p) => h.sweeps?.(p.name) ?? true);
    const doneFrom = op.doneOnceReached === undefined ? -1 : passed.findIndex((p) => p.name === op.doneOnceReached);
    if (op.doneOnceReached !== undefined) t.ok(doneFrom >= 0, `the traced ${op.name} passes ${op.doneOnceReached}`);
    t.ok(points.length >= 2, `${op.name} passes ${passed.length} failpoints, ${points.length} swept: ${points.map((p) => `${p.name}@${p.pass}`).join(' ')}`);
    figures.operations += 1;

    for (const point of points) {
      const armed = `${point.name}@${point.pass}`;
      const args = await op.prepare(h.ctx, serial());
      const before = summary(await h.invariants());
      await writeFile(h.traceFile, '');
      await restart(h, { [FAILPOINTS_ENV]: `${armed}=kill`, [FAILPOINT_TRACE_ENV]: h.traceFile });
      const victim = h.ctx.agent;
      const reply = op.run(h.ctx, args).then((r) => r, (error: Error) => error);
      const limit = h.deathTimeoutMs ?? 30_000;
      const exit = await Promise.race([victim.exited, new Promise<undefined>((r) => setTimeout(r, limit, undefined))]);
      if (exit?.signal !== 'SIGKILL') throw new Error(`${op.name}: the agent did not die at ${armed} (${JSON.stringify(exit)})`);
      const answer = await reply;
      const acknowledged = !(answer instanceof Error) && answer.status >= 200 && answer.status < 300;
      const trace = await traceLines(h.traceFile);
      if (trace.at(-1) !== point.name || trace.filter((l) => l === point.name).length !== point.pass) {
        throw new Error(`${op.name}: the agent died, but not at ${armed} (trace ends ${trace.slice(-3).join(', ')})`);
      }
      await restart(h);
      const done = await judge(h, op, args, before);
      if (acknowledged && !done) throw new Error(`${op.name}: answered ${(answer as Reply).status} before the kill at ${armed}, but is not done`);
      if (doneFrom >= 0 && passed.indexOf(point) >= doneFrom && !done) throw new Error(`${op.name}: killed at ${armed}, at or after ${op.doneOnceReached}, but is not done`);
      t.pass(`killed at ${armed}${acknowledged ? ' after the answer' : ''}: ${done ? 'done' : 'absent'}, invariants hold`);
      figures.kills += 1;
      figures[done ? 'done' : 'absent'] += 1;
      if (acknowledged) figures.acknowledged += 1;
    }
  });
}

/** `reply`, when it is a 201; otherwise an error naming `what` (a sweep's preparation must succeed). */
export async function expectCreated(reply: Promise<Reply>, what: string): Promise<Reply> {
  const r = await reply;
  if (r.status !== 201) throw new Error(`${what}: ${r.status} ${r.text}`);
  return r;
}

export interface VolumeOperationsOptions<Context> {
  pool: string;
  /** The size of every volume made; a resize doubles it. */
  volumeBytes: number;
  /** How the pool clones, for the clone's name: `clone (a thin snapshot)`. */
  cloneMethod: string;
  /** Checks that a done clone or snapshot (its object name) holds the bytes of the volume `src`. */
  holdsSource?(ctx: Context, object: string): Promise<void>;
}

/**
 * The operations every block pool's sweep runs (thin-faults, lvm-faults),
 * on a volume `src` the test made: create, clone, snapshot, resize, delete a
 * volume, delete a snapshot.
 */
export function volumeOperations<Context extends { agent: AgentProcess }>(options: VolumeOperationsOptions<Context>): Array<SweptOperation<Context>> {
  const { pool, volumeBytes } = options;
  const create = (c: Context, id: string): Promise<Reply> => c.agent.request('PUT', `/v1/volumes/${id}`, { tenant: 't1', sizeBytes: volumeBytes });
  const holdsSource = options.holdsSource;
  return [
    {
      name: 'create',
      prepare: async (_c, n) => ({ id: `c-${n}` }),
      run: (c, { id }) => create(c, id!),
      done: ({ id }) => ({ added: [volumeLine(id!, pool, 'volume', volumeBytes, false)], removed: [] }),
    },
    {
      name: `clone (${options.cloneMethod})`,
      prepare: async (_c, n) => ({ id: `k-${n}` }),
      run: (c, { id }) => c.agent.request('PUT', `/v1/volumes/${id}`, { tenant: 't1', source: { volume: 'src' } }),
      done: ({ id }) => ({ added: [volumeLine(id!, pool, 'volume', volumeBytes, false)], removed: [] }),
      ...(holdsSource ? { verifyDone: (c: Context, { id }: Record<string, string>) => holdsSource(c, id!) } : {}),
    },
    {
      name: 'snapshot',
      prepare: async (_c, n) => ({ id: `s-${n}` }),
      run: (c, { id }) => c.agent.request('PUT', `/v1/volumes/src/snapshots/${id}`),
      done: ({ id }) => ({ added: [new RegExp(`^snapshot src@${literal(id!)}$`)], removed: [] }),
      ...(holdsSource ? { verifyDone: (c: Context, { id }: Record<string, string>) => holdsSource(c, `src@${id!}`) } : {}),
    },
    {
      name: 'resize',
      prepare: async (c, n) => {
        await expectCreated(create(c, `r-${n}`), `prepare r-${n}`);
        return { id: `r-${n}` };
      },
      run: (c, { id }) => c.agent.request('POST', `/v1/volumes/${id}/resize`, { sizeBytes: 2 * volumeBytes }),
      done: ({ id }) => ({ added: [volumeLine(id!, pool, 'volume', 2 * volumeBytes, false)], removed: [volumeLine(id!, pool, 'volume', volumeBytes, false)] }),
    },
    {
      name: 'delete a volume',
      prepare: async (c, n) => {
        await expectCreated(create(c, `d-${n}`), `prepare d-${n}`);
        return { id: `d-${n}` };
      },
      run: (c, { id }) => c.agent.request('DELETE', `/v1/volumes/${id}`),
      done: ({ id }) => ({ added: [], removed: [volumeLine(id!, pool, 'volume', volumeBytes, false)] }),
    },
    {
      name: 'delete a snapshot',
      prepare: async (c, n) => {
        await expectCreated(c.agent.request('PUT', `/v1/volumes/src/snapshots/ds-${n}`), `prepare snapshot ds-${n}`);
        return { id: `ds-${n}` };
      },
      run: (c, { id }) => c.agent.request('DELETE', `/v1/volumes/src/snapshots/${id}`),
      done: ({ id }) => ({ added: [], removed: [new RegExp(`^snapshot src@${literal(id!)}$`)] }),
    },
  ];
}
