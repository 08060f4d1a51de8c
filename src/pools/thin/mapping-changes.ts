// The changes a thin pool records in the catalog before the kernel sees them
// (ledger.ts): mapping changes, each bracketed by the ledger and settled at
// open from the pool's transaction id, and table changes of a thin device
// (size, read-only), recorded first and restored when the kernel refuses.
// They run one at a time, in the order they were asked for.
//
// Kernel contract relied on (thin-provisioning.rst):
// - `create_thin`, `create_snap` and `delete` change the mapping, and are
//   committed with the pool's next metadata commit; `set_transaction_id old new`
//   fails unless the pool's id is `old`. Every mapping change is paired with a
//   set_transaction_id and bracketed in the ledger (see ledger.ts);
// - `create_snap` needs its origin suspended while it runs if the origin is
//   active (in-flight writes drained, no new ones until resume);
// - a thin device's table can be reloaded with another length at any time
//   (resize); DM_DEV_SUSPEND (resume) swaps in the loaded table.
import { failpoint } from '../../common/failpoints.js';
import { native } from '../../native/binding.js';
import type { DmDeviceInfo } from '../../native/addon-types.js';
import { SECTOR_BYTES, thinPoolMessage, thinTarget } from '../../devices/dm-thin.js';
import { ignoring, ThinPoolError } from './errors.js';
import type { PendingThinChange, ThinChange, ThinLedger, ThinPoolRecord } from './ledger.js';
import { retiredThinName } from './ledger.js';
import type { PoolTarget } from './pool-target.js';
import type { ThinDevices } from './thin-devices.js';

export interface MappingChangesOptions {
  name: string;
  ledger: ThinLedger;
  warn?: (fields: Record<string, unknown>, message: string) => void;
}

export class MappingChanges {
  private readonly name: string;
  private readonly ledger: ThinLedger;
  /** Mapping changes, table loads and suspends run one at a time. */
  private serial: Promise<unknown> = Promise.resolve();

  constructor(private readonly target: PoolTarget, private readonly devices: ThinDevices, private readonly options: MappingChangesOptions) {
    this.name = options.name;
    this.ledger = options.ledger;
  }

  /** Resolves once the changes asked for so far have run. */
  async idle(): Promise<void> {
    await this.serial.catch(() => undefined);
  }

  /**
   * Settles the change a crash left pending, from the pool's transaction id:
   * at `to`, the pool made it and only the catalog commit is missing; at
   * `from`, the message may or may not have run: a create or snapshot is
   * undone (its id deleted if it exists), a delete is made again.
   */
  async settle(record: ThinPoolRecord, poolTransactionId: number): Promise<void> {
    const pending = record.pending;
    if (!pending) {
      if (poolTransactionId !== record.transactionId) {
        throw new ThinPoolError(`thin-pool transaction id is ${poolTransactionId}, the catalog recorded ${record.transactionId}: the catalog does not describe this pool`);
      }
      return;
    }
    if (poolTransactionId === pending.toTransactionId) {
      await this.ledger.commit(this.name);
      this.options.warn?.({ pool: this.name, change: pending.op, object: pending.name, thinId: pending.thinId }, 'thin pool: committed a change the pool had made before the agent stopped');
      return;
    }
    if (poolTransactionId !== pending.fromTransactionId) {
      throw new ThinPoolError(`thin-pool transaction id is ${poolTransactionId}; the pending ${pending.op} of ${pending.name} expected ${pending.fromTransactionId} or ${pending.toTransactionId}`);
    }
    await this.target.message(thinPoolMessage.delete(pending.thinId)).catch(ignoring(['ENODATA']));
    if (pending.op === 'delete') {
      await this.target.message(thinPoolMessage.setTransactionId(pending.fromTransactionId, pending.toTransactionId));
      await this.ledger.commit(this.name);
    } else {
      await this.ledger.abandon(this.name);
    }
    this.options.warn?.({ pool: this.name, change: pending.op, object: pending.name, thinId: pending.thinId },
      pending.op === 'delete' ? 'thin pool: finished a delete the agent stopped in' : 'thin pool: undid a create the agent stopped in');
  }

  /** A create or snapshot: the thin id made and committed, then activated. */
  async makeDevice(change: Extract<ThinChange, { op: 'create' | 'snapshot' }>): Promise<void> {
    this.devices.objectPath(change.name); // a name the pool cannot hold is refused before anything is recorded
    await this.serially(async () => {
      this.devices.refuseTaken(change.name);
      const pending = await this.changeMapping(change, (p) => p.op === 'snapshot' ? this.snapshotMessage(p) : this.target.message(thinPoolMessage.createThin(p.thinId)));
      const device = this.devices.record(change.name);
      if (!device || device.thinId !== pending.thinId) throw new ThinPoolError(`thin pool ${this.name}: ${change.name} is not recorded after its commit`);
      try {
        await this.devices.activate(device, true);
      } catch (error) {
        await this.devices.deactivate(device).catch(() => undefined);
        await this.changeMapping({ op: 'delete', name: device.name, thinId: device.thinId }, () => this.target.message(thinPoolMessage.delete(device.thinId)))
          .catch(() => undefined); // left for start-up: the row is still `creating` in the domain's catalog
        throw error;
      }
    });
  }

  /**
   * A snapshot of `originThinId` becomes object `name` in one commit
   * (`replace`); `name` is activated on the new thin id, and the replaced
   * one, recorded as retired, is deleted (or left for the next open).
   */
  async replace(name: string, originThinId: number): Promise<void> {
    await this.serially(async () => {
      const replaced = this.devices.record(name)!;
      await this.changeMapping({ op: 'replace', name, sizeBytes: replaced.sizeBytes, readOnly: false, originThinId, replacedThinId: replaced.thinId },
        (p) => this.snapshotMessage(p as PendingThinChange & { op: 'replace' }));
      failpoint('thin.revert-committed');
      await this.devices.activate(this.devices.record(name)!, true);
      await this.retire(replaced.thinId).catch((error: unknown) => {
        this.options.warn?.({ pool: this.name, volume: name, thinId: replaced.thinId, error: (error as Error).message }, 'thin pool: the thin id a revert replaced is deleted at the next start');
      });
    });
  }

  /** Deactivates and deletes a thin id recorded as retired (EBUSY while its device is held open). */
  async retire(thinId: number): Promise<void> {
    await native.dmRemove(this.devices.dmName(thinId)).catch(ignoring(['ENXIO']));
    await this.changeMapping({ op: 'delete', name: retiredThinName(thinId), thinId }, (pending) => this.target.message(thinPoolMessage.delete(pending.thinId)));
  }

  /** Deactivates the device (EBUSY while something holds it open), then deletes its thin id. */
  async remove(name: string): Promise<void> {
    await this.serially(async () => {
      const device = this.devices.record(name);
      if (!device) return;
      await this.devices.deactivate(device);
      await this.changeMapping({ op: 'delete', name, thinId: device.thinId }, (pending) => this.target.message(thinPoolMessage.delete(pending.thinId)));
    });
  }

  /** Reloads a device's table with a new size or read-only flag, recorded in the catalog first. */
  async setTable(name: string, changes: { sizeBytes?: number; readOnly?: boolean }): Promise<void> {
    await this.serially(async () => {
      const before = this.devices.record(name)!;
      await this.ledger.updateDevice(this.name, name, changes);
      const device = this.devices.record(name)!;
      const dmName = this.devices.dmName(device.thinId);
      try {
        await native.dmLoad(dmName, [thinTarget(this.target.device!, device.thinId, device.sizeBytes / SECTOR_BYTES)], device.readOnly);
        failpoint('thin.table-loaded'); // the new table inactive: start-up activation loads the catalog's again
        await native.dmResume(dmName);
        failpoint('thin.table-resumed');
      } catch (error) {
        await this.ledger.updateDevice(this.name, name, { sizeBytes: before.sizeBytes, readOnly: before.readOnly }).catch(() => undefined);
        throw error;
      }
    });
  }

  /** `create_snap` with the origin suspended (if active) and resumed on every path. */
  private async snapshotMessage(pending: PendingThinChange & { op: 'snapshot' | 'replace' }): Promise<void> {
    const origin = this.devices.dmName(pending.originThinId);
    // ENXIO: the origin is not active, and needs no suspend.
    const suspended = (await native.dmSuspend(origin).catch(ignoring<DmDeviceInfo>(['ENXIO']))) !== undefined;
    try {
      await this.target.message(thinPoolMessage.createSnap(pending.thinId, pending.originThinId));
    } finally {
      if (suspended) await native.dmResume(origin);
    }
  }

  /**
   * One mapping change under the ledger's bracket: recorded, sent, paired
   * with set_transaction_id, committed. A message the pool refused changed
   * nothing and is abandoned; after the mapping changed, a failed
   * set_transaction_id is undone (create) or left pending for start-up.
   */
  private async changeMapping(change: ThinChange, send: (pending: PendingThinChange) => Promise<unknown>): Promise<PendingThinChange> {
    const pending = await this.ledger.begin(this.name, change);
    failpoint('thin.after-begin');
    try {
      await send(pending);
    } catch (error) {
      await this.ledger.abandon(this.name);
      throw error;
    }
    failpoint('thin.after-message');
    try {
      await this.target.message(thinPoolMessage.setTransactionId(pending.fromTransactionId, pending.toTransactionId));
    } catch (error) {
      if (pending.op !== 'delete') {
        await this.target.message(thinPoolMessage.delete(pending.thinId))
          .then(() => this.ledger.abandon(this.name))
          .catch(() => undefined);
      }
      throw error;
    }
    failpoint('thin.before-commit');
    await this.ledger.commit(this.name);
    failpoint('thin.after-commit');
    return pending;
  }

  private serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.serial.then(fn, fn);
    this.serial = run.catch(() => undefined);
    return run;
  }
}
