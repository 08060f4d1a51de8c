// Which blocks of a thin device hold data, for NBD block status and copies
// that skip what reads as zeros: read from the pool's mapping tree in a held
// metadata snapshot (src/devices/thin-metadata.ts walks it). Shared by the
// backends whose objects are dm-thin devices: `thin` (its own pool device) and
// `lvm` (the `-tpool` device lvm2 made).
//
// Kernel contract relied on (thin-provisioning.rst): `reserve_metadata_snap`
// commits the pool's metadata and keeps a snapshot of it until
// `release_metadata_snap`; the pool holds one at a time (EBUSY for a second,
// whoever holds it); the status line names its root block while it is held.
import { constants as fsConstants } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';

import type { ThinPoolStatus } from '../devices/dm-thin.js';
import { thinPoolMessage } from '../devices/dm-thin.js';
import type { MappedRun } from '../devices/thin-metadata.js';
import { decodeSuperblock, mappedRuns, METADATA_BLOCK_BYTES, ThinMetadataError } from '../devices/thin-metadata.js';
import { native } from '../native/binding.js';
import { isSystemError } from '../native/system-error.js';
import type { AllocationExtent } from './pool.js';

/** The thin-pool device whose metadata is read. */
export interface ThinPoolAccess {
  readonly dmName: string;
  /** A message to the pool target (sector 0). */
  message(text: string): Promise<string>;
  status(): Promise<ThinPoolStatus>;
  /** A node of the pool's metadata device, opened O_RDONLY | O_DIRECT. */
  metadataNode(): Promise<string>;
}

/** The thin device asked about. */
export interface ThinDeviceRef {
  name: string;
  thinId: number;
  sizeBytes: number;
}

export interface AllocationReaderOptions {
  name: string;
  blockSizeBytes: number;
  warn?: (fields: Record<string, unknown>, message: string) => void;
}

export class AllocationReader {
  /** The pool holds one metadata snapshot at a time: allocation queries take turns. */
  private snapshotTurn: Promise<unknown> = Promise.resolve();
  /** The metadata device opened O_DIRECT, for reading held snapshots. */
  private metadataReader: FileHandle | undefined;

  constructor(private readonly target: ThinPoolAccess, private readonly options: AllocationReaderOptions) {}

  /** Waits for the query in progress and closes the metadata device. */
  async close(): Promise<void> {
    await this.snapshotTurn.catch(() => undefined);
    await this.metadataReader?.close().catch(() => undefined);
    this.metadataReader = undefined;
  }

  /**
   * Provisioned and unprovisioned blocks of `device` (unprovisioned ones read
   * as zeros: block zeroing is on), from a metadata snapshot: the pool holds
   * one (`reserve_metadata_snap`), its mapping tree is read from the metadata
   * device, and it is released. Every write completed before the call is in
   * the snapshot (the message commits first). When the pool cannot give a
   * snapshot (another holder: thin_dump --metadata-snap, an operator's
   * reservation) or its metadata does not check out, the whole range is
   * answered allocated: true, only not sparse.
   */
  async allocation(device: ThinDeviceRef, offset: number, length: number): Promise<AllocationExtent[]> {
    const end = Math.min(offset + length, device.sizeBytes);
    if (end <= offset) return [{ length, allocated: true }];
    const firstBlock = Math.floor(offset / this.options.blockSizeBytes);
    const endBlock = Math.ceil(end / this.options.blockSizeBytes);
    let runs: MappedRun[] | undefined;
    try {
      runs = await this.withMetadataSnapshot((read, root) => mappedRuns(read, root, device.thinId, firstBlock, endBlock));
    } catch (error) {
      if (!(error instanceof ThinMetadataError)) throw error;
      // Not an answer to guess at: the range is reported allocated, and the operator told.
      this.options.warn?.({ pool: this.options.name, volume: device.name, fault: error.fault, error: error.message }, 'thin metadata did not check out; block status answers "allocated"');
    }
    if (!runs) return [{ length: end - offset, allocated: true }];
    return allocationExtents(runs, offset, end, this.options.blockSizeBytes);
  }

  /** Runs `walk` over a held metadata snapshot; undefined when the pool already holds one (EBUSY). */
  private withMetadataSnapshot<T>(walk: (read: (block: number) => Promise<Buffer>, dataMappingRoot: number) => Promise<T>): Promise<T | undefined> {
    const turn = this.snapshotTurn.then(async () => {
      try {
        await this.target.message(thinPoolMessage.reserveMetadataSnap);
      } catch (error) {
        if (isSystemError(error, 'EBUSY')) return undefined;
        throw error;
      }
      try {
        const status = await this.target.status();
        const held = status.state === 'working' ? status.heldMetadataRoot : undefined;
        if (held === undefined) throw new Error(`thin-pool ${this.target.dmName} reports no held metadata root after reserve_metadata_snap`);
        const node = await this.target.metadataNode();
        this.metadataReader ??= await open(node, fsConstants.O_RDONLY | fsConstants.O_DIRECT);
        const reader = this.metadataReader;
        const read = async (block: number): Promise<Buffer> => native.preadAligned(reader.fd, block * METADATA_BLOCK_BYTES, METADATA_BLOCK_BYTES, node);
        return await walk(read, decodeSuperblock(await read(held), held).dataMappingRoot);
      } finally {
        await this.target.message(thinPoolMessage.releaseMetadataSnap);
      }
    });
    this.snapshotTurn = turn.catch(() => undefined);
    return turn;
  }
}

/** Mapped runs of blocks as byte extents covering [offset, end) exactly. */
export function allocationExtents(runs: MappedRun[], offset: number, end: number, blockBytes: number): AllocationExtent[] {
  const extents: AllocationExtent[] = [];
  let cursor = offset;
  /** Extends the answer from `cursor` to `to`. */
  const push = (to: number, allocated: boolean): void => {
    if (to <= cursor) return;
    const last = extents[extents.length - 1];
    if (last && last.allocated === allocated) last.length += to - cursor;
    else extents.push({ length: to - cursor, allocated });
    cursor = to;
  };
  for (const run of runs) {
    const runStart = Math.min(Math.max(run.block * blockBytes, offset), end);
    const runEnd = Math.min((run.block + run.count) * blockBytes, end);
    if (runEnd <= cursor) continue;
    push(runStart, false);
    push(runEnd, true);
  }
  push(end, false);
  return extents;
}
