// The creation runner: how the making of a volume, snapshot or Image-Volume
// runs once its intent row is written, and how a repeat of the request joins
// it. A creation runs directly (the request waits) or as an operation (202
// unless the client waits); its locks are released when it ends, not when
// the request that started it is answered.
import { DomainError } from './errors.js';
import { toDomainError } from './faults.js';
import type { Release } from './locks.js';
import type { OperationView, Operations, TaskContext } from './operations.js';

interface Pending {
  operationId?: string;
  done: Promise<void>;
}

/** What a pool's long call takes from an operation: its cancellation and its progress. */
export function taskOptions(context?: TaskContext): { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } {
  return context ? { signal: context.signal, onProgress: (done, total) => context.progress(done, total) } : {};
}

export function secondsSince(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}

export class Creations {
  /** Creations in progress in this process, by pool object name. */
  private readonly pending = new Map<string, Pending>();
  /**
   * Intent rows being written, by object name. The row is visible to reads
   * once the writer thread has committed it, a moment before the write's
   * promise resolves here: a repeat that sees it waits for that promise.
   */
  private readonly intents = new Map<string, Promise<unknown>>();

  constructor(private readonly operations: Operations) {}

  /** True while this process is writing the intent of `object` or making it. */
  isRunning(object: string): boolean {
    return this.pending.has(object) || this.intents.has(object);
  }

  /**
   * Tracks the write of `object`'s intent row until it resolves. The writer
   * awaits the returned promise before anyone else can (see join), so its
   * continuation, which starts the creation, runs first.
   */
  recordIntent<T>(object: string, write: Promise<T>): Promise<T> {
    const tracked: Promise<T> = write.finally(() => {
      if (this.intents.get(object) === tracked) this.intents.delete(object);
    });
    this.intents.set(object, tracked);
    return tracked;
  }

  /**
   * Runs `work` for `object`: as an operation when `operationId` is given
   * (returning its view), else directly. `release` is called when it ends.
   */
  start(object: string, totalBytes: number, operationId: string | undefined,
    work: (context?: TaskContext) => Promise<void>, release: Release): OperationView | undefined {
    const done = (operationId ? this.operations.run(operationId, totalBytes, work) : work()).finally(() => {
      release();
      this.pending.delete(object);
    });
    done.catch(() => undefined); // awaited by whoever waits; an unwatched operation records its own outcome
    this.pending.set(object, { ...(operationId ? { operationId } : {}), done });
    return operationId ? this.operations.get(operationId) : undefined;
  }

  /** Waits for the creation of `object` to end (at once when none runs); rethrows its fault. */
  async settled(object: string): Promise<void> {
    try {
      await this.pending.get(object)?.done;
    } catch (error) {
      throw toDomainError(error);
    }
  }

  /** Waits for the creation of `object` to end; its fault as the work threw it (an upload's EFBIG tells which limit). */
  async ended(object: string): Promise<void> {
    await this.pending.get(object)?.done;
  }

  /**
   * A repeat of a request whose creation of `object` is still running: the
   * running operation when the first answer was 202 and the repeat does not
   * wait, else undefined once the creation has ended.
   */
  async join(object: string, operationId: string | undefined, wait: boolean): Promise<OperationView | undefined> {
    let pending = this.pending.get(object);
    const intent = pending ? undefined : this.intents.get(object);
    if (intent) {
      await intent.catch(() => undefined); // its writer, awaiting it first, has started the creation by now
      pending = this.pending.get(object);
    }
    if (!pending) throw busyCreating(object, operationId);
    if (pending.operationId && !wait) return this.operations.get(pending.operationId)!;
    await this.settled(object);
    return undefined;
  }
}

/** A change of `object` while its creation runs (or its row says creating): VOLUME_BUSY. */
export function busyCreating(object: string, operationId: string | undefined): DomainError {
  return new DomainError('VOLUME_BUSY', `${object} is being created${operationId ? ` by operation ${operationId}` : ''}`, {
    object, ...(operationId ? { operations: [operationId] } : {}),
  });
}
