// Group commit: several write calls in one transaction, each inside its own
// SAVEPOINT so that a call that throws is rolled back alone and answered with
// its error while the others commit. A reply is only made after the COMMIT
// that made its change durable, or, for a group of `deferred` calls only,
// committed without the fsync (synchronous=NORMAL: the next durable commit's
// fsync of the WAL covers it). When the COMMIT itself fails (disk full, I/O
// error), nothing of the group is kept and every call gets that error.
import type { Catalog } from './catalog.js';
import { IllegalTransitionError } from './catalog.js';
import type { WireError, WriteCall, WriteReply } from './writer-wire.js';
import { applyWrite, isWriteMethod } from './writes.js';

export function toWire(error: unknown): WireError {
  if (error instanceof IllegalTransitionError) {
    return { name: error.name, message: error.message, transition: { id: error.id, from: error.from, to: error.to } };
  }
  const e = error as { name?: unknown; message?: unknown; code?: unknown } | null | undefined;
  return {
    name: typeof e?.name === 'string' ? e.name : 'Error',
    message: typeof e?.message === 'string' ? e.message : String(error),
    ...(typeof e?.code === 'string' ? { code: e.code } : {}),
  };
}

function runCall(catalog: Catalog, call: WriteCall): WriteReply {
  if (!isWriteMethod(call.method)) return { id: call.id, error: { name: 'TypeError', message: `not a catalog write: ${String(call.method)}` } };
  catalog.db.exec('SAVEPOINT write_call');
  try {
    const value = applyWrite(catalog, call.method, call.args);
    catalog.db.exec('RELEASE write_call');
    return { id: call.id, value };
  } catch (error) {
    catalog.db.exec('ROLLBACK TO write_call');
    catalog.db.exec('RELEASE write_call');
    return { id: call.id, error: toWire(error) };
  }
}

/** Runs `calls` in order in one IMMEDIATE transaction; one reply per call, in order. */
export function commitGroup(catalog: Catalog, calls: readonly WriteCall[]): WriteReply[] {
  const deferred = calls.every((call) => call.durability === 'deferred');
  try {
    if (deferred) catalog.db.exec('PRAGMA synchronous = NORMAL');
    catalog.db.exec('BEGIN IMMEDIATE');
    const replies = calls.map((call) => runCall(catalog, call));
    catalog.db.exec('COMMIT');
    return replies;
  } catch (error) {
    if (catalog.db.inTransaction) catalog.db.exec('ROLLBACK');
    const wire = toWire(error);
    return calls.map((call) => ({ id: call.id, error: wire }));
  } finally {
    if (deferred) catalog.db.exec('PRAGMA synchronous = FULL');
  }
}
