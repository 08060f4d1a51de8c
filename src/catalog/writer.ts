// The agent's side of the catalog writer thread (writer-thread.ts): every
// catalog write of a running agent goes there, so the fsync of a commit never
// stalls the JavaScript thread. Reads stay on the agent's own connection: in
// WAL mode a read sees every transaction committed before it started, so a
// read made after a write's promise resolved sees that write.
import { Worker } from 'node:worker_threads';

import { IllegalTransitionError } from './catalog.js';
import type { FromWriter, ToWriter, WireError, WriteReply, WriterData } from './writer-wire.js';
import type { CatalogWrites, Durability, WriteMethod } from './writes.js';
import { writesThrough } from './writes.js';

const THREAD_URL = new URL('./writer-thread.js', import.meta.url);

export class CatalogWriterError extends Error {
  override name = 'CatalogWriterError';
  constructor(message: string, readonly code?: string, options?: ErrorOptions) {
    super(message, options);
  }
}

function fromWire(error: WireError): Error {
  if (error.transition) return new IllegalTransitionError(error.transition.id, error.transition.from, error.transition.to);
  const revived = new CatalogWriterError(error.message, error.code);
  revived.name = error.name;
  return revived;
}

interface Waiting {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

export class CatalogWriter {
  /** Each resolves once its commit is durable. */
  readonly writes: CatalogWrites;
  /** Each resolves once committed and visible, durable with the next durable commit (Durability). */
  readonly deferredWrites: CatalogWrites;
  private readonly waiting = new Map<number, Waiting>();
  private nextCallId = 1;
  /** Calls answered, and the commits (groups) that answered them. */
  private readonly counts = { calls: 0, commits: 0 };
  /** Set once the thread is gone: every later call fails with it. */
  private gone: Error | undefined;
  private closed: Promise<void> | undefined;

  private constructor(private readonly worker: Worker) {
    this.writes = writesThrough((method, args) => this.call(method, args, 'durable'));
    this.deferredWrites = writesThrough((method, args) => this.call(method, args, 'deferred'));
    worker.on('message', (message: FromWriter) => {
      if (message.type === 'replies') this.settle(message.replies);
    });
    worker.on('error', (error) => this.fail(new CatalogWriterError(`catalog writer thread failed: ${error.message}`, undefined, { cause: error })));
    worker.on('exit', (code) => this.fail(new CatalogWriterError(`catalog writer thread exited (code ${code})`)));
    worker.unref(); // referenced only while calls wait (see call)
  }

  /** Starts the writer thread on the catalog file (already created and migrated by the caller). */
  static start(file: string, options: { keepFinishedOperations?: number } = {}): Promise<CatalogWriter> {
    const workerData: WriterData = { file, ...options };
    const worker = new Worker(THREAD_URL, { workerData, name: 'catalog-writer' });
    return new Promise((resolve, reject) => {
      const onMessage = (message: FromWriter): void => {
        if (message.type === 'ready') {
          cleanup();
          resolve(new CatalogWriter(worker));
        } else if (message.type === 'failed') {
          cleanup();
          reject(fromWire(message.error));
        }
      };
      const onError = (error: Error): void => {
        cleanup();
        reject(error);
      };
      const onExit = (code: number): void => {
        cleanup();
        reject(new CatalogWriterError(`catalog writer thread exited during start-up (code ${code})`));
      };
      const cleanup = (): void => {
        worker.off('message', onMessage).off('error', onError).off('exit', onExit);
      };
      worker.on('message', onMessage).on('error', onError).on('exit', onExit);
    });
  }

  /** Commits what is queued, closes the write connection and ends the thread. */
  close(): Promise<void> {
    this.closed ??= new Promise<void>((resolve) => {
      if (this.gone) {
        resolve();
        return;
      }
      this.worker.ref();
      this.worker.once('exit', () => resolve());
      this.post({ type: 'close' });
    });
    return this.closed;
  }

  private call(method: WriteMethod, args: unknown[], durability: Durability): Promise<unknown> {
    if (this.closed) return Promise.reject(new CatalogWriterError('the catalog writer is closed'));
    if (this.gone) return Promise.reject(this.gone);
    const id = this.nextCallId++;
    return new Promise((resolve, reject) => {
      if (this.waiting.size === 0) this.worker.ref();
      this.waiting.set(id, { resolve, reject });
      this.post({ type: 'call', id, method, args, durability });
    });
  }

  private post(message: ToWriter): void {
    this.worker.postMessage(message);
  }

  stats(): { calls: number; commits: number } {
    return { ...this.counts };
  }

  private settle(replies: WriteReply[]): void {
    this.counts.commits += 1;
    this.counts.calls += replies.length;
    for (const reply of replies) {
      const waiting = this.waiting.get(reply.id);
      if (!waiting) continue;
      this.waiting.delete(reply.id);
      if ('error' in reply) waiting.reject(fromWire(reply.error));
      else waiting.resolve(reply.value);
    }
    if (this.waiting.size === 0 && !this.closed) this.worker.unref();
  }

  private fail(error: Error): void {
    this.gone ??= error;
    for (const waiting of this.waiting.values()) waiting.reject(this.gone);
    this.waiting.clear();
  }
}
