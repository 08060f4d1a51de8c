// Long-running work (copy-fallback clones and snapshots) as operations: a row
// in the catalog (inserted by the caller together with its target's intent),
// a task running in this process with an AbortController, and live progress.
// Progress lives in memory while the task runs and is written with the
// outcome: every catalog commit is an fsync, and a running copy's writeback
// can make one take hundreds of milliseconds (see `npm run bench -- api`).
// After a crash the operation is marked failed anyway, so progress written
// mid-way would tell nobody anything.
import { randomUUID } from 'node:crypto';

import type { Catalog, OperationRow, OperationState } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';
import type { Access } from './access.js';
import { DomainError } from './errors.js';

export interface OperationView {
  id: string;
  kind: string;
  target: string;
  /** The owner of what it makes (absent on operations recorded before the catalog knew it). */
  tenant?: string;
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
  if (error instanceof DomainError) return { code: error.code, message: error.message };
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

  /** Operation `id`, when it exists and `access` (when given) sees it: an operation is its tenant's. */
  get(id: string, access?: Access): OperationView | undefined {
    const row = this.catalog.getOperation(id);
    return row && (!access || seenBy(row, access)) ? this.view(row) : undefined;
  }

  list(access?: Access): OperationView[] {
    return this.catalog.listOperations().filter((row) => !access || seenBy(row, access)).map((row) => this.view(row));
  }

  isRunning(id: string): boolean {
    return this.live.has(id);
  }

  /** Resolves once the operation has ended (at once if it has); undefined when `access` does not see it. */
  async wait(id: string, access?: Access): Promise<OperationView | undefined> {
    if (!this.get(id, access)) return undefined;
    await this.live.get(id)?.ended;
    return this.get(id);
  }

  /** Cancels a running operation and resolves once it has stopped and cleaned up; undefined when `access` does not see it. */
  async cancel(id: string, reason = 'cancelled by request', access?: Access): Promise<OperationView | undefined> {
    if (!this.get(id, access)) return undefined;
    const entry = this.live.get(id);
    if (entry) {
      entry.controller.abort(new DomainError('OPERATION_CANCELLED', reason, { operation: id }));
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
      ...(row.tenant !== undefined ? { tenant: row.tenant } : {}),
      state: row.state,
      doneBytes: entry?.doneBytes ?? row.doneBytes,
      totalBytes: entry?.totalBytes ?? row.totalBytes,
      ...(row.error ? { error: row.error } : {}),
      createdAt: row.createdAt,
      updatedAt: row.updatedAt,
    };
  }
}

/** An operation recorded without a tenant is seen only by an unscoped admin or reader. */
function seenBy(row: OperationRow, access: Access): boolean {
  return row.tenant !== undefined ? access.sees({ tenant: row.tenant }) : access.scope === undefined;
}
