// The thin-pool device of a pool (`volagent-<pool>-pool`) over its data and
// metadata devices: the devices resolved (files bound to loop devices), the
// pool formatted at its first open, the device activated or taken over from
// a previous run, and afterwards its status line read and its messages sent.
//
// Kernel contract relied on (thin-provisioning.rst):
// - the pool formats its metadata device when the device's first 4 KiB are zero;
// - a table loaded into a device's inactive slot goes live at resume
//   (DM_DEV_SUSPEND without the suspend flag), so a live pool's length,
//   low-water mark and features can be changed under its thin devices.
import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';

import { native } from '../../native/binding.js';
import type { DmDeviceInfo, DmTarget } from '../../native/addon-types.js';
import type { ThinPoolConfig } from './backend.js';
import type { PoolDevice } from './block-device.js';
import { resolvePoolDevice } from './block-device.js';
import { createDevice, poolDmName, poolDmUuid } from './dm-devices.js';
import { detachLoop } from '../../devices/loop-device.js';
import type { DeviceNumber, ThinPoolStatus } from '../../devices/dm-thin.js';
import { parseThinPoolStatus, SECTOR_BYTES, thinPoolTarget } from '../../devices/dm-thin.js';
import { ignoring, ThinPoolError } from './errors.js';
import type { ThinLedger, ThinPoolRecord } from './ledger.js';

/** dm-thin metadata superblock: `magic` (le64) at byte 32 of block 0 (dm-thin-metadata.c THIN_SUPERBLOCK_MAGIC). */
const THIN_SUPERBLOCK_MAGIC = 27022010n;
const METADATA_HEAD_BYTES = 4096;

export interface PoolTargetOptions extends Pick<ThinPoolConfig, 'name' | 'dataDevice' | 'metadataDevice' | 'blockSizeBytes' | 'lowWaterPercent'> {
  errorIfNoSpace: boolean;
  ledger: ThinLedger;
}

export class PoolTarget {
  readonly name: string;
  readonly dmName: string;
  private readonly ledger: ThinLedger;
  private readonly blockBytes: number;
  /** Set by open(), as each is resolved. */
  data: PoolDevice | undefined;
  metadata: PoolDevice | undefined;
  /** The thin-pool device's number, which thin devices' tables name; set once it is active. */
  device: DeviceNumber | undefined;

  constructor(private readonly options: PoolTargetOptions) {
    this.name = options.name;
    this.ledger = options.ledger;
    this.blockBytes = options.blockSizeBytes;
    this.dmName = poolDmName(options.name);
  }

  /**
   * Resolves the two devices (binding files to loop devices), formats the
   * pool if the catalog has no record of it and activates the pool device.
   * Answers the pool's transaction id; a change left pending by a crash is
   * not settled yet.
   */
  async open(): Promise<number> {
    let record = this.ledger.pool(this.name);
    this.data = await resolvePoolDevice(this.options.dataDevice);
    this.metadata = await resolvePoolDevice(this.options.metadataDevice);
    if (this.data.device === this.metadata.device) throw new ThinPoolError(`data_device and metadata_device are the same device (${this.data.device})`);
    if (this.data.sizeBytes < this.blockBytes) throw new ThinPoolError(`data_device ${this.data.configured} holds ${this.data.sizeBytes} bytes, less than one ${this.blockBytes}-byte block`);
    const existing = await native.dmInfo(this.dmName).catch(ignoring<DmDeviceInfo>(['ENXIO']));
    if (!record) {
      if (existing) throw new ThinPoolError(`device-mapper device ${this.dmName} exists, but the catalog has no record of pool ${this.name}; refusing to format over it`);
      await this.refuseUsedMetadata();
      await this.ledger.recordPool({ pool: this.name, dataDevice: this.data.configured, metadataDevice: this.metadata.configured, blockSectors: this.blockBytes / SECTOR_BYTES });
      record = this.ledger.pool(this.name)!;
    }
    this.checkRecordMatches(record);
    if (record.phase === 'formatting' && !existing) await this.zeroMetadataHead();
    this.device = await this.activate(existing);
    const status = await this.status();
    if (status.state !== 'working') throw new ThinPoolError(`thin-pool ${this.dmName} reports ${status.state === 'failed' ? 'Fail' : 'Error'}; run thin_check on ${this.metadata.configured}`);
    if (record.phase === 'formatting') {
      if (status.transactionId !== 0) throw new ThinPoolError(`metadata device ${this.metadata.configured} holds a pool with transaction id ${status.transactionId}, not a new one`);
      await this.ledger.markPoolReady(this.name);
    }
    return status.transactionId;
  }

  /** Detaches the loop bindings open() made. The pool device, if made, holds them: those stay. */
  async detachNewLoops(): Promise<void> {
    for (const device of [this.data, this.metadata]) {
      if (device?.attachedNow) await detachLoop(device.node).catch(() => undefined);
    }
  }

  /** The pool's status line, parsed. */
  async status(): Promise<ThinPoolStatus> {
    const [target] = await native.dmTable(this.dmName);
    if (!target) throw new ThinPoolError(`thin-pool ${this.dmName} has no live table`);
    return parseThinPoolStatus(target.params);
  }

  /** A message to the pool (sector 0 of the pool device); thinPoolMessage spells them. */
  message(text: string): Promise<string> {
    return native.dmMessage(this.dmName, 0, text);
  }

  private checkRecordMatches(record: ThinPoolRecord): void {
    const configured = { dataDevice: this.data!.configured, metadataDevice: this.metadata!.configured, blockSectors: this.blockBytes / SECTOR_BYTES };
    for (const key of ['dataDevice', 'metadataDevice', 'blockSectors'] as const) {
      if (record[key] !== configured[key]) {
        throw new ThinPoolError(`configured ${key} ${configured[key]} differs from ${record[key]}, recorded in the catalog when the pool was formatted`);
      }
    }
  }

  /** A metadata device to format must start with 4 KiB of zeros; dm-thin metadata or anything else there is refused. */
  private async refuseUsedMetadata(): Promise<void> {
    const head = Buffer.alloc(METADATA_HEAD_BYTES);
    const handle = await open(this.metadata!.node, 'r');
    try {
      await handle.read(head, 0, head.length, 0);
    } finally {
      await handle.close();
    }
    if (head.every((byte) => byte === 0)) return;
    if (head.readBigUInt64LE(32) === THIN_SUPERBLOCK_MAGIC) {
      throw new ThinPoolError(`metadata device ${this.metadata!.configured} already holds dm-thin metadata of a pool this catalog does not know; refusing to format it (zero its first 4 KiB to reuse it)`);
    }
    throw new ThinPoolError(`metadata device ${this.metadata!.configured} is not empty (its first 4 KiB are not zero); refusing to format it`);
  }

  private async zeroMetadataHead(): Promise<void> {
    const handle = await open(this.metadata!.node, fsConstants.O_WRONLY);
    try {
      await handle.write(Buffer.alloc(METADATA_HEAD_BYTES), 0, METADATA_HEAD_BYTES, 0);
      await native.fsync(handle.fd, this.metadata!.node);
    } finally {
      await handle.close();
    }
  }

  private table(): DmTarget {
    const dataSectors = Math.floor(this.data!.sizeBytes / this.blockBytes) * (this.blockBytes / SECTOR_BYTES);
    const blockSectors = this.blockBytes / SECTOR_BYTES;
    return thinPoolTarget(this.metadata!.device, this.data!.device, dataSectors, {
      blockSectors,
      lowWaterBlocks: Math.ceil((dataSectors / blockSectors) * (this.options.lowWaterPercent / 100)),
      errorIfNoSpace: this.options.errorIfNoSpace,
      // Zeroing stays on: a partial write to a newly provisioned block must not expose another volume's old data.
      skipBlockZeroing: false,
    });
  }

  /**
   * Creates the pool device, or keeps the one a previous run left: its table
   * must name the same metadata and data devices and block size; a different
   * length, low-water mark or features (config changed, data device grown) is reloaded.
   */
  private async activate(existing: DmDeviceInfo | undefined): Promise<DeviceNumber> {
    const wanted = this.table();
    if (!existing) {
      const info = await createDevice(this.dmName, poolDmUuid(this.name), [wanted], false);
      return `${info.major}:${info.minor}`;
    }
    const [live] = existing.activeTable ? await native.dmTable(this.dmName, true) : [];
    const head = wanted.params.split(' ').slice(0, 3).join(' ');
    if (live && (live.type !== 'thin-pool' || live.params.split(' ').slice(0, 3).join(' ') !== head)) {
      throw new ThinPoolError(`device-mapper device ${this.dmName} has table "${live.type} ${live.params}", not one over ${head}`);
    }
    if (!live || live.length !== wanted.length || live.params !== wanted.params) {
      await native.dmLoad(this.dmName, [wanted]);
      await native.dmResume(this.dmName);
    } else if (existing.suspended) {
      await native.dmResume(this.dmName);
    }
    return `${existing.major}:${existing.minor}`;
  }
}
