// Exports (docs/design.md "Exports"): a volume served over NBD, or attached as
// a local block device. The export row is written before the export is made
// and restored at start-up (same id, same URI). An export id is the NBD
// export name: 128 random bits, so no name is guessed. While a volume is
// exported it is neither deleted nor resized (VOLUME_BUSY). Image-Volumes
// and read-only volumes are only ever exported read-only. A copy of a volume
// (a clone, snapshot or Image-Volume on a pool without constant-time clones)
// holds the writes of its writable NBD exports for the time of the copy
// (holdWrites); a writable block export, written past the agent, makes such a
// copy VOLUME_IN_USE, and is refused (VOLUME_BUSY) while a copy runs.
import { randomBytes } from 'node:crypto';

import type { Catalog, ExportProtocol, ExportRow } from '../catalog/catalog.js';
import type { CatalogWrites } from '../catalog/writes.js';
import type { ListenAddress } from '../exports/nbd/listen-address.js';
import { failpoint } from '../common/failpoints.js';
import { BlockTarget } from '../exports/nbd/block-target.js';
import type { ExportHandle } from '../exports/nbd/connection.js';
import { FileTarget } from '../exports/nbd/file-target.js';
import type { ExportTarget } from '../exports/nbd/target.js';
import { WriteDrainTimeoutError, WriteGate } from '../exports/nbd/write-gate.js';
import { attachLoop, boundLoopDevices, detachLoop, loopBackingFile } from '../devices/loop-device.js';
import type { Pool } from '../pools/pool.js';
import type { Access } from './access.js';
import { DomainError } from './errors.js';
import { toDomainError } from './faults.js';
import type { LockTable } from './locks.js';
import type { Difference } from './reconcile.js';

export interface ExportView {
  id: string;
  volume: string;
  protocol: ExportProtocol;
  readOnly: boolean;
  /** The export bypasses the page cache (ExportRequest.directIo). */
  directIo?: boolean;
  /** `nbd+unix:///ID?socket=PATH` / `nbd://host:port/ID` (`nbds://` with TLS), or the block device's path. */
  uri: string;
  /** Every NBD address the export is reachable at. */
  uris?: string[];
  /** Open NBD connections. */
  connections: number;
  createdAt: string;
}

export interface ExportRequest {
  volumeId: string;
  protocol: ExportProtocol;
  readOnly: boolean;
  /** Bypass the page cache: a block export's loop device (LO_FLAGS_DIRECT_IO); an NBD export's aligned reads (O_DIRECT, as qemu-nbd --cache=none). */
  directIo?: boolean;
}

interface LiveExport {
  row: ExportRow;
  target?: ExportTarget;
  /** A writable NBD export's: what its write-type commands pass, held for the time of a copy of its volume. */
  gate?: WriteGate;
  /** How to end each open NBD connection. */
  connections: Set<() => void>;
}

/** One holdWrites of a volume: the releases of the gates it holds (an export made during the hold joins it). */
interface WriteHold {
  releases: Array<() => void>;
}

export interface ExportsOptions {
  /** `[nbd].listen`, for the URIs. */
  nbdListen: ListenAddress[];
  /** TCP addresses require TLS (`[nbd] tls`): their URIs are `nbds://`. */
  nbdTls?: boolean;
  /** TCP ports the kernel chose for `port = 0` addresses, by listen index. */
  boundPorts?: Map<number, number>;
  /** How long holdWrites waits for the writes in flight (`[agent] lock_wait_ms`); default 2000. */
  writeDrainWaitMs?: number;
}

/** Runs a repair; one that fails leaves the difference unsettled and says why (EBUSY: something holds the device). */
async function settleExport(difference: Difference, action: 'detached' | 'restored' | 'removed', fix: () => Promise<unknown>): Promise<void> {
  try {
    await fix();
    difference.action = action;
  } catch (error) {
    difference.detail += `; repair failed: ${(error as Error).message}`;
  }
}

const DEFAULT_WRITE_DRAIN_WAIT_MS = 2000;

function newExportId(): string {
  return `exp-${randomBytes(16).toString('hex')}`;
}

export class Exports {
  private readonly live = new Map<string, LiveExport>();
  /** The write holds in force, by volume id. */
  private readonly holds = new Map<string, Set<WriteHold>>();

  constructor(
    private readonly catalog: Catalog,
    private readonly writes: CatalogWrites,
    private readonly pools: ReadonlyMap<string, Pool>,
    private readonly locks: LockTable,
    private readonly options: ExportsOptions,
  ) {}

  /** Whether volume `id` has an export (or one being made or removed). */
  isExported(volumeId: string): boolean {
    return this.catalog.exportsOfVolume(volumeId).length > 0;
  }

  /**
   * Refuses (VOLUME_IN_USE) a copy of volume `id` while it has a writable
   * block export: a loop device or a volume's own device node is written by
   * the kernel, past the agent, so its writes cannot be held for the copy.
   * Read-only exports and NBD exports (held by holdWrites) pass.
   */
  checkWritesHoldable(volumeId: string): void {
    const unheld = this.catalog.exportsOfVolume(volumeId).filter((row) => row.protocol === 'block' && !row.readOnly);
    if (unheld.length === 0) return;
    throw new DomainError('VOLUME_IN_USE', `volume ${volumeId} has a writable block export (${unheld.map((row) => row.device ?? row.id).join(', ')}) whose writes the agent cannot hold, so a copy of it would not be one point in time; remove the export or export the volume read-only`, {
      volume: volumeId, exports: unheld.map((row) => row.id),
    });
  }

  /**
   * Holds the writes to volume `id` for the time of a copy of it: on each of
   * its writable NBD exports (and any made before the release) no
   * write-type command starts, those in flight are waited for (at most
   * `writeDrainWaitMs`, then VOLUME_BUSY and nothing stays held), and the
   * target is flushed (fdatasync), so the volume does not change until the
   * release and what it holds is on the pool's storage. Reads go on. A
   * writable block export is VOLUME_IN_USE (checkWritesHoldable). Resolves
   * to the release, idempotent; the held commands then start in the order
   * they arrived.
   */
  async holdWrites(volumeId: string): Promise<() => void> {
    const hold: WriteHold = { releases: [] };
    const holds = this.holds.get(volumeId) ?? new Set<WriteHold>();
    holds.add(hold);
    this.holds.set(volumeId, holds);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      holds.delete(hold);
      if (holds.size === 0 && this.holds.get(volumeId) === holds) this.holds.delete(volumeId);
      for (const releaseGate of hold.releases.splice(0)) releaseGate();
    };
    try {
      this.checkWritesHoldable(volumeId); // after the hold is recorded: a block export made from now on is refused in create
      const gated = [...this.live.values()].filter((live) => live.row.volumeId === volumeId && live.gate);
      for (const live of gated) hold.releases.push(live.gate!.hold());
      const waitMs = this.options.writeDrainWaitMs ?? DEFAULT_WRITE_DRAIN_WAIT_MS;
      await Promise.all(gated.map((live) => live.gate!.drained(waitMs)));
      await Promise.all(gated.map((live) => live.target!.flush()));
      return release;
    } catch (error) {
      release();
      if (error instanceof WriteDrainTimeoutError) {
        throw new DomainError('VOLUME_BUSY', `volume ${volumeId}: ${error.message}, so its writes could not be held for a copy`, { volume: volumeId, inFlight: error.inFlight, waitedMs: error.waitedMs });
      }
      throw toDomainError(error, { volume: volumeId });
    }
  }

  /** The NBD server's lookup: an available NBD export by its id. */
  lookup(name: string): ExportHandle | undefined {
    const live = this.live.get(name);
    if (!live?.target || live.row.protocol !== 'nbd' || live.row.state !== 'available') return undefined;
    return {
      name, target: live.target, description: `volagent volume ${live.row.volumeId}`, ...(live.gate ? { writeGate: live.gate } : {}),
      attach: (end) => {
        live.connections.add(end);
        return () => { live.connections.delete(end); };
      },
    };
  }

  nbdExportNames(): string[] {
    return [...this.live.values()].filter((e) => e.row.protocol === 'nbd').map((e) => e.row.id);
  }

  async create(request: ExportRequest, access: Access): Promise<ExportView> {
    const volume = this.catalog.getVolume(request.volumeId);
    if (!volume || !access.sees(volume)) throw new DomainError('VOLUME_NOT_FOUND', `volume ${request.volumeId} does not exist`, { volume: request.volumeId });
    if (volume.state !== 'available') throw new DomainError('VOLUME_BUSY', `volume ${volume.id} is ${volume.state}`, { volume: volume.id, state: volume.state });
    if (!request.readOnly && (volume.readOnly || volume.kind === 'image')) {
      throw new DomainError('VOLUME_READ_ONLY', `volume ${volume.id} is ${volume.kind === 'image' ? 'an Image-Volume' : 'read-only'}: it is only exported read-only`, { volume: volume.id });
    }
    // Shared, not waited for: a delete or resize holding the volume makes the export VOLUME_BUSY.
    const release = await this.locks.acquire(volume.id, 'shared', `export ${volume.id}`, 0).catch((error: unknown) => { throw toDomainError(error, { volume: volume.id }); });
    try {
      const id = newExportId();
      if (!(await this.writes.insertExportCreating({ id, volumeId: volume.id, protocol: request.protocol, readOnly: request.readOnly, directIo: request.directIo === true }))) {
        throw new DomainError('VOLUME_BUSY', `volume ${volume.id} changed state`, { volume: volume.id });
      }
      const pool = this.pool(volume.pool);
      let made: { target?: ExportTarget; device?: string } = {};
      try {
        // Checked after the row is in: a hold that starts later sees the row (writersNotHeld).
        if (request.protocol === 'block' && !request.readOnly && this.holds.has(volume.id)) {
          throw new DomainError('VOLUME_BUSY', `volume ${volume.id} is being copied: a writable block export, whose writes the agent cannot hold, waits until the copy has ended`, { volume: volume.id });
        }
        this.checkSharedNode(pool, volume.id, id, request.readOnly);
        made = await this.make(pool, volume.id, request, undefined, volume.readOnly);
        failpoint('export.made'); // the target open or the device attached, not yet recorded
        await this.writes.markExportAvailable(id, made.device);
      } catch (error) {
        await made.target?.close().catch(() => undefined);
        if (made.device) await this.releaseDevice(pool, volume.id, made.device, { readOnly: request.readOnly, exportId: id }).catch(() => undefined);
        await this.writes.removeExport(id);
        throw toDomainError(error, { volume: volume.id });
      }
      const row = this.catalog.getExport(id)!;
      this.track(row, made.target);
      return this.view(row);
    } finally {
      release();
    }
  }

  /** The exports `access` sees: those of its scope's volumes, or all. */
  list(access: Access): ExportView[] {
    return this.catalog.listExports().filter((row) => row.state === 'available' && this.seenBy(row, access)).map((row) => this.view(row));
  }

  get(id: string, access: Access): ExportView {
    const row = this.catalog.getExport(id);
    if (!row || row.state !== 'available' || !this.seenBy(row, access)) throw this.notFound(id);
    return this.view(row);
  }

  /** Unexport: idempotent; another tenant's is absent (404). Open NBD connections to it are closed first. */
  async delete(id: string, access: Access): Promise<void> {
    const row = this.catalog.getExport(id);
    if (!row) return;
    if (!this.seenBy(row, access)) throw this.notFound(id);
    await this.writes.markExportDeleting(id);
    await this.unmake(row, this.live.get(id));
    failpoint('export.unmade');
    this.live.delete(id);
    await this.writes.removeExport(id);
  }

  /**
   * Start-up: available exports are made again (an NBD target reopened, a
   * loop device found bound to its file or attached again); rows left
   * creating or deleting are undone.
   */
  async restore(onProblem: (row: ExportRow, error: unknown) => void): Promise<void> {
    for (const row of this.catalog.listExports()) {
      if (row.state !== 'available') {
        await this.undoInterrupted(row).catch((error: unknown) => onProblem(row, error));
        await this.writes.removeExport(row.id);
        continue;
      }
      await this.restoreOne(row).catch((error: unknown) => onProblem(row, error));
    }
  }

  /**
   * How the export rows and the kernel differ: a loop device bound to a
   * volume of a file pool that no export records (made by hand, or left by
   * an attach whose row is gone), and an available export that is not served
   * (it could not be made again at start-up, or its loop device was detached
   * or rebound behind the agent's back). With `repair`, the first is
   * detached and the second made again. Volumes with an export being made
   * or removed right now are left alone.
   */
  async check(repair: boolean): Promise<Difference[]> {
    const differences: Difference[] = [];
    const rows = this.catalog.listExports();
    const changing = new Set(rows.filter((row) => row.state !== 'available').map((row) => row.volumeId));
    const recordedDevices = new Set(rows.filter((row) => row.protocol === 'block' && row.device).map((row) => row.device!));
    const fileVolumes = new Map<string, { pool: string; volume: string }>();
    for (const [name, pool] of this.pools) {
      if (pool.objectKind !== 'file') continue;
      for (const volume of this.catalog.listVolumes({ pool: name })) fileVolumes.set(pool.objectPath(volume.id), { pool: name, volume: volume.id });
    }
    for (const { device, backingFile } of await boundLoopDevices()) {
      const owner = fileVolumes.get(backingFile);
      if (!owner || recordedDevices.has(device) || changing.has(owner.volume)) continue;
      const difference: Difference = { kind: 'export', ...owner, object: owner.volume, device, detail: `loop device ${device} is bound to volume ${owner.volume} but no export records it` };
      if (repair) await settleExport(difference, 'detached', () => detachLoop(device));
      differences.push(difference);
    }
    for (const row of rows) {
      if (row.state !== 'available') continue;
      const volume = this.catalog.getVolume(row.volumeId);
      // An export of no volume (only a catalog edited behind the agent's back:
      // the foreign key forbids it), or of one whose object is gone (marked
      // error): nothing can serve it, so repair removes the row.
      const unservable = !volume ? `names volume ${row.volumeId}, which has no catalog row`
        : volume.state === 'error' ? `is of volume ${row.volumeId}, which is in error (${volume.error ?? 'unknown'})` : undefined;
      if (!unservable && (await this.isServed(row))) continue;
      const difference: Difference = {
        kind: 'export', ...(volume ? { pool: volume.pool } : {}), volume: row.volumeId, object: row.volumeId, export: row.id, ...(row.device ? { device: row.device } : {}),
        detail: `export ${row.id} (${row.protocol}) ${unservable ?? 'is available in the catalog but not served'}`,
      };
      if (repair) {
        await settleExport(difference, unservable ? 'removed' : 'restored', async () => {
          await this.live.get(row.id)?.target?.close().catch(() => undefined);
          this.live.delete(row.id);
          if (!unservable) {
            await this.restoreOne(row);
            return;
          }
          if (row.device && (await loopBackingFile(row.device))) await detachLoop(row.device);
          await this.writes.removeExport(row.id);
        });
      }
      differences.push(difference);
    }
    return differences;
  }

  async close(): Promise<void> {
    for (const live of this.live.values()) await live.target?.close().catch(() => undefined);
    this.live.clear();
  }

  /** Serves `row` from now on; a writable NBD export gets its write gate, held already when its volume's writes are. */
  private track(row: ExportRow, target: ExportTarget | undefined): void {
    const gate = target && !row.readOnly ? new WriteGate() : undefined;
    for (const hold of this.holds.get(row.volumeId) ?? []) if (gate) hold.releases.push(gate.hold());
    this.live.set(row.id, { row, ...(target ? { target } : {}), ...(gate ? { gate } : {}), connections: new Set() });
  }

  /** An export is its volume's: seen by whoever sees the volume. */
  private seenBy(row: ExportRow, access: Access): boolean {
    const volume = this.catalog.getVolume(row.volumeId);
    return volume !== undefined ? access.sees(volume) : access.scope === undefined;
  }

  private notFound(id: string): DomainError {
    return new DomainError('EXPORT_NOT_FOUND', `no export ${id}`, { export: id });
  }

  /** Makes an available export again: the NBD target reopened, the loop device found bound to its file or attached again. */
  private async restoreOne(row: ExportRow): Promise<void> {
    const volume = this.catalog.getVolume(row.volumeId);
    if (!volume) throw new Error(`export ${row.id}: its volume ${row.volumeId} has no catalog row`);
    const made = await this.make(this.pool(volume.pool), row.volumeId, { volumeId: row.volumeId, protocol: row.protocol, readOnly: row.readOnly, directIo: row.directIo }, row.device, volume.readOnly);
    if (made.device && made.device !== row.device) await this.writes.moveExportDevice(row.id, made.device);
    this.track(this.catalog.getExport(row.id)!, made.target);
  }

  /** Whether an available export is served: its NBD target open, its loop device bound to its volume's file. */
  private async isServed(row: ExportRow): Promise<boolean> {
    const live = this.live.get(row.id);
    if (!live) return false;
    if (row.protocol === 'nbd') return live.target !== undefined;
    const pool = this.pools.get(this.catalog.getVolume(row.volumeId)?.pool ?? '');
    if (!pool || pool.objectKind !== 'file') return true;
    return (await loopBackingFile(row.device ?? '')) === pool.objectPath(row.volumeId);
  }

  /**
   * Undoes an export left creating or deleting by a stop. A block export of
   * a file volume may have been attached before its device was recorded:
   * every loop device bound to the volume's file that no available export
   * records is detached.
   */
  private async undoInterrupted(row: ExportRow): Promise<void> {
    await this.unmake(row, undefined);
    const volume = this.catalog.getVolume(row.volumeId);
    const pool = volume ? this.pools.get(volume.pool) : undefined;
    if (row.protocol !== 'block' || pool?.objectKind !== 'file') return;
    const kept = new Set(this.catalog.exportsOfVolume(row.volumeId).filter((e) => e.state === 'available' && e.device).map((e) => e.device!));
    const file = pool.objectPath(row.volumeId);
    for (const { device, backingFile } of await boundLoopDevices()) {
      if (backingFile === file && !kept.has(device)) await detachLoop(device);
    }
  }

  /**
   * A block export of a volume that is a block device (objectKind 'block': a
   * thin volume's dm node) hands out that node, one device for every user of
   * it: a read-only block export makes the device read-only (the pool's
   * setReadOnly: a thin table reloaded with DM_READONLY_FLAG, so the kernel
   * refuses every write to it, root's included) for as long as the export
   * lasts. So it cannot share the volume with a writable export, either way
   * round (VOLUME_IN_USE). Checked after `exportId`'s row is in, so of two
   * concurrent requests at least one sees the other.
   */
  private checkSharedNode(pool: Pool, volumeId: string, exportId: string, readOnly: boolean): void {
    if (pool.objectKind !== 'block') return;
    const others = this.catalog.exportsOfVolume(volumeId).filter((row) => row.id !== exportId);
    const conflicting = readOnly ? others.filter((row) => !row.readOnly) : others.filter((row) => row.readOnly && row.protocol === 'block');
    if (conflicting.length === 0 || (readOnly && this.catalog.getVolume(volumeId)?.readOnly)) return;
    throw new DomainError('VOLUME_IN_USE', readOnly
      ? `volume ${volumeId} has writable exports (${conflicting.map((row) => row.id).join(', ')}): a read-only block export makes its device read-only for every user, so it waits until they are gone`
      : `volume ${volumeId} has a read-only block export (${conflicting.map((row) => row.id).join(', ')}) that keeps its device read-only: a writable export waits until it is gone`, {
      volume: volumeId, exports: conflicting.map((row) => row.id),
    });
  }

  /** Opens the NBD target, or attaches the block device (`existing`: a loop device an earlier run attached). */
  private async make(pool: Pool, volumeId: string, request: ExportRequest, existing?: string, volumeReadOnly = false): Promise<{ target?: ExportTarget; device?: string }> {
    const path = pool.objectPath(volumeId);
    if (request.protocol === 'nbd') {
      const options = request.directIo ? { directIo: true } : {};
      if (pool.objectKind === 'file') return { target: await FileTarget.open(path, request.readOnly, options) };
      const allocation = pool.allocation?.bind(pool);
      return { target: await BlockTarget.open(path, request.readOnly, { ...options, ...(allocation ? { allocation: (offset, length) => allocation(volumeId, offset, length) } : {}) }) };
    }
    if (pool.objectKind === 'block') {
      if (request.readOnly && !volumeReadOnly) await pool.setReadOnly(volumeId, true);
      return { device: path };
    }
    if (existing && (await loopBackingFile(existing)) === path) return { device: existing };
    // After a reboot the recorded device is usually free again: the same path, the same URI.
    const loop = await attachLoop(path, { readOnly: request.readOnly, ...(request.directIo ? { directIo: true } : {}), ...(existing ? { preferredDevice: existing } : {}) });
    return { device: loop.device };
  }

  private async unmake(row: ExportRow, live: LiveExport | undefined): Promise<void> {
    for (const end of live?.connections ?? []) end();
    await live?.target?.close();
    const volume = this.catalog.getVolume(row.volumeId);
    // A creating row has no device yet, but a thin node may already have been made read-only for it.
    if (row.protocol === 'block' && volume) await this.releaseDevice(this.pool(volume.pool), row.volumeId, row.device, { readOnly: row.readOnly, exportId: row.id });
  }

  /**
   * A block export's device: the loop device a file volume was attached to is
   * detached (if still bound to it); a volume's own node (objectKind 'block')
   * stays, writable again when this was the last read-only block export of a
   * writable volume.
   */
  private async releaseDevice(pool: Pool, volumeId: string, device: string | undefined, exported: { readOnly: boolean; exportId: string }): Promise<void> {
    if (pool.objectKind === 'block') {
      const volume = this.catalog.getVolume(volumeId);
      const stillReadOnly = this.catalog.exportsOfVolume(volumeId).some((row) => row.id !== exported.exportId && row.readOnly && row.protocol === 'block');
      if (exported.readOnly && volume && !volume.readOnly && !stillReadOnly) await pool.setReadOnly(volumeId, false);
      return;
    }
    if (device === undefined) return;
    if ((await loopBackingFile(device)) === pool.objectPath(volumeId)) await detachLoop(device);
  }

  private pool(name: string): Pool {
    const pool = this.pools.get(name);
    if (!pool) throw new DomainError('POOL_NOT_FOUND', `pool ${name} is not configured`, { pool: name });
    return pool;
  }

  private view(row: ExportRow): ExportView {
    const uris = row.protocol === 'nbd' ? this.nbdUris(row.id) : [row.device ?? ''];
    return {
      id: row.id, volume: row.volumeId, protocol: row.protocol, readOnly: row.readOnly, ...(row.directIo ? { directIo: true } : {}), uri: uris[0] ?? '',
      ...(row.protocol === 'nbd' ? { uris } : {}), connections: this.live.get(row.id)?.connections.size ?? 0, createdAt: row.createdAt,
    };
  }

  private nbdUris(id: string): string[] {
    return this.options.nbdListen.map((address, i) => {
      if (address.kind === 'unix') return `nbd+unix:///${id}?socket=${address.path}`;
      const port = address.port === 0 ? this.options.boundPorts?.get(i) ?? 0 : address.port;
      const host = address.host.includes(':') ? `[${address.host}]` : address.host;
      // A zone is written %25 in a URI (RFC 6874), as libnbd and qemu read it.
      return `${this.options.nbdTls ? 'nbds' : 'nbd'}://${host.replace('%', '%25')}:${port}/${id}`;
    });
  }
}
