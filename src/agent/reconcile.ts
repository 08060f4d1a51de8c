// Compares the catalog with the pools and settles what differs
// (docs/design.md "Catalog and reconcile", "House style" 10).
//
//   startup: before the socket listens. Operations left running are marked
//            failed, rows left `creating` are rolled back (their object, if
//            any, removed: the request was never answered as done), but a
//            volume made at once (no operation) whose pool publishes objects
//            only whole is completed when its object is there (its answer
//            did not wait for the fsync of its result: writes.ts Durability), rows left
//            `deleting` are finished, temporaries removed, a writable volume
//            grown past its row's size (a resize cut off) recorded. Orphans, missing
//            objects and size differences are reported and logged but kept:
//            an empty catalog pointed at a full pool must not wipe it.
//   check:   reports everything, changes nothing.
//   repair:  settles everything: as startup, plus orphans removed, rows of
//            missing objects marked `error`, row sizes set to the object's.
// Objects that the running agent is making or reading right now (`isLive`)
// are never touched.
import type { Catalog, VolumeRow } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';
import type { Pool } from '../pools/pool.js';
import { snapshotObject } from './ids.js';

export type ReconcileMode = 'startup' | 'check' | 'repair';

export type DifferenceKind = 'temporary' | 'orphan' | 'missing' | 'size' | 'transitional' | 'operation' | 'export';
export type RepairAction = 'removed' | 'marked-error' | 'resized-row' | 'finished' | 'detached' | 'restored';

export interface Difference {
  kind: DifferenceKind;
  pool?: string;
  object?: string;
  volume?: string;
  snapshot?: string;
  image?: string;
  operation?: string;
  export?: string;
  /** A loop device (export differences). */
  device?: string;
  detail: string;
  action?: RepairAction;
}

export interface CheckReport {
  /** Nothing differs any more (everything found was repaired, or nothing was found). */
  clean: boolean;
  repaired: boolean;
  differences: Difference[];
}

const INTERRUPTED = { code: 'INTERNAL', message: 'interrupted: the agent stopped before the operation ended' };

/** Which differences each mode settles. */
const SETTLES: Record<ReconcileMode, ReadonlySet<DifferenceKind>> = {
  startup: new Set(['temporary', 'transitional', 'operation']),
  check: new Set(),
  repair: new Set(['temporary', 'transitional', 'operation', 'orphan', 'missing', 'size']),
};

export interface ReconcileOptions {
  mode: ReconcileMode;
  isLive?: (object: string) => boolean;
  isOperationLive?: (id: string) => boolean;
}

/**
 * A volume row left creating that its object alone can finish: a volume (not
 * an Image-Volume, whose image row is settled with it), made at once (no
 * operation, no peer, no adoption), in a pool whose objects are named only
 * once whole. The domain writes such a row's result deferred (writes.ts
 * Durability), and only such a row's.
 */
export function isCompletable(row: VolumeRow, pool: Pool): boolean {
  return row.kind === 'volume' && row.operationId === undefined && row.remoteSource === undefined && row.unmanagedSource === undefined && pool.publishesWhole;
}

/** Label of a temporary `.tmp-<label>-<12 hex>.raw` (the object it was for, maybe truncated). */
function temporaryLabel(temporary: string): string {
  return temporary.replace(/^\.tmp-/, '').replace(/-[0-9a-f]{12}\.raw$/, '');
}

export async function reconcile(catalog: Catalog, writes: CatalogWrites, pools: ReadonlyMap<string, Pool>, options: ReconcileOptions): Promise<CheckReport> {
  const { mode } = options;
  const isLive = options.isLive ?? (() => false);
  const isOperationLive = options.isOperationLive ?? (() => false);
  const settles = SETTLES[mode];
  const differences: Difference[] = [];
  // A fix that fails leaves its difference open, says why, and the rest goes
  // on: one bad row never keeps the agent from starting (check names it).
  const settle = async (difference: Difference, action: RepairAction, fix: () => Promise<unknown> | unknown, settledAtStartup = false): Promise<void> => {
    if (settles.has(difference.kind) || (settledAtStartup && mode === 'startup')) {
      try {
        await fix();
        difference.action = action;
      } catch (error) {
        difference.detail += `; not settled: ${(error as Error).message}`;
      }
    }
    differences.push(difference);
  };
  /** Export rows of volume `id`: its row cannot go before they do (foreign key), and a served volume is not removed under its clients. */
  const exportsOf = (id: string): string[] => catalog.exportsOfVolume(id).map((e) => e.id);

  // Objects are listed before rows are read: a row is written before its
  // object, so an object seen without a row is a true orphan.
  const objects = new Map<string, string[]>();
  const temporaries = new Map<string, string[]>();
  for (const [name, pool] of pools) {
    objects.set(name, await pool.list());
    temporaries.set(name, await pool.listTemporaries());
  }

  for (const op of catalog.runningOperations()) {
    if (isOperationLive(op.id)) continue;
    await settle({ kind: 'operation', operation: op.id, detail: `operation ${op.kind} of ${op.targetId} left running` }, 'finished',
      () => writes.finishOperation(op.id, 'failed', INTERRUPTED));
  }

  for (const row of catalog.transitionalVolumes()) {
    if (isLive(row.id)) continue;
    const pool = pools.get(row.pool);
    const base = { kind: 'transitional' as const, pool: row.pool, object: row.id, volume: row.id };
    if (!pool) {
      differences.push({ ...base, detail: `volume left ${row.state} in pool ${row.pool}, which is not configured` });
      continue;
    }
    const adoptedFrom = row.unmanagedSource;
    if (row.state === 'creating' && adoptedFrom !== undefined) {
      // An adoption: the object is the operator's, never removed; the pool undoes what part of the adoption was done.
      await settle({ ...base, detail: `adoption of ${adoptedFrom} left creating: given back` }, 'finished', async () => {
        if (!pool.unmanaged) throw new Error(`pool ${row.pool} (${pool.backend}) adopts nothing: ${adoptedFrom} is left as it is`);
        await pool.unmanaged.giveBack(adoptedFrom, row.id);
        await writes.discardCreatingVolume(row.id);
      });
    } else if (row.state === 'creating' && isCompletable(row, pool) && objects.get(row.pool)!.includes(row.id)) {
      await settle({ ...base, detail: 'volume left creating, its object published whole: completed' }, 'finished',
        () => writes.transitionVolume(row.id, 'creating', 'available'));
    } else if (row.state === 'creating') {
      await settle({ ...base, detail: 'volume left creating: rolled back' }, 'removed', async () => {
        await pool.remove(row.id);
        await writes.discardCreatingVolume(row.id);
      });
    } else if (exportsOf(row.id).length > 0) {
      differences.push({ ...base, detail: `volume left deleting while exported (${exportsOf(row.id).join(', ')}): left as it is; unexport it, then check --repair finishes the delete` });
    } else {
      await settle({ ...base, detail: 'volume left deleting: delete finished' }, 'finished', async () => {
        await pool.remove(row.id);
        await writes.removeVolume(row.id);
      });
    }
  }

  for (const row of catalog.transitionalSnapshots()) {
    const object = snapshotObject(row.volumeId, row.id);
    if (isLive(object)) continue;
    const pool = pools.get(row.pool);
    const base = { kind: 'transitional' as const, pool: row.pool, object, volume: row.volumeId, snapshot: row.id };
    if (!pool) {
      differences.push({ ...base, detail: `snapshot left ${row.state} in pool ${row.pool}, which is not configured` });
      continue;
    }
    if (row.state === 'creating') {
      await settle({ ...base, detail: 'snapshot left creating: rolled back' }, 'removed', async () => {
        await pool.remove(object);
        await writes.discardCreatingSnapshot(row.volumeId, row.id);
      });
    } else {
      await settle({ ...base, detail: 'snapshot left deleting: delete finished' }, 'finished', async () => {
        await pool.remove(object);
        await writes.removeSnapshot(row.volumeId, row.id);
      });
    }
  }

  // Images after their Image-Volumes' rows were settled above. `image/<id>`
  // is live while this process registers or deletes that image.
  for (const image of catalog.transitionalImages()) {
    if (isLive(`image/${image.id}`)) continue;
    const pool = pools.get(image.pool);
    const base = { kind: 'transitional' as const, pool: image.pool, object: image.volumeId, image: image.id };
    if (!pool) {
      differences.push({ ...base, detail: `image left ${image.state} in pool ${image.pool}, which is not configured` });
      continue;
    }
    const removeImageVolume = async (): Promise<void> => {
      const row = catalog.getVolume(image.volumeId);
      await pool.remove(image.volumeId);
      if (row?.state === 'creating') await writes.discardCreatingVolume(row.id);
      else if (row) {
        if (row.state !== 'deleting') await writes.transitionVolume(row.id, row.state, 'deleting');
        await writes.removeVolume(row.id);
      }
    };
    if (image.state === 'creating') {
      await settle({ ...base, detail: `image left creating (${image.mode}): rolled back` }, 'removed', async () => {
        if (image.mode === 'adopt') {
          // Adoption commits the volume's change with the image's: still a plain volume, so writable again.
          if (catalog.getVolume(image.volumeId)?.kind === 'volume') await pool.setReadOnly(image.volumeId, false).catch(() => undefined);
        } else {
          await removeImageVolume();
        }
        await writes.discardCreatingImage(image.id);
      });
    } else if (exportsOf(image.volumeId).length > 0) {
      differences.push({ ...base, detail: `image left deleting while its Image-Volume is exported (${exportsOf(image.volumeId).join(', ')}): left as it is; unexport it, then check --repair finishes the delete` });
    } else {
      await settle({ ...base, detail: 'image left deleting: delete finished' }, 'finished', async () => {
        await removeImageVolume();
        await writes.removeImage(image.id);
      });
    }
  }

  for (const [name, pool] of pools) {
    for (const temporary of temporaries.get(name)!) {
      const label = temporaryLabel(temporary);
      if (isLive(label)) continue;
      await settle({ kind: 'temporary', pool: name, object: temporary, detail: 'temporary file of an interrupted write' }, 'removed',
        () => pool.removeTemporary(temporary));
    }
  }

  // Rows as they are now (after the transitional ones were settled).
  const volumeRows = new Map(catalog.listVolumes().map((row) => [row.id, row]));
  const snapshotRows = new Map(catalog.listSnapshots().map((row) => [snapshotObject(row.volumeId, row.id), row]));

  for (const [name, pool] of pools) {
    const present = new Set(objects.get(name)!);
    for (const object of present) {
      const row = volumeRows.get(object) ?? snapshotRows.get(object);
      if ((row && row.pool === name) || isLive(object)) continue;
      if (!(await pool.stat(object))) continue; // settled above (a rolled-back creation)
      await settle({ kind: 'orphan', pool: name, object, detail: 'pool object with no catalog row' }, 'removed', () => pool.remove(object));
    }
    for (const row of volumeRows.values()) {
      if (row.pool !== name || row.state !== 'available' || isLive(row.id)) continue;
      const info = await pool.stat(row.id);
      const base = { pool: name, object: row.id, volume: row.id };
      if (!info) {
        await settle({ kind: 'missing', ...base, detail: 'volume is available in the catalog but its object is gone' }, 'marked-error',
          () => writes.transitionVolume(row.id, 'available', 'error', { error: 'backend object missing' }));
      } else if (info.sizeBytes !== row.sizeBytes) {
        // A resize grows the object, then records the size: a writable volume
        // larger than its row is a resize cut off after the grow, finished here.
        const growCutOff = info.sizeBytes > row.sizeBytes && !row.readOnly && row.kind === 'volume';
        await settle({ kind: 'size', ...base, detail: `object is ${info.sizeBytes} bytes, the catalog says ${row.sizeBytes}` }, 'resized-row',
          () => writes.updateVolume(row.id, { sizeBytes: info.sizeBytes }), growCutOff);
      }
    }
    for (const [object, row] of snapshotRows) {
      if (row.pool !== name || row.state !== 'available' || isLive(object)) continue;
      if (!(await pool.stat(object))) {
        await settle({ kind: 'missing', pool: name, object, volume: row.volumeId, snapshot: row.id, detail: 'snapshot is available in the catalog but its object is gone' },
          'marked-error', () => writes.transitionSnapshot(row.volumeId, row.id, 'available', 'error', { error: 'backend object missing' }));
      }
    }
  }

  return checkReport(differences);
}

/** The report of `differences`: clean when each was settled (or there are none). */
export function checkReport(differences: Difference[]): CheckReport {
  return {
    clean: differences.every((d) => d.action !== undefined),
    repaired: differences.some((d) => d.action !== undefined),
    differences,
  };
}
