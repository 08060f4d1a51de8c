// LVs of the thin pool that the agent did not make, and their adoption
// (Cinder's manage_existing): the LV is tagged as this pool's and renamed to
// the object's name, its data untouched, as Cinder's LVM driver renames an LV
// it manages. Two VG metadata commits, tags first: after a crash between
// them the LV carries the tags under its own name, which is no name of the
// agent's (lvm-names.ts), so it is still nobody's object; `giveBack` takes
// the tags off, and renames it back when the rename was made too.
//
// Candidates are thin LVs of the configured thin pool without the tag
// `volagent` (an LV of any of the agent's pools carries it). One that is open
// (lv_device_open: a guest, a mount, a dd) or read-only (lv_attr's second
// character `r`) is listed with its refusal and not adopted.
import { failpoint } from '../../common/failpoints.js';
import { systemError } from '../../native/system-error.js';
import type { UnmanagedObject, UnmanagedObjects } from '../pool.js';
import type { ReportRow } from './lvm-command.js';
import { bytesOf, lvm, lvmReport } from './lvm-command.js';
import { AGENT_TAG, lvNameOf, poolTag } from './lvm-names.js';

const FIELDS = ['lv_name', 'lv_tags', 'lv_size', 'lv_attr', 'lv_device_open', 'pool_lv'];

/** What the pool lends: its names, and its command runner (which keeps its list of known LVs true). */
export interface LvmUnmanagedAccess {
  pool: string;
  vg: string;
  thinPool: string;
  /** The LV name of object `name`: EINVAL for a name outside OBJECT_NAME, ENAMETOOLONG past lvm2's limits. */
  objectLvName(name: string): string;
  /** Runs an lvm2 command that changes `lvName`, with the pool's errno judgement (EEXIST for a name taken). */
  command(command: string, args: string[], lvName: string): Promise<void>;
  /** The pool no longer has an LV of this name. */
  forget(lvName: string): void;
}

export class LvmUnmanagedLvs implements UnmanagedObjects {
  constructor(private readonly access: LvmUnmanagedAccess) {}

  async list(): Promise<UnmanagedObject[]> {
    const rows = await lvmReport('lvs', 'lv', FIELDS, [this.access.vg]);
    return rows.filter((row) => row.pool_lv === this.access.thinPool && !this.isAgents(row))
      .map((row) => this.candidate(row)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** An LV outside the thin pool (thick, or of another thin pool) is a candidate with its refusal: the operator learns why. */
  async get(foreign: string): Promise<UnmanagedObject | undefined> {
    const row = (await lvmReport('lvs', 'lv', FIELDS, [this.ref(foreign)], true)).find((r) => r.lv_name === foreign);
    if (!row || this.isAgents(row) || foreign === this.access.thinPool) return undefined;
    return this.candidate(row);
  }

  async adopt(foreign: string, name: string): Promise<void> {
    const target = this.access.objectLvName(name);
    const candidate = await this.get(foreign);
    if (!candidate) throw systemError('ENOENT', 'lvrename', this.ref(foreign));
    if (candidate.refusal !== undefined) throw Object.assign(systemError('EPERM', 'lvrename', this.ref(foreign)), { refusal: candidate.refusal });
    await this.access.command('lvchange', [...this.tagArgs('--addtag'), this.ref(foreign)], foreign);
    failpoint('lvm.adopt-tagged');
    try {
      await this.access.command('lvrename', [this.access.vg, foreign, target], target);
    } catch (error) {
      await lvm('lvchange', [...this.tagArgs('--deltag'), this.ref(foreign)]).catch(() => undefined);
      throw error;
    }
    failpoint('lvm.adopt-renamed');
    // The operator's LV may be inactive, or carry the activation-skip flag (a thin snapshot made without -kn).
    await this.access.command('lvchange', ['-ay', '-K', this.ref(target)], target);
  }

  async giveBack(foreign: string, name: string): Promise<void> {
    const target = lvNameOf(this.access.pool, 'object', name);
    const rows = await lvmReport('lvs', 'lv', ['lv_name', 'lv_tags'], [this.ref(target), this.ref(foreign)], true);
    const row = (lvName: string): ReportRow | undefined => rows.find((r) => r.lv_name === lvName);
    let tags = row(foreign)?.lv_tags;
    if (row(target)) {
      if (row(foreign)) throw systemError('EEXIST', 'lvrename', this.ref(foreign));
      await lvm('lvrename', [this.access.vg, target, foreign]);
      this.access.forget(target);
      tags = row(target)!.lv_tags;
    }
    if (tags !== undefined && tags.split(',').some((tag) => tag === AGENT_TAG || tag === poolTag(this.access.pool))) {
      await lvm('lvchange', [...this.tagArgs('--deltag'), this.ref(foreign)]);
    }
  }

  private candidate(row: ReportRow): UnmanagedObject {
    const name = row.lv_name!;
    const refusal = row.pool_lv !== this.access.thinPool ? `not a thin LV of ${this.ref(this.access.thinPool)}`
      : row.lv_device_open === 'open' ? 'held open'
        : (row.lv_attr ?? '')[1] === 'r' ? 'read-only'
          : undefined;
    return { name, sizeBytes: bytesOf(row.lv_size), ...(refusal !== undefined ? { refusal } : {}) };
  }

  /** Carries the tag of the agent's LVs (of any of its pools). */
  private isAgents(row: ReportRow): boolean {
    return (row.lv_tags ?? '').split(',').includes(AGENT_TAG);
  }

  private tagArgs(flag: '--addtag' | '--deltag'): string[] {
    return [flag, AGENT_TAG, flag, poolTag(this.access.pool)];
  }

  private ref(lvName: string): string {
    return `${this.access.vg}/${lvName}`;
  }
}
