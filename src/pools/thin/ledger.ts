// What a thin pool keeps durable outside the kernel (docs/design.md "Pools":
// thin device ids are allocated by the catalog). dm-thin stores the mapping
// of each thin id, but not which object an id holds, nor its size; and its
// messages are not transactional with the catalog. So every message that
// changes the mapping is bracketed (the technique of Docker's devmapper driver):
//
//   begin:   the change and the transaction id it will leave (current + 1)
//            are recorded as the pool's pending change, durably;
//   message: create_thin / create_snap / delete, then
//            set_transaction_id current current+1;
//   commit:  the change's effect on the device rows, the new transaction id
//            and the end of the pending change, in one catalog transaction.
//
// At open, the pool's transaction id says how far a pending change got:
// equal to the recorded one, the message may or may not have run (a create
// is undone, a delete done again); one more, the message ran and only the
// commit is missing.
//
// The catalog implements this interface (src/catalog/pool-ledger.ts); reads
// are synchronous, writes resolve once durable.

export type ThinPoolPhase = 'formatting' | 'ready';

export interface ThinPoolRecord {
  pool: string;
  dataDevice: string;
  metadataDevice: string;
  blockSectors: number;
  /** `formatting`: recorded before the metadata device is zeroed; `ready` once the kernel formatted it. */
  phase: ThinPoolPhase;
  /** The pool's transaction id after the last committed change. */
  transactionId: number;
  /** Thin ids are never reused: an id a crash may have left in the pool is never handed out again. */
  nextThinId: number;
  pending?: PendingThinChange;
}

export type ThinChange =
  | { op: 'create'; name: string; sizeBytes: number; readOnly: boolean }
  | { op: 'snapshot'; name: string; sizeBytes: number; readOnly: boolean; originThinId: number }
  | { op: 'delete'; name: string; thinId: number }
  /**
   * A revert: a snapshot of `originThinId` becomes object `name` in one
   * commit, and the thin id it held (`replacedThinId`) stays recorded under
   * `retiredThinName(replacedThinId)` until it is deleted (at once, or at
   * the next open).
   */
  | { op: 'replace'; name: string; sizeBytes: number; readOnly: boolean; originThinId: number; replacedThinId: number };

/** A change in flight: what it is, the thin id it uses and the transaction ids it moves between. */
export type PendingThinChange = ThinChange & { thinId: number; fromTransactionId: number; toTransactionId: number };

/** The name a replaced thin id is kept under until deleted: never an object name (`~` is outside OBJECT_NAME). */
export function retiredThinName(thinId: number): string {
  return `~retired-${thinId}`;
}

export function isRetiredThinName(name: string): boolean {
  return name.startsWith('~retired-');
}

export interface ThinDeviceRecord {
  pool: string;
  name: string;
  thinId: number;
  sizeBytes: number;
  readOnly: boolean;
}

export interface NewThinPool {
  pool: string;
  dataDevice: string;
  metadataDevice: string;
  blockSectors: number;
}

export interface ThinLedger {
  pool(pool: string): ThinPoolRecord | undefined;
  devices(pool: string): ThinDeviceRecord[];
  device(pool: string, name: string): ThinDeviceRecord | undefined;
  /** Records a pool about to be formatted (phase `formatting`, transaction id 0); EEXIST-like error when recorded. */
  recordPool(record: NewThinPool): Promise<void>;
  markPoolReady(pool: string): Promise<void>;
  /** Records `change` as the pool's pending change; a create or snapshot gets a new thin id. Fails when a change is pending. */
  begin(pool: string, change: ThinChange): Promise<PendingThinChange>;
  /** Applies the pending change to the device rows and advances the transaction id. */
  commit(pool: string): Promise<void>;
  /** Forgets the pending change (it was undone, or never reached the pool). */
  abandon(pool: string): Promise<void>;
  updateDevice(pool: string, name: string, changes: { sizeBytes?: number; readOnly?: boolean }): Promise<void>;
}
