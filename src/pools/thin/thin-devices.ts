// The thin devices of a pool's objects: while the catalog holds a thin id for
// an object, the id is active as the device-mapper device
// `volagent-<pool>-<thin id>` (dm-devices.ts) with a node of its own at
// `<device dir>/<pool>/<name>` (made by the agent: no udev needed).
//
// Kernel contract relied on (thin-provisioning.rst): a thin device's table
// `thin <pool dev> <thin id>` names the pool by major:minor; a table loaded
// into the inactive slot (another length, read-only or not) goes live at
// resume (DM_DEV_SUSPEND without the suspend flag), which also resumes a
// device left suspended. Removing the device (DM_DEV_REMOVE) leaves its thin
// id and data in the pool; it fails with EBUSY while the device is open.
import { mkdir, readdir, unlink } from 'node:fs/promises';
import path from 'node:path';

import { native } from '../../native/binding.js';
import type { DmDeviceInfo } from '../../native/addon-types.js';
import { systemError } from '../../native/system-error.js';
import { isObjectName } from '../pool.js';
import { ensureDeviceNode } from './block-device.js';
import { createDevice, isThinDmName, thinDmName, thinDmUuid } from './dm-devices.js';
import { SECTOR_BYTES, thinTarget } from '../../devices/dm-thin.js';
import { ignoring } from './errors.js';
import type { ThinDeviceRecord, ThinLedger } from './ledger.js';
import { isRetiredThinName } from './ledger.js';
import type { PoolTarget } from './pool-target.js';

const NAME_MAX = 255;

export interface ThinDevicesOptions {
  name: string;
  /** Device nodes go in `<deviceDir>/<pool>/`. */
  deviceDir: string;
  ledger: ThinLedger;
}

export class ThinDevices {
  private readonly name: string;
  private readonly ledger: ThinLedger;
  private readonly nodeDir: string;

  constructor(private readonly target: PoolTarget, options: ThinDevicesOptions) {
    this.name = options.name;
    this.ledger = options.ledger;
    this.nodeDir = path.join(path.resolve(options.deviceDir), options.name);
  }

  /** The catalog's record of object `name`. */
  record(name: string): ThinDeviceRecord | undefined {
    return this.ledger.device(this.name, name);
  }

  /** The ledger's devices that are objects (not thin ids retired by a revert, waiting to be deleted). */
  objects(): ThinDeviceRecord[] {
    return this.ledger.devices(this.name).filter((d) => !isRetiredThinName(d.name));
  }

  dmName(thinId: number): string {
    return thinDmName(this.name, thinId);
  }

  /** `<device dir>/<pool>/<name>`; EINVAL for a name outside OBJECT_NAME, ENAMETOOLONG past NAME_MAX. */
  objectPath(name: string): string {
    if (typeof name !== 'string' || !isObjectName(name)) throw systemError('EINVAL', 'open', String(name));
    if (Buffer.byteLength(name) > NAME_MAX) throw systemError('ENAMETOOLONG', 'open', path.join(this.nodeDir, name));
    return path.join(this.nodeDir, name);
  }

  refuseTaken(name: string): void {
    if (this.record(name)) throw systemError('EEXIST', 'create_thin', this.objectPath(name));
  }

  async makeNodeDir(): Promise<void> {
    await mkdir(this.nodeDir, { recursive: true, mode: 0o700 });
  }

  /**
   * Makes `device` active with the catalog's table and gives it its node. A
   * device left suspended (a crash in the middle of a snapshot) is resumed.
   * `fresh`: the thin id was just made, so no device can exist for it yet.
   */
  async activate(device: ThinDeviceRecord, fresh = false): Promise<void> {
    const dmName = this.dmName(device.thinId);
    const wanted = thinTarget(this.target.device!, device.thinId, device.sizeBytes / SECTOR_BYTES);
    let info = fresh ? undefined : await native.dmInfo(dmName).catch(ignoring<DmDeviceInfo>(['ENXIO']));
    if (!info) {
      info = await createDevice(dmName, thinDmUuid(this.name, device.thinId), [wanted], device.readOnly);
    } else {
      const [live] = info.activeTable ? await native.dmTable(dmName, true) : [];
      if (!live || live.type !== wanted.type || live.length !== wanted.length || live.params !== wanted.params || info.readOnly !== device.readOnly) {
        await native.dmLoad(dmName, [wanted], device.readOnly);
        info = await native.dmResume(dmName);
      } else if (info.suspended) {
        info = await native.dmResume(dmName);
      }
    }
    await ensureDeviceNode(this.objectPath(device.name), info.major, info.minor);
  }

  async deactivate(device: ThinDeviceRecord): Promise<void> {
    await native.dmRemove(this.dmName(device.thinId)).catch(ignoring(['ENXIO']));
    await unlink(this.objectPath(device.name)).catch(ignoring(['ENOENT']));
  }

  /** Nodes in the pool's node directory that name no object (left by an interrupted remove). */
  async removeStrayNodes(): Promise<void> {
    const known = new Set(this.objects().map((d) => d.name));
    for (const entry of await readdir(this.nodeDir)) {
      if (!known.has(entry)) await unlink(path.join(this.nodeDir, entry)).catch(ignoring(['ENOENT']));
    }
  }

  /** Device-mapper devices of this pool whose thin id the catalog does not hold (left by an interrupted run). */
  async listTemporaries(): Promise<string[]> {
    const known = new Set(this.ledger.devices(this.name).map((d) => this.dmName(d.thinId)));
    return (await native.dmListDevices()).map((d) => d.name).filter((n) => isThinDmName(this.name, n) && !known.has(n)).sort();
  }

  async removeTemporary(temporary: string): Promise<void> {
    if (!(await this.listTemporaries()).includes(temporary)) throw systemError('EINVAL', 'DM_DEV_REMOVE', temporary);
    await native.dmRemove(temporary).catch(ignoring(['ENXIO']));
  }
}
