// What the kernel says of an lvm pool's active LVs and of its thin pool, read
// through device-mapper (DM_DEV_STATUS, DM_TABLE_STATUS) without running an
// lvm2 process. Only reads: every change goes through lvm2's commands.
//
// Contract relied on (libdm's dm_build_dm_name and lvm2's activation code):
// - an active LV is the device-mapper device `<vg>-<lv>`, each '-' within
//   either name doubled, with a uuid `LVM-<vg uuid><lv uuid>`;
// - an active thin LV's live table is one `thin <pool dev> <thin id>` target;
// - an active thin pool with thin LVs is the `thin-pool` target of
//   `<vg>-<pool>-tpool` (lvm2 adds the `-tpool` layer once the pool is used;
//   before that `<vg>-<pool>` itself may carry the target);
// - lvm2 loads an LV whose permission is `r` with DM_READONLY_FLAG, and
//   lv_device_open is the device's open count being above zero.
import { readFile } from 'node:fs/promises';

import { native } from '../../native/binding.js';
import { isSystemError } from '../../native/system-error.js';
import type { DeviceNumber, ThinPoolStatus } from '../../devices/dm-thin.js';
import { parseThinPoolStatus, parseThinStatus, SECTOR_BYTES } from '../../devices/dm-thin.js';

const LVM_UUID_PREFIX = 'LVM-';

/** The device-mapper name lvm2 gives `vg/lv` (with a layer suffix such as `tpool`). */
export function lvDmName(vg: string, lv: string, layer?: string): string {
  return [vg, lv, ...(layer ? [layer] : [])].map((part) => part.replaceAll('-', '--')).join('-');
}

/** An active thin LV as device-mapper reports it. */
export interface ActiveThinLv {
  sizeBytes: number;
  readOnly: boolean;
  open: boolean;
  /** Bytes of the LV provisioned in its pool (the thin target's mapped sectors). */
  mappedBytes: number;
  thinId: number;
  /** The thin-pool device its table names. */
  pool: DeviceNumber;
}

/** An active thin pool as device-mapper reports it. */
export interface ActiveThinPool {
  dmName: string;
  device: DeviceNumber;
  /** The metadata device its table names (lvm2's hidden `<pool>_tmeta` LV). */
  metadataDevice: DeviceNumber;
  sizeBytes: number;
  blockBytes: number;
  status: ThinPoolStatus;
}

/**
 * `vg/lv` if lvm2 has it active as a thin LV; undefined when there is no
 * such device (inactive or absent: only lvm2's metadata can tell which) or
 * the device is not an LVM thin LV's. A device removed between the calls
 * reads as absent.
 */
export async function readActiveThinLv(vg: string, lv: string): Promise<ActiveThinLv | undefined> {
  const dmName = lvDmName(vg, lv);
  return absentAsUndefined(async () => {
    const info = await native.dmInfo(dmName);
    if (!info.uuid.startsWith(LVM_UUID_PREFIX) || !info.activeTable) return undefined;
    const [table] = await tableOf(dmName, 'thin', true);
    const [status] = await tableOf(dmName, 'thin', false);
    if (!table || !status) return undefined;
    const [pool, thinId] = table.params.trim().split(/\s+/);
    const mapped = parseThinStatus(status.params);
    if (mapped.state !== 'working' || !/^\d+:\d+$/.test(pool ?? '') || !/^\d+$/.test(thinId ?? '')) return undefined;
    return {
      sizeBytes: table.length * SECTOR_BYTES, readOnly: info.readOnly, open: info.openCount > 0,
      mappedBytes: mapped.mappedSectors * SECTOR_BYTES, thinId: Number(thinId), pool: pool as DeviceNumber,
    };
  });
}

/** The thin pool `vg/pool` if it is active: its `-tpool` layer, or the LV itself carrying the thin-pool target. */
export async function readActiveThinPool(vg: string, pool: string): Promise<ActiveThinPool | undefined> {
  for (const dmName of [lvDmName(vg, pool, 'tpool'), lvDmName(vg, pool)]) {
    const found = await absentAsUndefined(async () => {
      const info = await native.dmInfo(dmName);
      if (!info.uuid.startsWith(LVM_UUID_PREFIX) || !info.activeTable) return undefined;
      const [table] = await tableOf(dmName, 'thin-pool', true);
      const [status] = await tableOf(dmName, 'thin-pool', false);
      if (!table || !status) return undefined;
      // `<metadata dev> <data dev> <block sectors> <low water> ...`
      const [metadataDevice, , blockText] = table.params.trim().split(/\s+/);
      const blockSectors = Number(blockText);
      if (!Number.isSafeInteger(blockSectors) || blockSectors <= 0 || !/^\d+:\d+$/.test(metadataDevice ?? '')) return undefined;
      return {
        dmName, device: `${info.major}:${info.minor}` as DeviceNumber, metadataDevice: metadataDevice as DeviceNumber, sizeBytes: table.length * SECTOR_BYTES,
        blockBytes: blockSectors * SECTOR_BYTES, status: parseThinPoolStatus(status.params),
      };
    });
    if (found) return found;
  }
  return undefined;
}

/**
 * The node of a device-mapper device by number: `/dev/mapper/<name>`, the
 * name from sysfs (`/sys/dev/block/M:m/dm/name`); libdm makes that node for
 * every device lvm2 activates, hidden ones included (with udev or without).
 */
export async function dmNodeOf(device: DeviceNumber): Promise<string> {
  const name = (await readFile(`/sys/dev/block/${device}/dm/name`, 'utf8')).trim();
  return `/dev/mapper/${name}`;
}

/** The live table's one target of `type` (its table line, or its status line), or none when the table is anything else. */
async function tableOf(dmName: string, type: string, table: boolean): Promise<{ length: number; params: string }[]> {
  const targets = await native.dmTable(dmName, table);
  return targets.length === 1 && targets[0]!.type === type && targets[0]!.start === 0 ? [targets[0]!] : [];
}

async function absentAsUndefined<T>(read: () => Promise<T | undefined>): Promise<T | undefined> {
  try {
    return await read();
  } catch (error) {
    if (isSystemError(error, 'ENXIO') || isSystemError(error, 'ENODEV')) return undefined;
    throw error;
  }
}
