// Long-running work (copy-fallback clones and snapshots) as operations: a row
// in the catalog (inserted by the caller together with its target's intent),
// a task running in this process with an AbortController, and live progress.
// Progress lives in memory while the task runs and is written with the
// outcome: every catalog commit is an fsync, and a running copy's writeback
// can make one take hundreds of milliseconds (see `npm run bench -- api`).
// After a crash the operation is marked failed anyway, so progress written
// mid-way would tell nobody anything.
import { randomUUID } from 'node:crypto';

import { ApiError } from '../api/errors.js';
import type { Catalog, OperationRow, OperationState } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';

export interface OperationView {
  id: string;
  kind: string;
  target: string;
  state: OperationState;
  doneBytes: number;
  totalBytes: number;
  error?: { code: string; message: string };
  createdAt: string;
  updatedAt: string;
}

export interface TaskContext {
  signal: AbortSignal;
  progress(doneBytes: number, totalBytes: number): void;
}

interface LiveOperation {
  controller: AbortController;
  doneBytes: number;
  totalBytes: number;
  /** Settles when the task has ended and its row is final. */
  ended: Promise<void>;
}

/** Why a task stopped, as the operation's error. */
export function faultOf(error: unknown): { code: string; message: string } {
  if (error instanceof ApiError) return { code: error.code, message: error.message };
  return { code: 'INTERNAL', message: (error as Error)?.message ?? String(error) };
}

export class OperationCancelledError extends Error {
  override name = 'OperationCancelledError';
}

export function newOperationId(): string {
  return `op-${randomUUID()}`;
}

export class Operations {
  private readonly live = new Map<string, LiveOperation>();

  constructor(private readonly catalog: Catalog, private readonly writes: CatalogWrites) {}

  /**
   * Runs `task` for the operation row `id` (already inserted, state running).
   * The returned promise settles like the task: callers that answer `202`
   * ignore it, `?wait=true` callers await it.
   */
  run(id: string, totalBytes: number, task: (context: TaskContext) => Promise<void>): Promise<void> {
    const controller = new AbortController();
    const entry: LiveOperation = { controller, doneBytes: 0, totalBytes, ended: Promise.resolve() };
    this.live.set(id, entry);
    const context: TaskContext = {
      signal: controller.signal,
      progress: (doneBytes, total) => {
        entry.doneBytes = doneBytes;
        entry.totalBytes = total;
      },
    };
    const outcome = (async () => {
      try {
        await task(context);
        await this.finish(id, entry.totalBytes, entry.totalBytes, 'succeeded');
      } catch (error) {
        if (controller.signal.aborted) {
          await this.finish(id, entry.doneBytes, entry.totalBytes, 'cancelled', faultOf(controller.signal.reason));
          throw new OperationCancelledError(`operation ${id} was cancelled`);
        }
        await this.finish(id, entry.doneBytes, entry.totalBytes, 'failed', faultOf(error));
        throw error;
      } finally {
        this.live.delete(id);
      }
    })();
    entry.ended = outcome.then(() => undefined, () => undefined);
    return outcome;
  }

  /** Progress and outcome in one commit. */
  private async finish(id: string, doneBytes: number, totalBytes: number, state: 'succeeded' | 'failed' | 'cancelled', error?: { code: string; message: string }): Promise<void> {
    await this.writes.finishOperation(id, state, error, { doneBytes, totalBytes });
  }

  get(id: string): OperationView | undefined {
    const row = this.catalog.getOperation(id);
    return row && this.view(row);
  }

  list(): OperationView[] {
    return this.catalog.listOperations().map((row) => this.view(row));
  }

  isRunning(id: string): boolean {
    return this.live.has(id);
  }

  /** Resolves once the operation has ended (at once if it has). */
  async wait(id: string): Promise<OperationView | undefined> {
    await this.live.get(id)?.ended;
    return this.get(id);
  }

  /** Cancels a running operation and resolves once it has stopped and cleaned up. */
  async cancel(id: string, reason = 'cancelled by request'): Promise<OperationView | undefined> {
    const entry = this.live.get(id);
    if (entry) {
      entry.controller.abort(new ApiError('OPERATION_CANCELLED', reason, { operation: id }));
      await entry.ended;
    }
    return this.get(id);
  }

  /** Cancels every running operation (agent shutdown) and waits for each to stop. */
  async cancelAll(reason: string): Promise<void> {
    await Promise.all([...this.live.keys()].map((id) => this.cancel(id, reason)));
  }

  private view(row: OperationRow): OperationView {
    const entry = this.live.get(row.id);
    return {
      id: row.id,
      kind: row.kind,
      target: row.targetId,
      state: row.state,
      doneBytes: entry?.doneBytes ?? row.doneBytes,
      totalBytes: entry?.totalBytes ?? row.totalBytes,
      ...(row.error ? { error: row.error } : {}),
      createdAt: row.createdAt,
      updatedAt: row.updatedAt,
    };
  }
}
