// The `lvm` backend (docs/design.md "Pools"): the thin pool of an existing
// volume group, driven through lvm2's own commands (lvm-command.ts), so that
// LVM's metadata stays the truth: `lvs`, `vgcfgbackup` and an operator's
// tooling see every volume as an ordinary thin LV. The catalog keeps no
// mapping of its own. What the kernel can answer (an active LV's size,
// permission, open count and provisioned bytes; the thin pool's usage and
// mode) is read from device-mapper (lvm-devices.ts); lvm2's `lvs` is asked the
// rest: tags, inactive LVs, and the truth after a command failed.
//
// Contract relied on (lvmthin(7), lvcreate(8), lvrename(8)):
// - `lvcreate -T vg/pool -V size -n lv` makes a thin LV and `lvcreate -s -n lv
//   vg/origin` a thin snapshot of an LV of the same pool, each in one VG
//   metadata commit with its tags (`--addtag`): after a crash the LV exists
//   with its tags, or not at all;
// - thin snapshots get the activation-skip flag unless made with `-kn`; an LV
//   with the flag is activated only by `lvchange -ay -K`;
// - `lvrename` within the VG is one metadata commit, and renames an active
//   LV's device-mapper device and node with it: temporaries become objects
//   by renaming (publish after complete);
// - `lvremove` of an LV held open fails and changes nothing;
// - LV sizes are multiples of the VG's extent size (lvcreate rounds up, so
//   the backend refuses other sizes itself).
// Names and tags: lvm-names.ts. LVs without the agent's tags are never touched,
// unless adopted (lvm-unmanaged.ts).
import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';

import { throwIfAborted } from '../../common/abort.js';
import { failpoint } from '../../common/failpoints.js';
import { native } from '../../native/binding.js';
import { isSystemError, systemError } from '../../native/system-error.js';
import type { AllocationExtent } from '../pool.js';
import { AllocationReader } from '../dm-thin-allocation.js';
import type {
  CloneOutcome, CloneRequest, ForeignObject, ObjectInfo, ObjectSink, Pool, PoolCapabilities, PoolCapacity, PoolHealth,
  PopulateOutcome, PopulateRequest, ReceiveOutcome, ReceiveRequest,
} from '../pool.js';
import { copyIntoZeroedDevice, isObjectName, sinkOf, UnalignedSizeError } from '../pool.js';
import { writeSparse } from '../sparse-writer.js';
import type { LvmPoolConfig } from './backend.js';
import type { ReportRow } from './lvm-command.js';
import { bytesOf, lvm, LvmCommandError, lvmReport } from './lvm-command.js';
import type { LvRole } from './lvm-names.js';
import type { ActiveThinLv, ActiveThinPool } from './lvm-devices.js';
import { dmNodeOf, readActiveThinLv, readActiveThinPool } from './lvm-devices.js';
import { AGENT_TAG, fitsLvm, lvNameOf, parseLvName, poolTag } from './lvm-names.js';
import { LvmUnmanagedLvs } from './lvm-unmanaged.js';

/** Provisional size of a temporary receiving a stream of unknown length: virtual in a thin pool, it costs nothing. */
const RECEIVE_PROVISIONAL_BYTES = 16 * 2 ** 40;
const LV_FIELDS = ['lv_name', 'lv_tags', 'lv_size', 'lv_attr', 'lv_device_open', 'lv_active', 'pool_lv', 'data_percent'];
const POOL_FIELDS = ['lv_name', 'lv_attr', 'lv_size', 'data_percent', 'metadata_percent', 'lv_health_status', 'lv_when_full', 'lv_check_needed', 'transaction_id'];

export type LvmPoolOptions = Pick<LvmPoolConfig, 'name' | 'vg' | 'thinPool' | 'lowWaterPercent' | 'minFreePercent'> & {
  warn?: (fields: Record<string, unknown>, message: string) => void;
};

/** The VG or thin pool is not what the configuration names (fails start-up). */
export class LvmPoolError extends Error {
  override name = 'LvmPoolError';
}

interface Lv {
  lvName: string;
  sizeBytes: number;
  readOnly: boolean;
  active: boolean;
  open: boolean;
  /** Provisioned bytes: the thin target's mapped sectors, or from lvm2's data% (two decimals) for an LV that is not active. */
  allocatedBytes: number;
  /** Carries both of this pool's tags and lives in its thin pool. */
  ours: boolean;
}

interface ThinPoolState {
  sizeBytes: number;
  dataPercent: number;
  metadataPercent: number;
  health: string;
  whenFull: string;
  checkNeeded: boolean;
  transactionId: number;
  active: boolean;
}

export class LvmPool implements Pool {
  readonly name: string;
  readonly backend = 'lvm';
  readonly objectKind = 'block' as const;
  /** An LV is named from its lvcreate on; a copy into it is made after. */
  readonly publishesWhole = false;
  private extentBytes = 0;
  /** Temporaries this process is writing: not leftovers, so not listed for the sweep. */
  private readonly live = new Set<string>();
  private lowWaterWarned = false;
  /**
   * The names of this pool's LVs (every role) as of its last listing, kept up
   * to date by its own commands: a name outside it with no active device is
   * absent without asking lvm2. An LV made behind the agent's back under one
   * of its names, tagged as its own and left inactive, is seen at the next
   * listing (start-up, the sweep, reconcile), and lvcreate refuses the name
   * meanwhile.
   */
  private known = new Set<string>();
  /** Made at the first block status query, once the thin pool's block size is read from its table. */
  private allocationReader: AllocationReader | undefined;

  /** The thin LVs of the thin pool that the agent did not make, and their adoption (lvm-unmanaged.ts). */
  readonly unmanaged: LvmUnmanagedLvs;

  constructor(private readonly options: LvmPoolOptions) {
    this.name = options.name;
    this.unmanaged = new LvmUnmanagedLvs({
      pool: options.name, vg: options.vg, thinPool: options.thinPool,
      objectLvName: (name) => this.lvName('object', name),
      command: (command, args, lvName) => this.command(command, args, lvName),
      forget: (lvName) => this.known.delete(lvName),
    });
  }

  // --- open ---

  /**
   * Checks that the VG and its thin pool exist and that the pool zeroes new
   * blocks (nothing is made or changed in them), settles a revert a crash cut off, and activates this pool's
   * LVs that are not active (after a reboot without autoactivation).
   */
  async open(): Promise<void> {
    const { vg, thinPool } = this.options;
    const vgs = await lvmReport('vgs', 'vg', ['vg_name', 'vg_extent_size'], [vg]).catch((error: unknown) => {
      throw new LvmPoolError(`volume group ${vg} cannot be read: ${(error as Error).message}`);
    });
    this.extentBytes = bytesOf(vgs[0]?.vg_extent_size);
    if (!(this.extentBytes > 0)) throw new LvmPoolError(`volume group ${vg} reports no extent size`);
    const pool = (await lvmReport('lvs', 'lv', ['lv_name', 'lv_attr'], [vg])).find((row) => row.lv_name === thinPool);
    if (!pool) throw new LvmPoolError(`volume group ${vg} has no LV named ${thinPool}`);
    if (!pool.lv_attr?.startsWith('t')) throw new LvmPoolError(`${vg}/${thinPool} is not a thin pool (lv_attr ${pool.lv_attr})`);
    // lv_attr's 8th character: `z` when newly provisioned blocks are zeroed before use (lvcreate -Z y, lvm2's default).
    if (pool.lv_attr[7] !== 'z') {
      throw new LvmPoolError(`${vg}/${thinPool} does not zero newly provisioned blocks (lv_attr ${pool.lv_attr}): a new volume could read what a deleted one left in a block; run lvchange -Z y ${vg}/${thinPool}`);
    }
    await this.settleReverts();
    for (const lv of await this.ownLvs()) {
      const parsed = parseLvName(this.name, lv.lvName)!;
      if (parsed.role === 'object' && !lv.active) await lvm('lvchange', ['-ay', '-K', this.ref(lv.lvName)]);
    }
  }

  async close(): Promise<void> {
    // LVs stay active for exports and guests while the agent restarts; a metadata snapshot in use is released.
    await this.allocationReader?.close();
    this.allocationReader = undefined;
  }

  // --- the pool ---

  capabilities(): PoolCapabilities {
    return { reflink: true, constantTimeClone: true, sizeAlignmentBytes: this.extentBytes };
  }

  async capacity(): Promise<PoolCapacity> {
    const state = await this.thinPoolState();
    const usedBytes = Math.round((state.sizeBytes * state.dataPercent) / 100);
    return {
      totalBytes: state.sizeBytes, usedBytes, freeBytes: state.sizeBytes - usedBytes,
      dataPercent: state.dataPercent, metadataPercent: state.metadataPercent,
    };
  }

  /** lvm2's view of the thin pool: lv_health_status, lv_when_full, lv_check_needed, data% and metadata%. */
  async health(): Promise<PoolHealth> {
    const state = await this.thinPoolState();
    this.warnAtLowWater(state);
    return {
      mode: healthMode(state), needsCheck: state.checkNeeded, noSpace: state.whenFull === 'error' ? 'error' : 'queue',
      lowWater: this.isLowWater(state), ...(Number.isSafeInteger(state.transactionId) ? { transactionId: state.transactionId } : {}),
    };
  }

  // --- objects ---

  async create(name: string, sizeBytes: number): Promise<void> {
    const lvName = this.lvName('object', name);
    this.checkSize(sizeBytes);
    const { lvs, pool } = await this.lookup([lvName]);
    if (lvs.has(lvName)) throw systemError('EEXIST', 'lvcreate', this.objectPath(name));
    this.refuseWhenFull(pool);
    await this.makeThin(lvName, sizeBytes, 'lvcreate');
    failpoint('lvm.object-made'); // the LV made, the domain's row not yet available
  }

  async clone(source: string, target: string, request: CloneRequest = {}): Promise<CloneOutcome> {
    const sourceLv = this.lvName('object', source);
    const targetLv = this.lvName('object', target);
    const { lvs, pool } = await this.lookup([sourceLv, targetLv]);
    const origin = lvs.get(sourceLv);
    if (!origin?.ours) throw systemError('ENOENT', 'lvcreate', this.objectPath(source));
    const sizeBytes = request.sizeBytes ?? origin.sizeBytes;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < origin.sizeBytes) throw systemError('EINVAL', 'lvcreate', this.objectPath(target));
    this.checkSize(sizeBytes);
    if (lvs.has(targetLv)) throw systemError('EEXIST', 'lvcreate', this.objectPath(target));
    throwIfAborted(request.signal);
    this.refuseWhenFull(pool);
    const grows = sizeBytes > origin.sizeBytes;
    const readOnly = request.readOnly ?? false;
    await this.command('lvcreate', ['-s', '-kn', '-ay', '-p', readOnly && !grows ? 'r' : 'rw', ...this.tagArgs(), '-n', targetLv, this.ref(sourceLv)], targetLv);
    if (grows) {
      try {
        await this.command('lvextend', ['-L', `${sizeBytes}b`, this.ref(targetLv)], targetLv);
        if (readOnly) await this.command('lvchange', ['-p', 'r', this.ref(targetLv)], targetLv);
      } catch (error) {
        await this.removeLv(targetLv).catch(() => undefined);
        throw error;
      }
    }
    failpoint('lvm.object-made');
    return { method: 'thin_snapshot', bytesCopied: 0 };
  }

  /**
   * A temporary thin LV sized to the source (or `sizeBytes`), into which the
   * source's data is written (a new thin LV reads zeros: holes and all-zero
   * blocks are not written), flushed, then renamed to `target`.
   */
  async cloneFrom(source: ForeignObject, target: string, request: CloneRequest = {}): Promise<CloneOutcome> {
    const targetLv = this.lvName('object', target);
    const sizeBytes = request.sizeBytes ?? source.sizeBytes;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < source.sizeBytes) throw systemError('EINVAL', 'clone', source.path, this.objectPath(target));
    this.checkSize(sizeBytes);
    const { lvs, pool } = await this.lookup([targetLv]);
    if (lvs.has(targetLv)) throw systemError('EEXIST', 'lvcreate', this.objectPath(target));
    throwIfAborted(request.signal);
    this.refuseWhenFull(pool);
    return this.throughTemporary(targetLv, sizeBytes, request.readOnly ?? false, async (node) => {
      const outcome = await copyIntoZeroedDevice(source, node, request);
      throwIfAborted(request.signal);
      return { outcome, sizeBytes };
    });
  }

  sharesBlocksWith(): boolean {
    return false;
  }

  async receive(name: string, data: AsyncIterable<Uint8Array>, request: ReceiveRequest = {}): Promise<ReceiveOutcome> {
    const lvName = this.lvName('object', name);
    const { lvs, pool } = await this.lookup([lvName]);
    if (lvs.has(lvName)) throw systemError('EEXIST', 'lvcreate', this.objectPath(name));
    this.refuseWhenFull(pool);
    const provisional = roundUp(Math.min(request.maxBytes ?? RECEIVE_PROVISIONAL_BYTES, RECEIVE_PROVISIONAL_BYTES), this.extentBytes) || this.extentBytes;
    return this.throughTemporary(lvName, provisional, request.readOnly ?? false, async (node) => {
      // O_EXCL on a block device: an exclusive open, so nothing mounts or opens it exclusively meanwhile.
      const handle = await open(node, fsConstants.O_WRONLY | fsConstants.O_EXCL);
      try {
        const outcome = await writeSparse(handle.fd, node, data, {
          ...(request.maxBytes !== undefined ? { maxBytes: request.maxBytes } : {}),
          ...(request.onProgress ? { onProgress: request.onProgress } : {}),
        });
        this.checkSize(outcome.sizeBytes);
        await native.fsync(handle.fd, node);
        return { outcome, sizeBytes: outcome.sizeBytes };
      } finally {
        await handle.close();
      }
    });
  }

  async populate(name: string, sizeBytes: number, fill: (sink: ObjectSink) => Promise<void>, request: PopulateRequest = {}): Promise<PopulateOutcome> {
    const lvName = this.lvName('object', name);
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw systemError('EINVAL', 'populate', this.objectPath(name));
    this.checkSize(sizeBytes);
    const { lvs, pool } = await this.lookup([lvName]);
    if (lvs.has(lvName)) throw systemError('EEXIST', 'lvcreate', this.objectPath(name));
    throwIfAborted(request.signal);
    this.refuseWhenFull(pool);
    return this.throughTemporary(lvName, sizeBytes, request.readOnly ?? false, async (node) => {
      let bytesWritten = 0;
      const handle = await open(node, fsConstants.O_WRONLY | fsConstants.O_EXCL);
      try {
        await fill(sinkOf(handle.fd, node, sizeBytes, (written) => { bytesWritten += written; }));
        throwIfAborted(request.signal);
        await native.fsync(handle.fd, node);
      } finally {
        await handle.close();
      }
      return { outcome: { bytesWritten }, sizeBytes };
    });
  }

  /**
   * `name` takes the content of `source` in three metadata commits: a thin
   * snapshot of `source` made as `vr.<pool>.<name>` (sized as `name`),
   * `name` renamed `vo.<pool>.<name>`, the snapshot renamed `name`; then the
   * replaced LV is removed. A crash between them is settled at open
   * (settleReverts), so `name` holds its old or its new content.
   */
  async revert(name: string, source: string): Promise<CloneOutcome> {
    const lvName = this.lvName('object', name);
    const sourceLv = this.lvName('object', source);
    const newLv = this.lvName('revert-new', name);
    const oldLv = this.lvName('revert-old', name);
    const { lvs, pool } = await this.lookup([lvName, sourceLv]);
    const current = lvs.get(lvName);
    const origin = lvs.get(sourceLv);
    if (!current?.ours) throw systemError('ENOENT', 'revert', this.objectPath(name));
    if (!origin?.ours) throw systemError('ENOENT', 'revert', this.objectPath(source));
    if (current.readOnly) throw systemError('EPERM', 'revert', this.objectPath(name));
    if (origin.sizeBytes > current.sizeBytes) throw systemError('EINVAL', 'revert', this.objectPath(name));
    this.refuseWhenFull(pool);
    await this.command('lvcreate', ['-s', '-kn', '-ay', '-p', 'rw', ...this.tagArgs(), '-n', newLv, this.ref(sourceLv)], newLv);
    try {
      if (origin.sizeBytes < current.sizeBytes) await this.command('lvextend', ['-L', `${current.sizeBytes}b`, this.ref(newLv)], newLv);
      failpoint('lvm.revert-made');
      await this.command('lvrename', [this.options.vg, lvName, oldLv], lvName);
    } catch (error) {
      await this.removeLv(newLv).catch(() => undefined);
      throw error;
    }
    failpoint('lvm.revert-renamed-old');
    await this.command('lvrename', [this.options.vg, newLv, lvName], newLv);
    await this.removeLv(oldLv).catch((error: unknown) => {
      this.options.warn?.({ pool: this.name, volume: name, lv: oldLv, error: (error as Error).message }, 'lvm pool: the LV a revert replaced is removed at the next start');
    });
    return { method: 'thin_snapshot', bytesCopied: 0 };
  }

  async resize(name: string, sizeBytes: number): Promise<void> {
    const lvName = this.lvName('object', name);
    const lv = await this.ownLv(lvName);
    if (!lv) throw systemError('ENOENT', 'lvextend', this.objectPath(name));
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < lv.sizeBytes) throw systemError('EINVAL', 'lvextend', this.objectPath(name));
    this.checkSize(sizeBytes);
    if (sizeBytes === lv.sizeBytes) return;
    if (lv.readOnly) throw systemError('EPERM', 'lvextend', this.objectPath(name));
    await this.command('lvextend', ['-L', `${sizeBytes}b`, this.ref(lvName)], lvName);
    failpoint('lvm.object-resized');
  }

  async setReadOnly(name: string, readOnly: boolean): Promise<void> {
    const lvName = this.lvName('object', name);
    const lv = await this.ownLv(lvName);
    if (!lv) throw systemError('ENOENT', 'lvchange', this.objectPath(name));
    if (lv.readOnly === readOnly) return;
    await this.command('lvchange', ['-p', readOnly ? 'r' : 'rw', this.ref(lvName)], lvName);
  }

  /** Removes the LV; absent (or not this pool's) is done; EBUSY, nothing changed, while its device is open. */
  async remove(name: string): Promise<void> {
    const lvName = this.lvName('object', name);
    const lv = await this.ownLv(lvName);
    if (!lv) return;
    if (lv.open) throw systemError('EBUSY', 'lvremove', this.objectPath(name));
    await this.removeLv(lvName);
    failpoint('lvm.object-removed');
  }

  async inUse(name: string): Promise<boolean> {
    return (await this.ownLv(this.lvName('object', name)))?.open ?? false;
  }

  /** allocatedBytes: the thin target's mapped sectors (an inactive LV's from lvm2's data%, exact to 0.01% of its size). */
  async stat(name: string): Promise<ObjectInfo | undefined> {
    const lv = await this.ownLv(this.lvName('object', name));
    if (!lv) return undefined;
    return { sizeBytes: lv.sizeBytes, allocatedBytes: lv.allocatedBytes, readOnly: lv.readOnly };
  }

  /**
   * Which parts of the LV hold data, from the thin pool's mapping tree in a
   * held metadata snapshot (dm-thin-allocation.ts), as for the thin backend.
   * An LV that is not active is answered allocated throughout: only not sparse.
   */
  async allocation(name: string, offset: number, length: number): Promise<AllocationExtent[]> {
    const lvName = this.lvName('object', name);
    const { vg, thinPool } = this.options;
    const [device, pool] = await Promise.all([readActiveThinLv(vg, lvName), readActiveThinPool(vg, thinPool)]);
    if (!device || !pool || device.pool !== pool.device || !this.known.has(lvName)) {
      if (!(await this.ownLv(lvName))) throw systemError('ENOENT', 'allocation', this.objectPath(name));
      return [{ length, allocated: true }];
    }
    this.allocationReader ??= this.allocationReaderFor(pool);
    return this.allocationReader.allocation({ name, thinId: device.thinId, sizeBytes: device.sizeBytes }, offset, length);
  }

  async list(): Promise<string[]> {
    const names: string[] = [];
    for (const lv of await this.ownLvs()) {
      const parsed = parseLvName(this.name, lv.lvName)!;
      if (parsed.role === 'object') names.push(parsed.name);
    }
    return names.sort();
  }

  /** This pool's `vt.` LVs that no call of this process is writing: left by an interrupted receive, populate or cloneFrom. */
  async listTemporaries(): Promise<string[]> {
    return (await this.ownLvs())
      .filter((lv) => parseLvName(this.name, lv.lvName)!.role === 'temporary' && !this.live.has(lv.lvName))
      .map((lv) => lv.lvName).sort();
  }

  async removeTemporary(temporary: string): Promise<void> {
    if (!(await this.listTemporaries()).includes(temporary)) throw systemError('EINVAL', 'lvremove', this.ref(temporary));
    await this.removeLv(temporary);
  }

  /** `/dev/<vg>/<lv>`, the node lvm2 (or udev) keeps for an active LV; EINVAL for a name outside OBJECT_NAME, ENAMETOOLONG past lvm2's limits. */
  objectPath(name: string): string {
    return this.lvPath(this.lvName('object', name));
  }

  // --- helpers ---

  /** The metadata-snapshot reader of the thin pool `pool` is now; its device is looked up again at each call (lvm2 may move the target from `<pool>` to its `-tpool` layer). */
  private allocationReaderFor(pool: ActiveThinPool): AllocationReader {
    const { vg, thinPool } = this.options;
    const active = async (): Promise<ActiveThinPool> => {
      const now = await readActiveThinPool(vg, thinPool);
      if (!now) throw systemError('ENODEV', 'allocation', this.ref(thinPool));
      return now;
    };
    return new AllocationReader({
      dmName: pool.dmName,
      message: async (text) => native.dmMessage((await active()).dmName, 0, text),
      status: async () => (await active()).status,
      metadataNode: async () => dmNodeOf((await active()).metadataDevice),
    }, { name: this.name, blockSizeBytes: pool.blockBytes, ...(this.options.warn ? { warn: this.options.warn } : {}) });
  }

  private lvName(role: LvRole, name: string): string {
    if (typeof name !== 'string' || !isObjectName(name)) throw systemError('EINVAL', 'open', String(name));
    const lvName = lvNameOf(this.name, role, name);
    if (!fitsLvm(this.options.vg, lvName)) throw systemError('ENAMETOOLONG', 'open', this.lvPath(lvName));
    return lvName;
  }

  private lvPath(lvName: string): string {
    return `/dev/${this.options.vg}/${lvName}`;
  }

  private ref(lvName: string): string {
    return `${this.options.vg}/${lvName}`;
  }

  private tagArgs(): string[] {
    return ['--addtag', AGENT_TAG, '--addtag', poolTag(this.name)];
  }

  /**
   * Makes `target` through a temporary: a thin LV of `sizeBytes` under a
   * `vt.` name, written by `write` (which answers the final size), cut to
   * that size, made read-only if asked, and renamed `target`. Any failure
   * removes the temporary; a crash leaves it for the sweep.
   */
  private async throughTemporary<T>(target: string, sizeBytes: number, readOnly: boolean, write: (node: string) => Promise<{ outcome: T; sizeBytes: number }>): Promise<T> {
    const temporary = lvNameOf(this.name, 'temporary', randomBytes(6).toString('hex'));
    this.live.add(temporary);
    try {
      await this.makeThin(temporary, sizeBytes, 'lvcreate');
      try {
        failpoint('lvm.temporary-made');
        const { outcome, sizeBytes: finalBytes } = await write(this.lvPath(temporary));
        if (finalBytes < sizeBytes) await this.command('lvreduce', ['-f', '-L', `${finalBytes}b`, this.ref(temporary)], temporary);
        if (readOnly) await this.command('lvchange', ['-p', 'r', this.ref(temporary)], temporary);
        failpoint('lvm.temporary-written');
        await this.command('lvrename', [this.options.vg, temporary, target], target);
        return outcome;
      } catch (error) {
        // Judged before the temporary goes: removing it frees the space, and the pool leaves out-of-data-space mode.
        const cause = await this.writeFailureCause(error);
        await this.removeLv(temporary).catch(() => undefined);
        throw cause;
      }
    } finally {
      this.live.delete(temporary);
    }
  }

  /** A new, active, tagged thin LV in the thin pool. */
  private async makeThin(lvName: string, sizeBytes: number, syscall: string): Promise<void> {
    await this.command(syscall, ['-T', this.ref(this.options.thinPool), '-V', `${sizeBytes}b`, '-kn', '-ay', ...this.tagArgs(), '-n', lvName], lvName);
  }

  private async removeLv(lvName: string): Promise<void> {
    await this.command('lvremove', ['-y', this.ref(lvName)], lvName);
  }

  /**
   * Runs an lvm2 command that changes `lvName`; when it fails, the errno is
   * decided from the VG's state afterwards: EEXIST (lvcreate, lvrename: the
   * name is taken), ENOENT (anything else: the LV is absent), EBUSY (lvremove:
   * the LV is open), ENOSPC (the thin pool is out of data or metadata space),
   * else EIO. The lvm2 error is the cause.
   */
  private async command(command: string, args: string[], lvName: string): Promise<void> {
    try {
      await lvm(command, args);
    } catch (error) {
      if (!(error instanceof LvmCommandError)) throw error;
      const state = await this.report([lvName]).catch(() => undefined);
      const lv = state?.lvs.get(lvName);
      let code: 'EEXIST' | 'ENOENT' | 'EBUSY' | 'ENOSPC' | 'EIO' = 'EIO';
      if (state && (command === 'lvcreate' || command === 'lvrename') && lv) code = 'EEXIST';
      else if (state && command === 'lvremove' && lv?.open) code = 'EBUSY';
      else if (state && command === 'lvremove' && !lv) {
        this.known.delete(lvName);
        return; // gone: what was asked
      }
      else if (state && command !== 'lvcreate' && command !== 'lvrename' && !lv) code = 'ENOENT';
      else if (state && (healthMode(state.pool) === 'out_of_data_space' || this.freePercent(state.pool) <= 0)) code = 'ENOSPC';
      throw Object.assign(systemError(code, command, this.ref(lvName)), { cause: error });
    }
    if (command === 'lvcreate') this.known.add(lvName);
    else if (command === 'lvremove') this.known.delete(lvName);
    else if (command === 'lvrename') {
      this.known.delete(args[1]!);
      this.known.add(lvName);
    }
  }

  /**
   * A write into a thin LV of a pool out of data space fails (or, buffered,
   * reports EIO at fsync): when the pool is out of data space, an EIO is
   * ENOSPC with the EIO as its cause.
   */
  private async writeFailureCause(error: unknown): Promise<unknown> {
    if (!isSystemError(error, 'EIO')) return error;
    const state = await this.thinPoolState().catch(() => undefined);
    if (!state || (healthMode(state) !== 'out_of_data_space' && this.freePercent(state) > 0)) return error;
    return Object.assign(systemError('ENOSPC', (error as NodeJS.ErrnoException).syscall ?? 'write', this.ref(this.options.thinPool)), { cause: error });
  }

  /**
   * The thin pool's state and the LVs named (those present). Active LVs of
   * this pool and the active thin pool are read from device-mapper; one `lvs`
   * is asked about the rest: a known name with no active device (inactive, or
   * removed behind the agent's back), an active device under a name this pool
   * does not know or in another thin pool, and a thin pool that is not active.
   * A name neither known nor active is absent.
   */
  private async lookup(lvNames: string[]): Promise<{ pool: ThinPoolState; lvs: Map<string, Lv> }> {
    const { vg, thinPool } = this.options;
    const [kernelPool, devices] = await Promise.all([readActiveThinPool(vg, thinPool), Promise.all(lvNames.map((lvName) => readActiveThinLv(vg, lvName)))]);
    const lvs = new Map<string, Lv>();
    const ask: string[] = [];
    for (const [i, lvName] of lvNames.entries()) {
      const active = devices[i];
      if (active && kernelPool && active.pool === kernelPool.device && this.known.has(lvName)) lvs.set(lvName, lvOfDevice(lvName, active));
      else if (active || this.known.has(lvName)) ask.push(lvName);
    }
    if (kernelPool && ask.length === 0) return { pool: thinPoolStateOfDevice(kernelPool), lvs };
    const reported = await this.report(ask);
    for (const [lvName, lv] of reported.lvs) lvs.set(lvName, lv);
    return { pool: kernelPool ? thinPoolStateOfDevice(kernelPool) : reported.pool, lvs };
  }

  /** The thin pool's state and the LVs named (those present), in one `lvs`; the known names follow what it reports. */
  private async report(lvNames: string[]): Promise<{ pool: ThinPoolState; lvs: Map<string, Lv> }> {
    const { vg, thinPool } = this.options;
    const fields = [...new Set([...LV_FIELDS, ...POOL_FIELDS])];
    const rows = await lvmReport('lvs', 'lv', fields, [this.ref(thinPool), ...lvNames.map((n) => this.ref(n))], true);
    const poolRow = rows.find((row) => row.lv_name === thinPool);
    if (!poolRow) throw systemError('ENODEV', 'lvs', `${vg}/${thinPool}`);
    const lvs = new Map<string, Lv>();
    for (const row of rows) if (row.lv_name !== thinPool && row.lv_name) lvs.set(row.lv_name, this.lvOf(row));
    for (const lvName of lvNames) {
      if (lvs.get(lvName)?.ours) this.known.add(lvName);
      else this.known.delete(lvName);
    }
    return { pool: thinPoolStateOf(poolRow), lvs };
  }

  /** The LV if it is this pool's. */
  private async ownLv(lvName: string): Promise<Lv | undefined> {
    const lv = (await this.lookup([lvName])).lvs.get(lvName);
    return lv?.ours ? lv : undefined;
  }

  /** Every LV of the VG that carries this pool's tags, lives in its thin pool and has a name of one of its roles. */
  private async ownLvs(): Promise<Lv[]> {
    const rows = await lvmReport('lvs', 'lv', LV_FIELDS, [this.options.vg]);
    const own = rows.map((row) => this.lvOf(row)).filter((lv) => lv.ours && parseLvName(this.name, lv.lvName) !== undefined);
    this.known = new Set(own.map((lv) => lv.lvName));
    return own;
  }

  private lvOf(row: ReportRow): Lv {
    const tags = (row.lv_tags ?? '').split(',');
    const sizeBytes = bytesOf(row.lv_size);
    const dataPercent = bytesOf(row.data_percent);
    return {
      lvName: row.lv_name ?? '',
      sizeBytes,
      readOnly: (row.lv_attr ?? '')[1] === 'r',
      active: row.lv_active === 'active',
      open: row.lv_device_open === 'open',
      allocatedBytes: Number.isFinite(dataPercent) ? Math.round((sizeBytes * dataPercent) / 100) : 0,
      ours: tags.includes(AGENT_TAG) && tags.includes(poolTag(this.name)) && row.pool_lv === this.options.thinPool,
    };
  }

  private async thinPoolState(): Promise<ThinPoolState> {
    return (await this.lookup([])).pool;
  }

  /**
   * New objects are refused (ENOSPC, nothing changed) when the thin pool is
   * out of data space or below the free-space floor, and (EROFS) when its
   * metadata went read-only or it failed.
   */
  private refuseWhenFull(state: ThinPoolState): void {
    this.warnAtLowWater(state);
    const mode = healthMode(state);
    if (mode === 'ro' || mode === 'failed' || mode === 'error') throw systemError('EROFS', 'lvcreate', this.ref(this.options.thinPool));
    if (mode === 'out_of_data_space' || this.freePercent(state) < this.options.minFreePercent) throw systemError('ENOSPC', 'lvcreate', this.ref(this.options.thinPool));
  }

  private freePercent(state: ThinPoolState): number {
    return Math.min(100 - (state.dataPercent || 0), 100 - (state.metadataPercent || 0));
  }

  private isLowWater(state: ThinPoolState): boolean {
    return this.freePercent(state) <= this.options.lowWaterPercent;
  }

  private warnAtLowWater(state: ThinPoolState): void {
    const low = this.isLowWater(state);
    if (low && !this.lowWaterWarned) {
      this.options.warn?.({ pool: this.name, dataPercent: state.dataPercent, metadataPercent: state.metadataPercent, lowWaterPercent: this.options.lowWaterPercent },
        'thin pool free space is at or below its low-water mark');
    }
    this.lowWaterWarned = low;
  }

  private checkSize(sizeBytes: number): void {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % this.extentBytes !== 0) throw new UnalignedSizeError(this.name, sizeBytes, this.extentBytes);
  }

  /**
   * Settles reverts a crash cut off (see revert): with the replaced LV
   * (`vo.`) and no LV under the name, the new content (`vr.`) takes the
   * name, or the replaced one takes it back when there is none; then
   * whatever `vo.` and `vr.` remain are removed.
   */
  private async settleReverts(): Promise<void> {
    const lvs = await this.ownLvs();
    const has = (lvName: string): boolean => lvs.some((lv) => lv.lvName === lvName);
    for (const lv of lvs) {
      const parsed = parseLvName(this.name, lv.lvName)!;
      if (parsed.role !== 'revert-old') continue;
      const lvName = lvNameOf(this.name, 'object', parsed.name);
      const newLv = lvNameOf(this.name, 'revert-new', parsed.name);
      if (!has(lvName)) {
        const from = has(newLv) ? newLv : lv.lvName;
        await lvm('lvrename', [this.options.vg, from, lvName]);
        this.options.warn?.({ pool: this.name, volume: parsed.name }, from === newLv ? 'lvm pool: finished a revert the agent stopped in' : 'lvm pool: undid a revert the agent stopped in');
      }
    }
    for (const lv of await this.ownLvs()) {
      const role = parseLvName(this.name, lv.lvName)!.role;
      if (role === 'revert-old' || role === 'revert-new') await this.removeLv(lv.lvName);
    }
  }
}

/** An LV of this pool that device-mapper has active (its tags were seen when it became known). */
function lvOfDevice(lvName: string, device: ActiveThinLv): Lv {
  return {
    lvName, sizeBytes: device.sizeBytes, readOnly: device.readOnly, active: true, open: device.open, allocatedBytes: device.mappedBytes, ours: true,
  };
}

/** The thin-pool target's status in lvm2's terms (lv_health_status, lv_when_full, data% and metadata% unrounded). */
function thinPoolStateOfDevice(pool: ActiveThinPool): ThinPoolState {
  const { status } = pool;
  if (status.state !== 'working') {
    return { sizeBytes: pool.sizeBytes, dataPercent: 0, metadataPercent: 0, health: status.state === 'failed' ? 'failed' : 'error', whenFull: '', checkNeeded: false, transactionId: NaN, active: true };
  }
  const modeHealth = { rw: '', ro: 'metadata_read_only', out_of_data_space: 'out_of_data' } as const;
  return {
    sizeBytes: pool.sizeBytes,
    dataPercent: (100 * status.data.used) / status.data.total,
    metadataPercent: (100 * status.metadata.used) / status.metadata.total,
    health: modeHealth[status.mode],
    whenFull: status.noSpace,
    checkNeeded: status.needsCheck,
    transactionId: status.transactionId,
    active: true,
  };
}

function thinPoolStateOf(row: ReportRow): ThinPoolState {
  return {
    sizeBytes: bytesOf(row.lv_size),
    dataPercent: bytesOf(row.data_percent) || 0,
    metadataPercent: bytesOf(row.metadata_percent) || 0,
    health: row.lv_health_status ?? '',
    whenFull: row.lv_when_full ?? '',
    checkNeeded: (row.lv_check_needed ?? '') !== '' && row.lv_check_needed !== 'unknown',
    transactionId: bytesOf(row.transaction_id),
    active: (row.lv_attr ?? '')[4] === 'a',
  };
}

/** lv_health_status of a thin pool as PoolHealth's mode. */
function healthMode(state: ThinPoolState): PoolHealth['mode'] {
  switch (state.health) {
    case 'failed': return 'failed';
    case 'out_of_data': return 'out_of_data_space';
    case 'metadata_read_only': return 'ro';
    case '': return state.active ? 'rw' : 'error';
    default: return 'error';
  }
}

function roundUp(value: number, unit: number): number {
  return Math.ceil(value / unit) * unit;
}
