// The catalog: the only writer of durable state (docs/design.md "Catalog and
// reconcile"). SQLite in WAL mode with synchronous=FULL, so a committed
// transaction survives a crash of the agent and a power loss. Every state
// change is a compare-and-set on the current state, so two writers can never
// both win a transition.
import { mkdirSync } from 'node:fs';
import path from 'node:path';

import BetterSqlite3 from 'better-sqlite3';
import type { Database, Statement } from 'better-sqlite3';

import type { NewThinPool, PendingThinChange, ThinChange, ThinDeviceRecord, ThinPoolRecord } from '../pools/thin/ledger.js';
import { retiredThinName } from '../pools/thin/ledger.js';
import { migrate } from './migrations.js';
import type { ObjectState } from './volume-state.js';
import { canTransition, TRANSITIONAL_STATES } from './volume-state.js';

export type VolumeKind = 'volume' | 'image';
export type SourceKind = 'volume' | 'snapshot' | 'image';

/** A peer agent's export a volume was pulled from (no credentials: those are this host's config). */
export interface RemoteSourceRecord {
  uri: string;
  sizeBytes: number;
  /** The peer's volume, as the request named it (checked against the export's description). */
  volume?: string;
}

export interface VolumeRow {
  id: string;
  pool: string;
  tenant: string;
  kind: VolumeKind;
  sizeBytes: number;
  state: ObjectState;
  source?: { kind: SourceKind; id: string };
  /** Pulled from another host: the peer's export it was read from. */
  remoteSource?: RemoteSourceRecord;
  /** Adopted: the backend's own name of the object the agent took over (an LV it did not make). */
  unmanagedSource?: string;
  cloneMethod?: string;
  readOnly: boolean;
  /** Canonical form of the creating request, to tell a repeat from a conflict. */
  requestKey: string;
  operationId?: string;
  error?: string;
  createdAt: string;
  updatedAt: string;
}

export interface NewVolume {
  id: string;
  pool: string;
  tenant: string;
  kind: VolumeKind;
  sizeBytes: number;
  source?: { kind: SourceKind; id: string };
  remoteSource?: RemoteSourceRecord;
  unmanagedSource?: string;
  readOnly?: boolean;
  requestKey: string;
  operationId?: string;
}

/** An operation row inserted together with the intent of the object it makes. */
export interface NewOperation {
  id: string;
  kind: string;
  targetId: string;
  totalBytes: number;
  /** The owner of what the operation makes. */
  tenant: string;
}

export interface VolumeFilter {
  pool?: string;
  tenant?: string;
  kind?: VolumeKind;
  state?: ObjectState;
}

export type OperationState = 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface OperationRow {
  id: string;
  kind: string;
  targetId: string;
  /** The owner of what it makes; absent on operations recorded before catalog schema 8. */
  tenant?: string;
  state: OperationState;
  doneBytes: number;
  totalBytes: number;
  error?: { code: string; message: string };
  createdAt: string;
  updatedAt: string;
}

export interface SnapshotRow {
  volumeId: string;
  id: string;
  pool: string;
  sizeBytes: number;
  state: ObjectState;
  cloneMethod?: string;
  operationId?: string;
  error?: string;
  createdAt: string;
  updatedAt: string;
}

export interface NewSnapshot {
  volumeId: string;
  id: string;
  pool: string;
  sizeBytes: number;
  operationId?: string;
}

export type ImageVisibility = 'public' | 'private';
export type ImageMode = 'clone' | 'adopt' | 'upload';

export interface ImageRow {
  id: string;
  /** The Image-Volume. */
  volumeId: string;
  pool: string;
  /** The owner: the tenant that registered the image (visibility is judged against it). */
  tenant: string;
  visibility: ImageVisibility;
  internal: boolean;
  mode: ImageMode;
  sourceVolume?: string;
  state: ObjectState;
  requestKey: string;
  /** An entry of its pool's image-volume cache (uploaded with cache=true). */
  cached: boolean;
  /** Order of last use among the catalog's images (higher: more recent); set when made and on each clone. */
  lastUsed: number;
  error?: string;
  createdAt: string;
  updatedAt: string;
}

export type NewImage = Omit<ImageRow, 'state' | 'error' | 'createdAt' | 'updatedAt' | 'cached' | 'lastUsed'> & { cached?: boolean };

interface ImageRecord {
  id: string; volume_id: string; pool: string; tenant: string; visibility: ImageVisibility; internal: number; mode: ImageMode;
  source_volume: string | null; state: ObjectState; request_key: string; cached: number; last_used: number;
  error: string | null; created_at: string; updated_at: string;
}

function toImage(r: ImageRecord): ImageRow {
  return {
    id: r.id, volumeId: r.volume_id, pool: r.pool, tenant: r.tenant, visibility: r.visibility, internal: r.internal === 1, mode: r.mode,
    ...(r.source_volume ? { sourceVolume: r.source_volume } : {}),
    state: r.state, requestKey: r.request_key, cached: r.cached === 1, lastUsed: r.last_used,
    ...(r.error ? { error: r.error } : {}),
    createdAt: r.created_at, updatedAt: r.updated_at,
  };
}

interface VolumeRecord {
  id: string; pool: string; tenant: string; kind: VolumeKind; size_bytes: number; state: ObjectState;
  source_kind: SourceKind | null; source_id: string | null; source_remote: string | null; source_unmanaged: string | null; clone_method: string | null; read_only: number;
  request_key: string; operation_id: string | null; error: string | null; created_at: string; updated_at: string;
}

interface OperationRecord {
  id: string; kind: string; target_id: string; tenant: string | null; state: OperationState; done_bytes: number; total_bytes: number;
  error: string | null; error_code: string | null; created_at: string; updated_at: string;
}

interface SnapshotRecord {
  volume_id: string; id: string; pool: string; size_bytes: number; state: ObjectState; clone_method: string | null;
  operation_id: string | null; error: string | null; created_at: string; updated_at: string;
}

function toVolume(r: VolumeRecord): VolumeRow {
  return {
    id: r.id, pool: r.pool, tenant: r.tenant, kind: r.kind, sizeBytes: r.size_bytes, state: r.state,
    ...(r.source_kind && r.source_id ? { source: { kind: r.source_kind, id: r.source_id } } : {}),
    ...(r.source_remote ? { remoteSource: JSON.parse(r.source_remote) as RemoteSourceRecord } : {}),
    ...(r.source_unmanaged ? { unmanagedSource: r.source_unmanaged } : {}),
    ...(r.clone_method ? { cloneMethod: r.clone_method } : {}),
    readOnly: r.read_only === 1, requestKey: r.request_key,
    ...(r.operation_id ? { operationId: r.operation_id } : {}),
    ...(r.error ? { error: r.error } : {}),
    createdAt: r.created_at, updatedAt: r.updated_at,
  };
}

function toOperation(r: OperationRecord): OperationRow {
  return {
    id: r.id, kind: r.kind, targetId: r.target_id, ...(r.tenant !== null ? { tenant: r.tenant } : {}), state: r.state, doneBytes: r.done_bytes, totalBytes: r.total_bytes,
    ...(r.error ? { error: { code: r.error_code ?? 'INTERNAL', message: r.error } } : {}),
    createdAt: r.created_at, updatedAt: r.updated_at,
  };
}

function toSnapshot(r: SnapshotRecord): SnapshotRow {
  return {
    volumeId: r.volume_id, id: r.id, pool: r.pool, sizeBytes: r.size_bytes, state: r.state,
    ...(r.clone_method ? { cloneMethod: r.clone_method } : {}),
    ...(r.operation_id ? { operationId: r.operation_id } : {}),
    ...(r.error ? { error: r.error } : {}),
    createdAt: r.created_at, updatedAt: r.updated_at,
  };
}

interface ThinPoolDbRecord {
  pool: string; data_device: string; metadata_device: string; block_sectors: number; phase: ThinPoolRecord['phase'];
  transaction_id: number; next_thin_id: number; pending: string | null;
}

interface ThinDeviceDbRecord { pool: string; name: string; thin_id: number; size_bytes: number; read_only: number }

function toThinPool(r: ThinPoolDbRecord): ThinPoolRecord {
  return {
    pool: r.pool, dataDevice: r.data_device, metadataDevice: r.metadata_device, blockSectors: r.block_sectors, phase: r.phase,
    transactionId: r.transaction_id, nextThinId: r.next_thin_id,
    ...(r.pending ? { pending: JSON.parse(r.pending) as PendingThinChange } : {}),
  };
}

function toThinDevice(r: ThinDeviceDbRecord): ThinDeviceRecord {
  return { pool: r.pool, name: r.name, thinId: r.thin_id, sizeBytes: r.size_bytes, readOnly: r.read_only === 1 };
}

export type ExportProtocol = 'nbd' | 'block';
export type ExportState = 'creating' | 'available' | 'deleting';

export interface ExportRow {
  id: string;
  volumeId: string;
  protocol: ExportProtocol;
  readOnly: boolean;
  /** The export bypasses the page cache (a loop device's direct I/O; an NBD export's O_DIRECT reads). */
  directIo: boolean;
  state: ExportState;
  /** A block export's device path (a loop device, or a thin volume's node). */
  device?: string;
  createdAt: string;
  updatedAt: string;
}

interface ExportRecord {
  id: string; volume_id: string; protocol: ExportProtocol; read_only: number; direct_io: number; state: ExportState; device: string | null; created_at: string; updated_at: string;
}

function toExport(r: ExportRecord): ExportRow {
  return {
    id: r.id, volumeId: r.volume_id, protocol: r.protocol, readOnly: r.read_only === 1, directIo: r.direct_io === 1, state: r.state,
    ...(r.device ? { device: r.device } : {}), createdAt: r.created_at, updatedAt: r.updated_at,
  };
}

/** dm-thin device ids are 24 bits. */
const MAX_THIN_ID = 2 ** 24 - 1;

/** Ended operations the catalog keeps unless told otherwise (`[agent] keep_finished_operations`). */
export const DEFAULT_KEEP_FINISHED_OPERATIONS = 1000;

export class ThinLedgerError extends Error {
  override name = 'ThinLedgerError';
}

export class IllegalTransitionError extends Error {
  override name = 'IllegalTransitionError';
  constructor(readonly id: string, readonly from: ObjectState, readonly to: ObjectState) {
    super(`volume ${id}: no transition from ${from} to ${to}`);
  }
}

export class Catalog {
  /** Prepared once per SQL text: preparing costs more than running these small statements. */
  private readonly statements = new Map<string, Statement>();

  private constructor(
    readonly db: Database, readonly file: string, private readonly now: () => string,
    /** Ended operations kept by finishOperation: the most recently ended ones. */
    readonly keepFinishedOperations: number,
  ) {}

  private sql(text: string): Statement {
    let statement = this.statements.get(text);
    if (!statement) {
      statement = this.db.prepare(text);
      this.statements.set(text, statement);
    }
    return statement;
  }

  /**
   * Opens (creating if needed) and migrates the catalog at `file`.
   * `keepFinishedOperations` (default 1000): how many ended operations
   * finishOperation leaves in the table.
   */
  static open(file: string, options: { now?: () => string; keepFinishedOperations?: number } = {}): Catalog {
    if (file !== ':memory:') mkdirSync(path.dirname(file), { recursive: true });
    const db = new BetterSqlite3(file);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      db.pragma('busy_timeout = 5000');
      migrate(db);
    } catch (error) {
      db.close();
      throw error;
    }
    return new Catalog(db, file, options.now ?? (() => new Date().toISOString()), options.keepFinishedOperations ?? DEFAULT_KEEP_FINISHED_OPERATIONS);
  }

  close(): void {
    this.db.close();
  }

  /** Runs `fn` in one IMMEDIATE transaction (the write lock is taken up front). */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  // --- volumes ---

  getVolume(id: string): VolumeRow | undefined {
    const r = this.sql('SELECT * FROM volumes WHERE id = ?').get(id) as VolumeRecord | undefined;
    return r && toVolume(r);
  }

  listVolumes(filter: VolumeFilter = {}): VolumeRow[] {
    const clauses: string[] = [];
    const values: string[] = [];
    for (const [column, value] of [['pool', filter.pool], ['tenant', filter.tenant], ['kind', filter.kind], ['state', filter.state]] as const) {
      if (value !== undefined) {
        clauses.push(`${column} = ?`);
        values.push(value);
      }
    }
    const where = clauses.length > 0 ? `WHERE ${clauses.join(' AND ')}` : '';
    return (this.sql(`SELECT * FROM volumes ${where} ORDER BY created_at, id`).all(...values) as VolumeRecord[]).map(toVolume);
  }

  /**
   * Records the intent to create a volume (state `creating`). Returns the
   * existing row instead when the id is taken, so the caller can tell an
   * identical repeat (same requestKey) from a conflict. `operation`, when
   * given, is inserted in the same transaction and named by the row.
   */
  insertCreating(v: NewVolume, operation?: NewOperation): { inserted: true; row: VolumeRow } | { inserted: false; row: VolumeRow } {
    return this.transaction(() => {
      const existing = this.getVolume(v.id);
      if (existing) return { inserted: false as const, row: existing };
      if (operation) this.insertOperation(operation);
      const at = this.now();
      this.sql(`INSERT INTO volumes (id, pool, tenant, kind, size_bytes, state, source_kind, source_id, source_remote, source_unmanaged, read_only,
        request_key, operation_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'creating', ?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(
        v.id, v.pool, v.tenant, v.kind, v.sizeBytes, v.source?.kind ?? null, v.source?.id ?? null,
        v.remoteSource ? JSON.stringify(v.remoteSource) : null, v.unmanagedSource ?? null, v.readOnly ? 1 : 0,
        v.requestKey, operation?.id ?? v.operationId ?? null, at, at);
      return { inserted: true as const, row: this.getVolume(v.id)! };
    });
  }

  /**
   * Moves a volume from `from` to `to` if it is still in `from`; false when it
   * is absent or another writer moved it first. Throws on a move the state
   * machine does not allow.
   */
  transitionVolume(id: string, from: ObjectState, to: ObjectState, changes: { cloneMethod?: string; sizeBytes?: number; error?: string; readOnly?: boolean } = {}): boolean {
    if (!canTransition(from, to)) throw new IllegalTransitionError(id, from, to);
    const result = this.sql(`UPDATE volumes SET state = ?, updated_at = ?,
        clone_method = COALESCE(?, clone_method), size_bytes = COALESCE(?, size_bytes),
        error = ?, read_only = COALESCE(?, read_only)
      WHERE id = ? AND state = ?`).run(
      to, this.now(), changes.cloneMethod ?? null, changes.sizeBytes ?? null, to === 'error' ? (changes.error ?? 'unknown error') : null,
      changes.readOnly === undefined ? null : changes.readOnly ? 1 : 0, id, from);
    return result.changes === 1;
  }

  /** Changes an available volume's size, read-only flag or owner (a transfer: its snapshots and exports follow, being judged by their volume's tenant). */
  updateVolume(id: string, changes: { sizeBytes?: number; readOnly?: boolean; tenant?: string }): boolean {
    const result = this.sql(`UPDATE volumes SET updated_at = ?, size_bytes = COALESCE(?, size_bytes),
      read_only = COALESCE(?, read_only), tenant = COALESCE(?, tenant) WHERE id = ? AND state = 'available'`).run(
      this.now(), changes.sizeBytes ?? null, changes.readOnly === undefined ? null : changes.readOnly ? 1 : 0, changes.tenant ?? null, id);
    return result.changes === 1;
  }

  /** Deletes the row of a volume whose backend object is gone (state `deleting`). */
  removeVolume(id: string): boolean {
    return this.sql(`DELETE FROM volumes WHERE id = ? AND state = 'deleting'`).run(id).changes === 1;
  }

  /**
   * Forgets a volume whose creation did not complete (state `creating`): the
   * backend guarantees no object was published under its name.
   */
  discardCreatingVolume(id: string): boolean {
    return this.sql(`DELETE FROM volumes WHERE id = ? AND state = 'creating'`).run(id).changes === 1;
  }

  /** Rows left in creating or deleting: what start-up must reconcile. */
  transitionalVolumes(): VolumeRow[] {
    const marks = TRANSITIONAL_STATES.map(() => '?').join(', ');
    return (this.sql(`SELECT * FROM volumes WHERE state IN (${marks}) ORDER BY created_at, id`).all(...TRANSITIONAL_STATES) as VolumeRecord[]).map(toVolume);
  }

  // --- snapshots (ids unique per agent) ---

  getSnapshot(volumeId: string, id: string): SnapshotRow | undefined {
    const r = this.sql('SELECT * FROM snapshots WHERE volume_id = ? AND id = ?').get(volumeId, id) as SnapshotRecord | undefined;
    return r && toSnapshot(r);
  }

  /** The snapshot with this id, whatever its volume. */
  findSnapshot(id: string): SnapshotRow | undefined {
    const r = this.sql('SELECT * FROM snapshots WHERE id = ?').get(id) as SnapshotRecord | undefined;
    return r && toSnapshot(r);
  }

  listSnapshots(volumeId?: string): SnapshotRow[] {
    const rows = volumeId === undefined
      ? this.sql('SELECT * FROM snapshots ORDER BY created_at, id').all()
      : this.sql('SELECT * FROM snapshots WHERE volume_id = ? ORDER BY created_at, id').all(volumeId);
    return (rows as SnapshotRecord[]).map(toSnapshot);
  }

  /**
   * Records the intent to make a snapshot, with its operation when given;
   * returns the existing row (of any volume) when the id is taken.
   */
  insertSnapshotCreating(s: NewSnapshot, operation?: NewOperation): { inserted: boolean; row: SnapshotRow } {
    return this.transaction(() => {
      const existing = this.findSnapshot(s.id);
      if (existing) return { inserted: false, row: existing };
      if (operation) this.insertOperation(operation);
      const at = this.now();
      this.sql(`INSERT INTO snapshots (volume_id, id, pool, size_bytes, state, operation_id, created_at, updated_at)
        VALUES (?, ?, ?, ?, 'creating', ?, ?, ?)`).run(s.volumeId, s.id, s.pool, s.sizeBytes, operation?.id ?? s.operationId ?? null, at, at);
      return { inserted: true, row: this.getSnapshot(s.volumeId, s.id)! };
    });
  }

  transitionSnapshot(volumeId: string, id: string, from: ObjectState, to: ObjectState, changes: { cloneMethod?: string; error?: string } = {}): boolean {
    if (!canTransition(from, to)) throw new IllegalTransitionError(`${volumeId}@${id}`, from, to);
    return this.sql(`UPDATE snapshots SET state = ?, updated_at = ?, clone_method = COALESCE(?, clone_method), error = ?
      WHERE volume_id = ? AND id = ? AND state = ?`).run(
      to, this.now(), changes.cloneMethod ?? null, to === 'error' ? (changes.error ?? 'unknown error') : null, volumeId, id, from).changes === 1;
  }

  discardCreatingSnapshot(volumeId: string, id: string): boolean {
    return this.sql(`DELETE FROM snapshots WHERE volume_id = ? AND id = ? AND state = 'creating'`).run(volumeId, id).changes === 1;
  }

  removeSnapshot(volumeId: string, id: string): boolean {
    return this.sql(`DELETE FROM snapshots WHERE volume_id = ? AND id = ? AND state = 'deleting'`).run(volumeId, id).changes === 1;
  }

  transitionalSnapshots(): SnapshotRow[] {
    const marks = TRANSITIONAL_STATES.map(() => '?').join(', ');
    return (this.sql(`SELECT * FROM snapshots WHERE state IN (${marks}) ORDER BY created_at, id`).all(...TRANSITIONAL_STATES) as SnapshotRecord[]).map(toSnapshot);
  }

  // --- images ---

  getImage(id: string): ImageRow | undefined {
    const r = this.sql('SELECT * FROM images WHERE id = ?').get(id) as ImageRecord | undefined;
    return r && toImage(r);
  }

  /** The image whose Image-Volume is `volumeId`. */
  imageOfVolume(volumeId: string): ImageRow | undefined {
    const r = this.sql('SELECT * FROM images WHERE volume_id = ?').get(volumeId) as ImageRecord | undefined;
    return r && toImage(r);
  }

  listImages(): ImageRow[] {
    return (this.sql('SELECT * FROM images ORDER BY created_at, id').all() as ImageRecord[]).map(toImage);
  }

  /** Records the intent to register an image; returns the existing row when the id is taken. */
  insertImageCreating(image: NewImage): { inserted: boolean; row: ImageRow } {
    return this.transaction(() => {
      const existing = this.getImage(image.id);
      if (existing) return { inserted: false, row: existing };
      const at = this.now();
      this.sql(`INSERT INTO images (id, volume_id, pool, tenant, visibility, internal, mode, source_volume, state, request_key,
        cached, last_used, created_at, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'creating', ?, ?, (SELECT COALESCE(MAX(last_used), 0) + 1 FROM images), ?, ?)`).run(
        image.id, image.volumeId, image.pool, image.tenant, image.visibility, image.internal ? 1 : 0, image.mode,
        image.sourceVolume ?? null, image.requestKey, image.cached ? 1 : 0, at, at);
      return { inserted: true, row: this.getImage(image.id)! };
    });
  }

  /** `cached: false` makes an upload meant for the image cache a plain image (no room was made for it). */
  transitionImage(id: string, from: ObjectState, to: ObjectState, changes: { error?: string; cached?: false } = {}): boolean {
    if (!canTransition(from, to)) throw new IllegalTransitionError(`image ${id}`, from, to);
    return this.sql(`UPDATE images SET state = ?, updated_at = ?, error = ?, cached = CASE WHEN ? THEN 0 ELSE cached END WHERE id = ? AND state = ?`).run(
      to, this.now(), to === 'error' ? (changes.error ?? 'unknown error') : null, changes.cached === false ? 1 : 0, id, from).changes === 1;
  }

  /**
   * Adoption's outcome in one transaction: the volume becomes the read-only
   * Image-Volume (in `tenant`) and the image becomes available.
   */
  completeAdoption(imageId: string, volumeId: string, tenant: string): boolean {
    return this.transaction(() => {
      const adopted = this.sql(`UPDATE volumes SET kind = 'image', read_only = 1, tenant = ?, updated_at = ?
        WHERE id = ? AND kind = 'volume' AND state = 'available'`).run(tenant, this.now(), volumeId).changes === 1;
      if (!adopted || !this.transitionImage(imageId, 'creating', 'available')) throw new Error(`image ${imageId}: volume ${volumeId} changed during adoption`);
      return true;
    });
  }

  /** Marks image `id` the most recently used (the cache's LRU order). */
  touchImage(id: string): boolean {
    return this.sql(`UPDATE images SET last_used = (SELECT MAX(last_used) + 1 FROM images) WHERE id = ?`).run(id).changes === 1;
  }

  /** The available cache entries of `pool`, least recently used first. */
  cacheEntries(pool: string): ImageRow[] {
    return (this.sql(`SELECT * FROM images WHERE pool = ? AND cached = 1 AND state = 'available' ORDER BY last_used, id`)
      .all(pool) as ImageRecord[]).map(toImage);
  }

  discardCreatingImage(id: string): boolean {
    return this.sql(`DELETE FROM images WHERE id = ? AND state = 'creating'`).run(id).changes === 1;
  }

  removeImage(id: string): boolean {
    return this.sql(`DELETE FROM images WHERE id = ? AND state = 'deleting'`).run(id).changes === 1;
  }

  transitionalImages(): ImageRow[] {
    const marks = TRANSITIONAL_STATES.map(() => '?').join(', ');
    return (this.sql(`SELECT * FROM images WHERE state IN (${marks}) ORDER BY created_at, id`).all(...TRANSITIONAL_STATES) as ImageRecord[]).map(toImage);
  }

  // --- operations ---

  insertOperation(op: NewOperation): OperationRow {
    const at = this.now();
    this.sql(`INSERT INTO operations (id, kind, target_id, tenant, state, total_bytes, created_at, updated_at)
      VALUES (?, ?, ?, ?, 'running', ?, ?, ?)`).run(op.id, op.kind, op.targetId, op.tenant, op.totalBytes, at, at);
    return this.getOperation(op.id)!;
  }

  getOperation(id: string): OperationRow | undefined {
    const r = this.sql('SELECT * FROM operations WHERE id = ?').get(id) as OperationRecord | undefined;
    return r && toOperation(r);
  }

  /** Progress of a running operation; an ended one keeps what it ended with. */
  recordProgress(id: string, doneBytes: number, totalBytes: number): void {
    this.sql(`UPDATE operations SET done_bytes = ?, total_bytes = ?, updated_at = ? WHERE id = ? AND state = 'running'`)
      .run(doneBytes, totalBytes, this.now(), id);
  }

  /**
   * Ends a running operation, with its final progress when given, and prunes
   * the table with the same write (one transaction on the writer thread): every running operation stays, and of
   * the ended ones the `keepFinishedOperations` that ended last (by
   * updated_at, the end time; rowid breaks ties), so the table never grows
   * past running + that many.
   */
  finishOperation(id: string, state: Exclude<OperationState, 'running'>, error?: { code: string; message: string },
    progress?: { doneBytes: number; totalBytes: number }): boolean {
    const ended = this.sql(`UPDATE operations SET state = ?, error = ?, error_code = ?, updated_at = ?,
        done_bytes = COALESCE(?, done_bytes), total_bytes = COALESCE(?, total_bytes) WHERE id = ? AND state = 'running'`)
      .run(state, error?.message ?? null, error?.code ?? null, this.now(), progress?.doneBytes ?? null, progress?.totalBytes ?? null, id).changes === 1;
    if (ended) this.pruneFinishedOperations();
    return ended;
  }

  /** Deletes the ended operations beyond the `keepFinishedOperations` that ended last. */
  private pruneFinishedOperations(): void {
    this.sql(`DELETE FROM operations WHERE rowid IN (SELECT rowid FROM operations WHERE state != 'running'
      ORDER BY updated_at DESC, rowid DESC LIMIT -1 OFFSET ?)`).run(this.keepFinishedOperations);
  }

  runningOperations(): OperationRow[] {
    return (this.sql(`SELECT * FROM operations WHERE state = 'running' ORDER BY created_at, id`).all() as OperationRecord[]).map(toOperation);
  }

  /** How many operations the catalog holds in each state. */
  countOperationsByState(): Record<string, number> {
    const rows = this.sql('SELECT state, COUNT(*) AS count FROM operations GROUP BY state').all() as Array<{ state: string; count: number }>;
    return Object.fromEntries(rows.map((row) => [row.state, row.count]));
  }

  /** Running operations and the `finished` most recent ended ones, newest first. */
  listOperations(finished = 100): OperationRow[] {
    return (this.sql(`SELECT * FROM operations WHERE state = 'running'
      UNION ALL SELECT * FROM (SELECT * FROM operations WHERE state != 'running' ORDER BY created_at DESC, id DESC LIMIT ?)
      ORDER BY created_at DESC, id DESC`).all(finished) as OperationRecord[]).map(toOperation);
  }

  // --- thin pools (src/pools/thin/ledger.ts) ---

  thinPool(pool: string): ThinPoolRecord | undefined {
    const r = this.sql('SELECT * FROM thin_pools WHERE pool = ?').get(pool) as ThinPoolDbRecord | undefined;
    return r && toThinPool(r);
  }

  thinDevices(pool: string): ThinDeviceRecord[] {
    return (this.sql('SELECT * FROM thin_devices WHERE pool = ? ORDER BY thin_id').all(pool) as ThinDeviceDbRecord[]).map(toThinDevice);
  }

  thinDevice(pool: string, name: string): ThinDeviceRecord | undefined {
    const r = this.sql('SELECT * FROM thin_devices WHERE pool = ? AND name = ?').get(pool, name) as ThinDeviceDbRecord | undefined;
    return r && toThinDevice(r);
  }

  recordThinPool(record: NewThinPool): void {
    const at = this.now();
    this.sql(`INSERT INTO thin_pools (pool, data_device, metadata_device, block_sectors, phase, transaction_id, next_thin_id, created_at, updated_at)
      VALUES (?, ?, ?, ?, 'formatting', 0, 0, ?, ?)`).run(record.pool, record.dataDevice, record.metadataDevice, record.blockSectors, at, at);
  }

  markThinPoolReady(pool: string): boolean {
    return this.sql(`UPDATE thin_pools SET phase = 'ready', updated_at = ? WHERE pool = ?`).run(this.now(), pool).changes === 1;
  }

  /** Records `change` as the pending change of `pool`, with a new thin id for a create or snapshot. */
  beginThinChange(pool: string, change: ThinChange): PendingThinChange {
    return this.transaction(() => {
      const record = this.thinPool(pool);
      if (!record) throw new ThinLedgerError(`thin pool ${pool} is not recorded`);
      if (record.pending) throw new ThinLedgerError(`thin pool ${pool}: a change is pending (${record.pending.op} of ${record.pending.name})`);
      const allocates = change.op !== 'delete';
      if (allocates && record.nextThinId > MAX_THIN_ID) throw new ThinLedgerError(`thin pool ${pool}: every thin id (24 bits) has been used`);
      const thinId = change.op === 'delete' ? change.thinId : record.nextThinId;
      const pending: PendingThinChange = { ...change, thinId, fromTransactionId: record.transactionId, toTransactionId: record.transactionId + 1 };
      this.sql(`UPDATE thin_pools SET pending = ?, next_thin_id = ?, updated_at = ? WHERE pool = ?`).run(
        JSON.stringify(pending), allocates ? thinId + 1 : record.nextThinId, this.now(), pool);
      return pending;
    });
  }

  /** The pending change's effect on the device rows, the pool's new transaction id, and no change pending: one commit. */
  commitThinChange(pool: string): void {
    this.transaction(() => {
      const pending = this.thinPool(pool)?.pending;
      if (!pending) throw new ThinLedgerError(`thin pool ${pool}: no change is pending`);
      if (pending.op === 'delete') {
        this.sql('DELETE FROM thin_devices WHERE pool = ? AND thin_id = ?').run(pool, pending.thinId);
      } else {
        // A revert: the replaced thin id keeps a row, under a name no object has, until it is deleted.
        if (pending.op === 'replace') this.sql('UPDATE thin_devices SET name = ? WHERE pool = ? AND thin_id = ?').run(retiredThinName(pending.replacedThinId), pool, pending.replacedThinId);
        this.sql(`INSERT INTO thin_devices (pool, name, thin_id, size_bytes, read_only, created_at) VALUES (?, ?, ?, ?, ?, ?)`).run(
          pool, pending.name, pending.thinId, pending.sizeBytes, pending.readOnly ? 1 : 0, this.now());
      }
      this.sql(`UPDATE thin_pools SET transaction_id = ?, pending = NULL, updated_at = ? WHERE pool = ?`).run(pending.toTransactionId, this.now(), pool);
    });
  }

  abandonThinChange(pool: string): boolean {
    return this.sql(`UPDATE thin_pools SET pending = NULL, updated_at = ? WHERE pool = ?`).run(this.now(), pool).changes === 1;
  }

  updateThinDevice(pool: string, name: string, changes: { sizeBytes?: number; readOnly?: boolean }): boolean {
    return this.sql(`UPDATE thin_devices SET size_bytes = COALESCE(?, size_bytes), read_only = COALESCE(?, read_only) WHERE pool = ? AND name = ?`).run(
      changes.sizeBytes ?? null, changes.readOnly === undefined ? null : changes.readOnly ? 1 : 0, pool, name).changes === 1;
  }

  // --- exports ---

  getExport(id: string): ExportRow | undefined {
    const r = this.sql('SELECT * FROM exports WHERE id = ?').get(id) as ExportRecord | undefined;
    return r && toExport(r);
  }

  listExports(): ExportRow[] {
    return (this.sql('SELECT * FROM exports ORDER BY created_at, id').all() as ExportRecord[]).map(toExport);
  }

  exportsOfVolume(volumeId: string): ExportRow[] {
    return (this.sql('SELECT * FROM exports WHERE volume_id = ? ORDER BY created_at, id').all(volumeId) as ExportRecord[]).map(toExport);
  }

  /** Records the intent to export an available volume; false when the volume is not available. */
  insertExportCreating(row: { id: string; volumeId: string; protocol: ExportProtocol; readOnly: boolean; directIo?: boolean }): boolean {
    return this.transaction(() => {
      if (this.getVolume(row.volumeId)?.state !== 'available') return false;
      const at = this.now();
      this.sql(`INSERT INTO exports (id, volume_id, protocol, read_only, direct_io, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'creating', ?, ?)`).run(
        row.id, row.volumeId, row.protocol, row.readOnly ? 1 : 0, row.directIo ? 1 : 0, at, at);
      return true;
    });
  }

  markExportAvailable(id: string, device?: string): boolean {
    return this.sql(`UPDATE exports SET state = 'available', device = COALESCE(?, device), updated_at = ? WHERE id = ? AND state = 'creating'`).run(
      device ?? null, this.now(), id).changes === 1;
  }

  /** An available block export attached again on another device (its recorded one was taken after a reboot). */
  moveExportDevice(id: string, device: string): boolean {
    return this.sql(`UPDATE exports SET device = ?, updated_at = ? WHERE id = ? AND state = 'available' AND protocol = 'block'`).run(device, this.now(), id).changes === 1;
  }

  markExportDeleting(id: string): boolean {
    return this.sql(`UPDATE exports SET state = 'deleting', updated_at = ? WHERE id = ? AND state != 'deleting'`).run(this.now(), id).changes === 1;
  }

  removeExport(id: string): boolean {
    return this.sql('DELETE FROM exports WHERE id = ?').run(id).changes === 1;
  }
}
