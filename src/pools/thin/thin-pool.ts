// The `thin` backend (docs/design.md "Pools"): an agent-owned dm-thin pool on a
// data device and a metadata device, driven by device-mapper ioctls through
// the addon. Each object is a thin device: its thin id and size are kept in
// the catalog (ledger.ts), and while the agent knows it, it is active as the
// device-mapper device `volagent-<pool>-<thin id>` with a node of its own at
// `<device dir>/<pool>/<name>` (made by the agent: no udev needed).
//
// ThinPool is the backend's Pool: it checks and runs the object operations
// and composes the rooms that do the rest:
//   pool-target.ts      the thin-pool device: its data and metadata devices,
//                       format, activation, its status line and messages;
//   thin-devices.ts     the objects' thin devices: names, nodes, activation,
//                       temporaries;
//   mapping-changes.ts  what the ledger records before the kernel sees it
//                       (create_thin, create_snap, delete, table changes), in
//                       order, and the settling of a pending change at open;
//   pool-health.ts      capacity, health, the low-water warning, the refusal
//                       of new objects when full;
//   ../dm-thin-allocation.ts  which blocks hold data, from a held metadata snapshot.
// Beneath them: dm-thin.ts (the kernel's tables, messages and status lines),
// dm-devices.ts (the agent's device-mapper names), thin-metadata.ts (the
// metadata's mapping tree), ledger.ts (what the catalog keeps) and
// block-device.ts (the backing devices).
import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';

import { throwIfAborted } from '../../common/abort.js';
import { native } from '../../native/binding.js';
import type { DmDeviceInfo, DmTarget } from '../../native/addon-types.js';
import { systemError } from '../../native/system-error.js';
import type {
  AllocationExtent, CloneOutcome, CloneRequest, ForeignObject, ObjectInfo, ObjectSink, Pool, PoolCapabilities, PoolCapacity, PoolHealth,
  PopulateOutcome, PopulateRequest, ReceiveOutcome, ReceiveRequest,
} from '../pool.js';
import { copyIntoZeroedDevice, sinkOf, UnalignedSizeError } from '../pool.js';
import type { ThinPoolConfig } from './backend.js';
import { writeSparse } from '../sparse-writer.js';
import { AllocationReader } from '../dm-thin-allocation.js';
import { parseThinStatus, SECTOR_BYTES } from '../../devices/dm-thin.js';
import { ignoring } from './errors.js';
import type { ThinLedger } from './ledger.js';
import { isRetiredThinName } from './ledger.js';
import { MappingChanges } from './mapping-changes.js';
import { HealthWatch } from './pool-health.js';
import { PoolTarget } from './pool-target.js';
import { ThinDevices } from './thin-devices.js';

/** Provisional size of a thin device receiving a stream of unknown length: virtual, it costs nothing. */
const RECEIVE_PROVISIONAL_BYTES = 64 * 2 ** 40;

export interface ThinPoolOptions extends Pick<ThinPoolConfig, 'name' | 'dataDevice' | 'metadataDevice' | 'blockSizeBytes' | 'lowWaterPercent'> {
  /** Free data or metadata below this percentage refuses new objects (ENOSPC). */
  minFreePercent: number;
  errorIfNoSpace: boolean;
  /** Device nodes go in `<deviceDir>/<pool>/`. */
  deviceDir: string;
  ledger: ThinLedger;
  warn?: (fields: Record<string, unknown>, message: string) => void;
}

export class ThinPool implements Pool {
  readonly name: string;
  readonly backend = 'thin';
  readonly objectKind = 'block' as const;
  /** A thin device is named from its create on; a copy into it is made after. */
  readonly publishesWhole = false;
  readonly poolDmName: string;
  private readonly ledger: ThinLedger;
  private readonly blockBytes: number;
  private readonly target: PoolTarget;
  private readonly healthWatch: HealthWatch;
  private readonly devices: ThinDevices;
  private readonly changes: MappingChanges;
  private readonly allocationReader: AllocationReader;

  constructor(private readonly options: ThinPoolOptions) {
    this.name = options.name;
    this.ledger = options.ledger;
    this.blockBytes = options.blockSizeBytes;
    this.target = new PoolTarget(options);
    this.poolDmName = this.target.dmName;
    this.healthWatch = new HealthWatch(this.target, options);
    this.devices = new ThinDevices(this.target, options);
    this.changes = new MappingChanges(this.target, this.devices, options);
    const target = this.target;
    this.allocationReader = new AllocationReader({
      dmName: target.dmName, message: (text) => target.message(text), status: () => target.status(),
      metadataNode: async () => target.metadata!.node,
    }, options);
  }

  // --- open and close ---

  /**
   * Resolves the two devices (binding files to loop devices), formats the
   * pool if the catalog has no record of it, activates the pool device,
   * settles a change left pending by a crash, and activates every thin device.
   */
  async open(): Promise<void> {
    try {
      await this.openDevices();
    } catch (error) {
      // A start-up that fails leaves no loop binding it made behind.
      await this.target.detachNewLoops();
      throw error;
    }
  }

  private async openDevices(): Promise<void> {
    const transactionId = await this.target.open();
    await this.changes.settle(this.ledger.pool(this.name)!, transactionId);
    await this.devices.makeNodeDir();
    for (const device of this.ledger.devices(this.name).filter((d) => isRetiredThinName(d.name))) {
      await this.changes.retire(device.thinId).catch((error: unknown) => {
        this.options.warn?.({ pool: this.name, thinId: device.thinId, error: (error as Error).message }, 'thin pool: a thin id replaced by a revert could not be deleted yet');
      });
    }
    for (const device of this.devices.objects()) await this.devices.activate(device);
    await this.devices.removeStrayNodes();
    await this.healthWatch.start();
  }

  /** Stops the health checks. Devices stay active: exports and guests keep using them while the agent restarts. */
  async close(): Promise<void> {
    this.healthWatch.stop();
    await this.changes.idle();
    await this.allocationReader.close();
  }

  // --- objects ---

  capabilities(): PoolCapabilities {
    return { reflink: true, constantTimeClone: true, sizeAlignmentBytes: this.blockBytes };
  }

  capacity(): Promise<PoolCapacity> {
    return this.healthWatch.capacity();
  }

  health(): Promise<PoolHealth> {
    return this.healthWatch.health();
  }

  async create(name: string, sizeBytes: number): Promise<void> {
    this.checkSize(sizeBytes);
    this.devices.refuseTaken(name);
    await this.healthWatch.refuseWhenFull();
    await this.changes.makeDevice({ op: 'create', name, sizeBytes, readOnly: false });
  }

  async clone(source: string, target: string, request: CloneRequest = {}): Promise<CloneOutcome> {
    const origin = this.devices.record(source);
    if (!origin) throw systemError('ENOENT', 'create_snap', this.objectPath(source));
    const sizeBytes = request.sizeBytes ?? origin.sizeBytes;
    if (sizeBytes < origin.sizeBytes) throw systemError('EINVAL', 'create_snap', this.objectPath(target));
    this.checkSize(sizeBytes);
    this.devices.refuseTaken(target);
    throwIfAborted(request.signal);
    await this.healthWatch.refuseWhenFull();
    await this.changes.makeDevice({ op: 'snapshot', name: target, sizeBytes, readOnly: request.readOnly ?? false, originThinId: origin.thinId });
    return { method: 'thin_snapshot', bytesCopied: 0 };
  }

  /**
   * A new thin device sized to the source (or `sizeBytes`), into which the
   * source's data is written: a fresh thin device reads as zeros, so holes,
   * unprovisioned blocks of a thin source and all-zero blocks are not
   * written and stay unprovisioned. Another pool never shares blocks with
   * this one, so this is always a copy.
   */
  async cloneFrom(source: ForeignObject, target: string, request: CloneRequest = {}): Promise<CloneOutcome> {
    const sizeBytes = request.sizeBytes ?? source.sizeBytes;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < source.sizeBytes) throw systemError('EINVAL', 'clone', source.path, this.objectPath(target));
    this.checkSize(sizeBytes);
    this.devices.refuseTaken(target);
    throwIfAborted(request.signal);
    await this.healthWatch.refuseWhenFull();
    await this.changes.makeDevice({ op: 'create', name: target, sizeBytes, readOnly: false });
    const node = this.objectPath(target);
    try {
      const outcome = await copyIntoZeroedDevice(source, node, request);
      throwIfAborted(request.signal);
      if (request.readOnly) await this.changes.setTable(target, { readOnly: true });
      return outcome;
    } catch (error) {
      const cause = await this.healthWatch.writeFailureCause(error);
      await this.remove(target).catch(() => undefined);
      throw cause;
    }
  }

  sharesBlocksWith(): boolean {
    return false;
  }

  async receive(name: string, data: AsyncIterable<Uint8Array>, request: ReceiveRequest = {}): Promise<ReceiveOutcome> {
    this.devices.refuseTaken(name);
    await this.healthWatch.refuseWhenFull();
    const provisional = roundUp(Math.min(request.maxBytes ?? RECEIVE_PROVISIONAL_BYTES, RECEIVE_PROVISIONAL_BYTES), this.blockBytes) || this.blockBytes;
    await this.changes.makeDevice({ op: 'create', name, sizeBytes: provisional, readOnly: false });
    const node = this.objectPath(name);
    try {
      // O_EXCL on a block device: an exclusive open, so nothing mounts or opens it exclusively meanwhile.
      const handle = await open(node, fsConstants.O_WRONLY | fsConstants.O_EXCL);
      let outcome: ReceiveOutcome;
      try {
        outcome = await writeSparse(handle.fd, node, data, {
          ...(request.maxBytes !== undefined ? { maxBytes: request.maxBytes } : {}),
          ...(request.onProgress ? { onProgress: request.onProgress } : {}),
        });
        this.checkSize(outcome.sizeBytes);
        await native.fsync(handle.fd, node); // a flush: the pool commits its metadata, the data is on the data device
      } finally {
        await handle.close();
      }
      await this.changes.setTable(name, { sizeBytes: outcome.sizeBytes, readOnly: request.readOnly ?? false });
      return outcome;
    } catch (error) {
      const cause = await this.healthWatch.writeFailureCause(error);
      await this.remove(name).catch(() => undefined);
      throw cause;
    }
  }

  /** A new thin device written through its node: only the blocks written with data are provisioned. */
  async populate(name: string, sizeBytes: number, fill: (sink: ObjectSink) => Promise<void>, request: PopulateRequest = {}): Promise<PopulateOutcome> {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw systemError('EINVAL', 'populate', this.objectPath(name));
    this.checkSize(sizeBytes);
    this.devices.refuseTaken(name);
    throwIfAborted(request.signal);
    await this.healthWatch.refuseWhenFull();
    await this.changes.makeDevice({ op: 'create', name, sizeBytes, readOnly: false });
    const node = this.objectPath(name);
    try {
      let bytesWritten = 0;
      // O_EXCL on a block device: an exclusive open, so nothing mounts or opens it exclusively meanwhile.
      const handle = await open(node, fsConstants.O_WRONLY | fsConstants.O_EXCL);
      try {
        await fill(sinkOf(handle.fd, node, sizeBytes, (written) => { bytesWritten += written; }));
        throwIfAborted(request.signal);
        await native.fsync(handle.fd, node); // a flush: the pool commits its metadata, the data is on the data device
      } finally {
        await handle.close();
      }
      if (request.readOnly) await this.changes.setTable(name, { readOnly: true });
      return { bytesWritten };
    } catch (error) {
      const cause = await this.healthWatch.writeFailureCause(error);
      await this.remove(name).catch(() => undefined);
      throw cause;
    }
  }

  /**
   * A new thin snapshot of `source`, sized as `name`, becomes `name` in one
   * ledger commit (`replace`: recorded before create_snap, so open settles a
   * crash from the transaction id); the node then names the new device, and
   * the replaced thin id, kept as retired, is deleted (left for the next
   * open when its device is still held).
   */
  async revert(name: string, source: string): Promise<CloneOutcome> {
    const device = this.devices.record(name);
    const origin = this.devices.record(source);
    if (!device) throw systemError('ENOENT', 'create_snap', this.objectPath(name));
    if (!origin) throw systemError('ENOENT', 'create_snap', this.objectPath(source));
    if (device.readOnly) throw systemError('EPERM', 'revert', this.objectPath(name));
    if (origin.sizeBytes > device.sizeBytes) throw systemError('EINVAL', 'revert', this.objectPath(name));
    await this.healthWatch.refuseWhenFull();
    await this.changes.replace(name, origin.thinId);
    return { method: 'thin_snapshot', bytesCopied: 0 };
  }

  async resize(name: string, sizeBytes: number): Promise<void> {
    const device = this.devices.record(name);
    if (!device) throw systemError('ENOENT', 'resize', this.objectPath(name));
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < device.sizeBytes) throw systemError('EINVAL', 'resize', this.objectPath(name));
    this.checkSize(sizeBytes);
    if (sizeBytes === device.sizeBytes) return;
    if (device.readOnly) throw systemError('EPERM', 'resize', this.objectPath(name));
    await this.changes.setTable(name, { sizeBytes });
  }

  async setReadOnly(name: string, readOnly: boolean): Promise<void> {
    if (!this.devices.record(name)) throw systemError('ENOENT', 'open', this.objectPath(name));
    await this.changes.setTable(name, { readOnly });
  }

  /** Deactivates the device (EBUSY while something holds it open), then deletes its thin id. */
  remove(name: string): Promise<void> {
    return this.changes.remove(name);
  }

  async inUse(name: string): Promise<boolean> {
    const device = this.devices.record(name);
    if (!device) return false;
    const info = await native.dmInfo(this.devices.dmName(device.thinId)).catch(ignoring<DmDeviceInfo>(['ENXIO']));
    return (info?.openCount ?? 0) > 0;
  }

  /** See AllocationReader.allocation. */
  async allocation(name: string, offset: number, length: number): Promise<AllocationExtent[]> {
    const device = this.devices.record(name);
    if (!device) throw systemError('ENOENT', 'allocation', this.objectPath(name));
    return this.allocationReader.allocation(device, offset, length);
  }

  async stat(name: string): Promise<ObjectInfo | undefined> {
    const device = this.devices.record(name);
    if (!device) return undefined;
    const [target] = await native.dmTable(this.devices.dmName(device.thinId)).catch(ignoring<DmTarget[]>(['ENXIO'])) ?? [];
    const status = target ? parseThinStatus(target.params) : undefined;
    const allocatedBytes = status?.state === 'working' ? status.mappedSectors * SECTOR_BYTES : 0;
    return { sizeBytes: device.sizeBytes, allocatedBytes, readOnly: device.readOnly };
  }

  async list(): Promise<string[]> {
    return this.devices.objects().map((d) => d.name).sort();
  }

  /** Device-mapper devices of this pool whose thin id the catalog does not hold (left by an interrupted run). */
  listTemporaries(): Promise<string[]> {
    return this.devices.listTemporaries();
  }

  removeTemporary(temporary: string): Promise<void> {
    return this.devices.removeTemporary(temporary);
  }

  /** `<device dir>/<pool>/<name>`; EINVAL for a name outside OBJECT_NAME, ENAMETOOLONG past NAME_MAX. */
  objectPath(name: string): string {
    return this.devices.objectPath(name);
  }

  // --- checks ---

  private checkSize(sizeBytes: number): void {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % this.blockBytes !== 0) throw new UnalignedSizeError(this.name, sizeBytes, this.blockBytes);
  }
}

function roundUp(value: number, unit: number): number {
  return Math.ceil(value / unit) * unit;
}
