// How the `lvm` backend names and marks its LVs. An object `<name>` of pool
// `<pool>` is the LV `va.<pool>.<encoded name>`; work in progress is
// `vt.<pool>.<12 hex>`, and a revert's two halves are `vr.`/`vo.<pool>.<encoded name>`
// (the new content and the replaced one). Every LV the agent makes carries
// the tags `volagent` and `volagent.pool.<pool>`: an LV without both is
// another owner's, whatever its name, and is never listed, changed or removed.
//
// lvm2's rules for LV names (lvm(8) "VALID NAMES"): the characters
// [A-Za-z0-9+_.-], not starting with '-', at most 127 characters; names that
// contain `_tdata`, `_tmeta`, `_rimage`, ... are reserved. Object names (OBJECT_NAME)
// may hold '@' (volume@snapshot) and '_': '@' is written `+a` and '_' is
// written `+u`, so an encoded name holds no '_' at all and no reserved word.
// The device-mapper name is `<vg>-<lv>` with each '-' doubled, also at most 127.
import { isObjectName } from '../pool.js';

export const AGENT_TAG = 'volagent';
const DM_NAME_MAX = 127;
const LV_NAME_MAX = 127;

export type LvRole = 'object' | 'temporary' | 'revert-new' | 'revert-old';

const ROLE_PREFIX: Record<LvRole, string> = { object: 'va', temporary: 'vt', 'revert-new': 'vr', 'revert-old': 'vo' };

export function poolTag(pool: string): string {
  return `volagent.pool.${pool}`;
}

export function encodeObjectName(name: string): string {
  return name.replace(/\+/g, '+p').replace(/@/g, '+a').replace(/_/g, '+u');
}

export function decodeObjectName(encoded: string): string {
  return encoded.replace(/\+([pau])/g, (_, c: string) => ({ p: '+', a: '@', u: '_' })[c]!);
}

export function lvNameOf(pool: string, role: LvRole, name: string): string {
  return `${ROLE_PREFIX[role]}.${pool}.${role === 'temporary' ? name : encodeObjectName(name)}`;
}

/** The role and the object name (or temporary's suffix) of an LV of `pool`; undefined for names of no role of this pool. */
export function parseLvName(pool: string, lvName: string): { role: LvRole; name: string } | undefined {
  for (const role of Object.keys(ROLE_PREFIX) as LvRole[]) {
    const prefix = `${ROLE_PREFIX[role]}.${pool}.`;
    if (!lvName.startsWith(prefix)) continue;
    const rest = lvName.slice(prefix.length);
    if (role === 'temporary') return /^[0-9a-f]{12}$/.test(rest) ? { role, name: rest } : undefined;
    const name = decodeObjectName(rest);
    return isObjectName(name) && encodeObjectName(name) === rest ? { role, name } : undefined;
  }
  return undefined;
}

/** Whether lvm2 can hold an LV of this name in VG `vg` (its own length and its device-mapper name's). */
export function fitsLvm(vg: string, lvName: string): boolean {
  const dmName = `${vg.replace(/-/g, '--')}-${lvName.replace(/-/g, '--')}`;
  return lvName.length <= LV_NAME_MAX && dmName.length <= DM_NAME_MAX;
}
