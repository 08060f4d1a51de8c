// The dm-thin kernel contract in one place (Documentation/admin-guide/
// device-mapper/thin-provisioning.rst): the tables of a thin-pool and of a
// thin device, the pool's messages, and the status lines both report.
// Sizes are in 512-byte sectors; devices are named by major:minor so no
// device node lookup (and no udev) is involved.
import type { DmTarget } from '../native/addon-types.js';

export const SECTOR_BYTES = 512;

/** A block device number as device-mapper tables take it. */
export type DeviceNumber = `${number}:${number}`;

export interface ThinPoolTableOptions {
  /** Data block size in sectors: a multiple of 128 (64 KiB) from 128 to 2097152 (1 GiB). */
  blockSectors: number;
  /** Free data blocks below which the pool raises a device-mapper event. */
  lowWaterBlocks: number;
  /** Fail writes at once when the data device is full, instead of queueing them (`error_if_no_space`). */
  errorIfNoSpace: boolean;
  /** Skip zeroing newly provisioned blocks (the agent never exposes unwritten blocks of another volume). */
  skipBlockZeroing: boolean;
}

/** `0 <data sectors> thin-pool <metadata dev> <data dev> <block size> <low water> [<#features> <features>...]` */
export function thinPoolTarget(metadata: DeviceNumber, data: DeviceNumber, dataSectors: number, options: ThinPoolTableOptions): DmTarget {
  const features = [...(options.skipBlockZeroing ? ['skip_block_zeroing'] : []), ...(options.errorIfNoSpace ? ['error_if_no_space'] : [])];
  const params = [metadata, data, options.blockSectors, options.lowWaterBlocks, features.length, ...features].join(' ');
  return { start: 0, length: dataSectors, type: 'thin-pool', params };
}

/** `0 <sectors> thin <pool dev> <thin id>`: a thin device's whole table. */
export function thinTarget(pool: DeviceNumber, thinId: number, sectors: number): DmTarget {
  return { start: 0, length: sectors, type: 'thin', params: `${pool} ${thinId}` };
}

/** The pool messages (sent to sector 0 of the pool device). */
export const thinPoolMessage = {
  createThin: (id: number): string => `create_thin ${id}`,
  /** The origin must be suspended while this runs, if it is active. */
  createSnap: (id: number, originId: number): string => `create_snap ${id} ${originId}`,
  delete: (id: number): string => `delete ${id}`,
  /** Fails (EINVAL) unless the pool's id is `current`: the compare-and-swap behind crash recovery. */
  setTransactionId: (current: number, next: number): string => `set_transaction_id ${current} ${next}`,
  /** A read-only copy of the metadata for userspace to walk (EBUSY while one is held); the pool reports its block as the held root. */
  reserveMetadataSnap: 'reserve_metadata_snap',
  releaseMetadataSnap: 'release_metadata_snap',
};

export interface BlockUsage {
  used: number;
  total: number;
}

export type ThinPoolStatus =
  | {
    state: 'working';
    transactionId: number;
    /** In metadata blocks (4 KiB). */
    metadata: BlockUsage;
    /** In data blocks (the pool's block size). */
    data: BlockUsage;
    heldMetadataRoot: number | undefined;
    /** `ro`: metadata read-only after a failure; `out_of_data_space`: writes to unprovisioned blocks fail or queue. */
    mode: 'rw' | 'ro' | 'out_of_data_space';
    discardPassdown: boolean;
    noSpace: 'error' | 'queue';
    /** The metadata needs `thin_check` before the pool is fully usable again. */
    needsCheck: boolean;
    /** Free metadata blocks below which the kernel raises an event; absent before kernel 4.19. */
    metadataLowWatermark: number | undefined;
  }
  | { state: 'failed' }
  | { state: 'error' };

export class DmStatusError extends Error {
  override name = 'DmStatusError';
  constructor(readonly target: string, readonly line: string, problem: string) {
    super(`${target} status ${JSON.stringify(line)}: ${problem}`);
  }
}

function count(text: string | undefined, target: string, line: string, what: string): number {
  const value = text !== undefined && /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value)) throw new DmStatusError(target, line, `${what} is not a count`);
  return value;
}

function usage(text: string | undefined, target: string, line: string, what: string): BlockUsage {
  const [used, total] = (text ?? '').split('/');
  return { used: count(used, target, line, `${what} used`), total: count(total, target, line, `${what} total`) };
}

function oneOf<T extends string>(text: string | undefined, choices: readonly T[], target: string, line: string, what: string): T {
  if (text === undefined || !(choices as readonly string[]).includes(text)) throw new DmStatusError(target, line, `${what} is not one of ${choices.join(', ')}`);
  return text as T;
}

/** A thin-pool target's status line. */
export function parseThinPoolStatus(line: string): ThinPoolStatus {
  const target = 'thin-pool';
  const words = line.trim().split(/\s+/);
  if (words[0] === 'Fail') return { state: 'failed' };
  if (words[0] === 'Error') return { state: 'error' };
  if (words.length < 8) throw new DmStatusError(target, line, `expected at least 8 fields, got ${words.length}`);
  const [transaction, metadata, data, held, mode, discard, noSpace, needsCheck, lowWater] = words;
  return {
    state: 'working',
    transactionId: count(transaction, target, line, 'transaction id'),
    metadata: usage(metadata, target, line, 'metadata'),
    data: usage(data, target, line, 'data'),
    heldMetadataRoot: held === '-' ? undefined : count(held, target, line, 'held metadata root'),
    mode: oneOf(mode, ['rw', 'ro', 'out_of_data_space'] as const, target, line, 'mode'),
    discardPassdown: oneOf(discard, ['discard_passdown', 'no_discard_passdown'] as const, target, line, 'discard') === 'discard_passdown',
    noSpace: oneOf(noSpace, ['error_if_no_space', 'queue_if_no_space'] as const, target, line, 'no-space policy') === 'error_if_no_space' ? 'error' : 'queue',
    needsCheck: oneOf(needsCheck, ['needs_check', '-'] as const, target, line, 'needs_check') === 'needs_check',
    metadataLowWatermark: lowWater === undefined ? undefined : count(lowWater, target, line, 'metadata low watermark'),
  };
}

export type ThinStatus =
  | { state: 'working'; mappedSectors: number; highestMappedSector: number | undefined }
  | { state: 'failed' };

/** A thin target's status line: `<mapped sectors> <highest mapped sector>|-`, or `Fail`. */
export function parseThinStatus(line: string): ThinStatus {
  const target = 'thin';
  const words = line.trim().split(/\s+/);
  if (words[0] === 'Fail') return { state: 'failed' };
  if (words.length !== 2) throw new DmStatusError(target, line, `expected 2 fields, got ${words.length}`);
  return {
    state: 'working',
    mappedSectors: count(words[0], target, line, 'mapped sectors'),
    highestMappedSector: words[1] === '-' ? undefined : count(words[1], target, line, 'highest mapped sector'),
  };
}
