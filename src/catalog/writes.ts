// The catalog's write methods as promises. In the agent they run on the
// catalog writer thread (writer.ts), so a commit's fsync never blocks the
// JavaScript thread; `inlineWrites` runs them on the calling thread, for
// start-up (before anything is served) and for tools and tests.
import { failpoint } from '../common/failpoints.js';
import type { Catalog } from './catalog.js';

export const WRITE_METHODS = [
  'insertCreating', 'transitionVolume', 'updateVolume', 'removeVolume', 'discardCreatingVolume',
  'insertSnapshotCreating', 'transitionSnapshot', 'discardCreatingSnapshot', 'removeSnapshot',
  'insertOperation', 'recordProgress', 'finishOperation',
  'insertImageCreating', 'transitionImage', 'completeAdoption', 'discardCreatingImage', 'removeImage', 'touchImage',
  'recordThinPool', 'markThinPoolReady', 'beginThinChange', 'commitThinChange', 'abandonThinChange', 'updateThinDevice',
  'insertExportCreating', 'markExportAvailable', 'moveExportDevice', 'markExportDeleting', 'removeExport',
] as const satisfies ReadonlyArray<keyof Catalog>;

export type WriteMethod = (typeof WRITE_METHODS)[number];

/**
 * When a write's promise resolves. `durable`: once its commit is fsync'd
 * (synchronous=FULL). `deferred`: once it is committed and seen by every
 * later read; it survives a kill of the agent (the WAL is in the page cache)
 * but a power loss only once a later durable commit (which fsyncs the whole
 * WAL, earlier frames too) or a checkpoint has followed. Only for a change
 * that the start-up reconcile can make again from the pools.
 */
export type Durability = 'durable' | 'deferred';

/** Each write method of Catalog, resolving when its Durability says. */
export type CatalogWrites = {
  [M in WriteMethod]: (...args: Parameters<Catalog[M]>) => Promise<ReturnType<Catalog[M]>>;
};

export function isWriteMethod(name: unknown): name is WriteMethod {
  return (WRITE_METHODS as readonly unknown[]).includes(name);
}

/** Calls `catalog`'s write method `method` with `args` (one place that knows the call is well-typed). */
export function applyWrite(catalog: Catalog, method: WriteMethod, args: readonly unknown[]): unknown {
  return (catalog[method] as (...a: unknown[]) => unknown).apply(catalog, args as unknown[]);
}

/** `catalog.before-<method>` and `catalog.after-<method>` of a write method (kebab case). */
function writeFailpoints(method: WriteMethod): { before: string; after: string } {
  const name = method.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  return { before: `catalog.before-${name}`, after: `catalog.after-${name}` };
}

/**
 * CatalogWrites whose every method is `call(method, args)`, with a failpoint
 * before the call and one after its commit was answered.
 */
export function writesThrough(call: (method: WriteMethod, args: unknown[]) => Promise<unknown>): CatalogWrites {
  return Object.fromEntries(WRITE_METHODS.map((method) => {
    const points = writeFailpoints(method);
    return [method, async (...args: unknown[]) => {
      failpoint(points.before);
      const value = await call(method, args);
      failpoint(points.after);
      return value;
    }];
  })) as unknown as CatalogWrites;
}

/** The writes of `catalog` on the calling thread, each its own durable commit. */
export function inlineWrites(catalog: Catalog): CatalogWrites {
  return writesThrough((method, args) => new Promise((resolve) => resolve(applyWrite(catalog, method, args))));
}
