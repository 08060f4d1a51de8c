// The device-mapper devices a thin pool makes: the thin-pool device
// `volagent-<pool>-pool`, and one thin device `volagent-<pool>-<thin id>` per
// thin id of an object. Names carry the fixed prefix `volagent-` and the
// pool's name (uuids `VOLAGENT-THIN-<pool>-...`), so the agent never touches a
// device it did not make.
import { native } from '../../native/binding.js';
import type { DmDeviceInfo, DmTarget } from '../../native/addon-types.js';

export const DM_NAME_PREFIX = 'volagent-';
const UUID_PREFIX = 'VOLAGENT-THIN-';

export function poolDmName(pool: string): string {
  return `${DM_NAME_PREFIX}${pool}-pool`;
}

export function poolDmUuid(pool: string): string {
  return `${UUID_PREFIX}${pool}-pool`;
}

export function thinDmName(pool: string, thinId: number): string {
  return `${DM_NAME_PREFIX}${pool}-${thinId}`;
}

export function thinDmUuid(pool: string, thinId: number): string {
  return `${UUID_PREFIX}${pool}-${thinId}`;
}

/** Whether `dmName` names a thin device of `pool`, whatever its thin id. */
export function isThinDmName(pool: string, dmName: string): boolean {
  return new RegExp(`^${escapeRegExp(DM_NAME_PREFIX + pool)}-\\d+$`).test(dmName);
}

/**
 * A new device-mapper device with `targets` live (DM_DEV_CREATE, a table
 * loaded into its inactive slot, DM_DEV_SUSPEND to resume it: the resume
 * swaps the table in); removed again if any step fails.
 */
export async function createDevice(name: string, uuid: string, targets: DmTarget[], readOnly: boolean): Promise<DmDeviceInfo> {
  await native.dmCreate(name, uuid);
  try {
    await native.dmLoad(name, targets, readOnly);
    return await native.dmResume(name);
  } catch (error) {
    await native.dmRemove(name).catch(() => undefined);
    throw error;
  }
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
