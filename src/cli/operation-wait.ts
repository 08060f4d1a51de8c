// Following a long operation (a copy-fallback clone or snapshot) to its end:
// GET /v1/operations/{id} about every 200 ms, a progress bar on a terminal,
// and Ctrl-C (or SIGTERM) as a request to cancel: DELETE /v1/operations/{id},
// which the agent answers once the operation has stopped and cleaned up. A
// second signal stops waiting for that answer.
import { setTimeout as sleep } from 'node:timers/promises';

import { segment } from './agent-client.js';
import type { AgentClient } from './agent-client.js';
import type { Operation } from './api-types.js';
import { ProgressBar } from './progress-bar.js';

export const POLL_INTERVAL_MS = 200;

/** An operation that ended other than `succeeded`; its code is the operation's error code. */
export class OperationEndedError extends Error {
  override name = 'OperationEndedError';
  readonly code: string;

  constructor(readonly operation: Operation, message: string) {
    super(message);
    this.code = operation.error?.code ?? (operation.state === 'cancelled' ? 'OPERATION_CANCELLED' : 'OPERATION_FAILED');
  }
}

/** The user asked twice: the CLI stops waiting, the agent still cancels. */
export class StoppedWaitingError extends Error {
  override name = 'StoppedWaitingError';
  readonly code = 'INTERRUPTED';

  constructor(readonly operationId: string) {
    super(`stopped waiting; the agent is still cancelling operation ${operationId} (see: volagent ops ${operationId})`);
  }
}

export interface FollowOptions {
  /** The progress bar's label; no bar when undefined or stderr is not a terminal. */
  label?: string;
  intervalMs?: number;
}

export interface FollowOutcome {
  operation: Operation;
  /** The operation ended because this process asked to cancel it. */
  cancelledHere: boolean;
}

/** Signals held by holdInterrupts() until followOperation takes them over. */
let heldSignals = 0;
let holding = false;
const holdSignal = (): void => { heldSignals += 1; };

/**
 * Call before a request that may start an operation (a PUT answered 202):
 * the agent may start the operation before its answer arrives, so a Ctrl-C
 * in that window is held instead of killing the CLI, and followOperation
 * cancels the operation as soon as its id is known. A request that answers
 * without an operation (201, 200, an error) was already done or refused: a
 * signal held then changes nothing.
 */
export function holdInterrupts(): void {
  if (holding) return;
  holding = true;
  process.on('SIGINT', holdSignal);
  process.on('SIGTERM', holdSignal);
}

function releaseInterrupts(): number {
  if (!holding) return 0;
  holding = false;
  process.off('SIGINT', holdSignal);
  process.off('SIGTERM', holdSignal);
  const held = heldSignals;
  heldSignals = 0;
  return held;
}

export async function followOperation(client: AgentClient, started: Operation, options: FollowOptions = {}): Promise<FollowOutcome> {
  const bar = options.label === undefined ? undefined : ProgressBar.forTerminal(process.stderr, options.label);
  let signals = 0;
  let wake: () => void = () => {};
  const interrupted = new Promise<void>((resolve) => { wake = resolve; });
  const stopWaiting = new AbortController();
  const onSignal = (): void => {
    signals += 1;
    if (signals === 1) wake();
    else stopWaiting.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  for (let held = releaseInterrupts(); held > 0; held--) onSignal();
  const path = `/v1/operations/${segment(started.id)}`;
  try {
    let operation = started;
    while (operation.state === 'running' && signals === 0) {
      bar?.update(operation.doneBytes, operation.totalBytes);
      await Promise.race([sleep(options.intervalMs ?? POLL_INTERVAL_MS), interrupted]);
      if (signals > 0) break;
      operation = (await client.get<Operation>(path)).body;
    }
    if (operation.state !== 'running') {
      if (operation.state === 'succeeded') bar?.update(operation.totalBytes, operation.totalBytes, true);
      return { operation, cancelledHere: false };
    }
    bar?.finish();
    if (process.stderr.isTTY) process.stderr.write(`cancelling operation ${operation.id} (Ctrl-C again to stop waiting)\n`);
    try {
      operation = (await client.delete<Operation>(path, { signal: stopWaiting.signal })).body;
    } catch (error) {
      if (stopWaiting.signal.aborted) throw new StoppedWaitingError(operation.id);
      throw error;
    }
    return { operation, cancelledHere: operation.state === 'cancelled' };
  } finally {
    bar?.finish();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/**
 * Throws OperationEndedError unless `operation` succeeded. `what` names the
 * work for the message ("clone of v1 to v2").
 */
export function requireSucceeded(outcome: FollowOutcome, what: string): Operation {
  const { operation, cancelledHere } = outcome;
  if (operation.state === 'succeeded') return operation;
  if (operation.state === 'cancelled') {
    throw new OperationEndedError(operation, cancelledHere
      ? `${what} cancelled; nothing was left behind`
      : `${what} was cancelled (by a request or an agent shutdown); nothing was left behind`);
  }
  throw new OperationEndedError(operation, `${what} failed: ${operation.error?.message ?? `operation ${operation.id} ended ${operation.state}`}`);
}

export interface StartedPut<T> {
  json: boolean;
  noWait: boolean;
  /** The work, for messages: "clone of v1 to v2". */
  what: string;
  label: string;
  /** The 202 body as the agent sent it. */
  started: { operation: Operation };
  /** Reads the finished volume or snapshot. */
  result(): Promise<T>;
  describe(result: T): string;
}

/**
 * The rest of a PUT that answered 202: with --no-wait, report the operation
 * and return; else follow it and print what it made (or throw how it ended).
 */
export async function completeStarted<T>(client: AgentClient, put: StartedPut<T>): Promise<void> {
  const { operation } = put.started;
  if (put.noWait) {
    if (put.json) process.stdout.write(`${JSON.stringify(put.started)}\n`);
    else process.stdout.write(`${put.what} started as operation ${operation.id}; follow it with: volagent ops ${operation.id}\n`);
    return;
  }
  const outcome = await followOperation(client, operation, put.json ? {} : { label: put.label });
  requireSucceeded(outcome, put.what);
  const result = await put.result();
  process.stdout.write(put.json ? `${JSON.stringify(result)}\n` : `${put.describe(result)}\n`);
}
