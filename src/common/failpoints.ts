// Failpoints: named places just before or after a durable step where a test
// can make the agent die (SIGKILL to itself, as a crash or power loss would
// stop it) or fail with an injected error. Armed only by the environment,
// read once at start:
//
//   VOLAGENT_FAILPOINTS="thin.after-message=kill,file.renamed@2=error:EIO"
//
//   VOLAGENT_FAILPOINTS="clone.copying=hold:/tmp/held"
//
// `hold:PATH` (only at points reached through `failpointAsync`) makes the
// work wait there: the agent creates PATH and goes on once the test removes
// it, or stops when the work is cancelled. A test uses it to catch a copy in
// the middle, instead of racing it.
//
// `NAME@N` acts on the Nth time the point is reached (default the first);
// earlier passes go on. VOLAGENT_FAILPOINT_TRACE=FILE appends the name of
// every point reached, one per line, so a test can learn which points an
// operation passes before it arms them one by one (docs/reliability.md).
//
// Unarmed and untraced (both variables unset, always in production) a
// failpoint is one test of a module constant.
import { appendFileSync, existsSync, writeFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';

import { systemError } from '../native/system-error.js';

export type FailpointAction =
  | { kind: 'kill' }
  | { kind: 'error'; code: keyof typeof osConstants.errno & string }
  | { kind: 'hold'; path: string };

/** An armed point: what to do, on which pass (1 = the first). */
export type ArmedFailpoint = FailpointAction & { hit: number };

export const FAILPOINTS_ENV = 'VOLAGENT_FAILPOINTS';
export const FAILPOINT_TRACE_ENV = 'VOLAGENT_FAILPOINT_TRACE';

/** Parses the variable's value; a malformed entry is an error (a test that arms nothing must not pass). */
export function parseFailpoints(text: string | undefined): Map<string, ArmedFailpoint> {
  const armed = new Map<string, ArmedFailpoint>();
  for (const entry of (text ?? '').split(',').map((e) => e.trim()).filter(Boolean)) {
    const match = /^([a-z0-9.-]+)(?:@([1-9][0-9]{0,5}))?=(kill|error:([A-Z0-9]+)|hold:(\/[^,]+))$/.exec(entry);
    const code = match?.[4];
    if (!match || (code !== undefined && !(code in osConstants.errno))) {
      throw new Error(`${FAILPOINTS_ENV}: "${entry}" is not NAME[@N]=kill, NAME[@N]=error:ECODE or NAME[@N]=hold:/PATH`);
    }
    const hit = match[2] === undefined ? 1 : Number(match[2]);
    const holdPath = match[5];
    armed.set(match[1]!, holdPath !== undefined ? { kind: 'hold', path: holdPath, hit }
      : code === undefined ? { kind: 'kill', hit } : { kind: 'error', code: code as keyof typeof osConstants.errno & string, hit });
  }
  return armed;
}

const armed = parseFailpoints(process.env[FAILPOINTS_ENV]);
const traceFile = process.env[FAILPOINT_TRACE_ENV] || undefined;
const active = armed.size > 0 || traceFile !== undefined;
const passes = new Map<string, number>();

/** Dies or throws here when `name` is armed for this pass; otherwise nothing. A hold armed here is a test's mistake (it throws). */
export function failpoint(name: string): void {
  const action = reached(name);
  if (action?.kind === 'hold') throw new Error(`failpoint ${name} is reached synchronously: it cannot hold (${FAILPOINTS_ENV})`);
}

/**
 * As `failpoint`, at a point of asynchronous work that may also hold: armed
 * with `hold:PATH`, creates PATH and resolves once it is removed; rejects
 * with `signal`'s reason when the work is cancelled meanwhile.
 */
export async function failpointAsync(name: string, signal?: AbortSignal): Promise<void> {
  const action = reached(name);
  if (action?.kind !== 'hold') return;
  writeFileSync(action.path, `${name}\n`);
  while (existsSync(action.path)) {
    signal?.throwIfAborted();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Records a pass of `name`; dies or throws for kill and error, returns a hold (or nothing) to the caller. */
function reached(name: string): FailpointAction | undefined {
  if (!active) return undefined;
  // Synchronous: a kill armed at a later point must not lose this line.
  if (traceFile !== undefined) appendFileSync(traceFile, `${name}\n`);
  const action = armed.get(name);
  if (!action) return undefined;
  const pass = (passes.get(name) ?? 0) + 1;
  passes.set(name, pass);
  if (pass !== action.hit) return undefined;
  if (action.kind === 'kill') {
    process.kill(process.pid, 'SIGKILL');
    // SIGKILL to oneself is delivered before kill(2) returns to user space; nothing below runs.
  }
  if (action.kind === 'error') throw systemError(action.code, 'failpoint', name);
  return action;
}
