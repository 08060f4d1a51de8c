// Health and capacity of a thin pool, from the thin-pool status line
// (dm-thin.ts parseThinPoolStatus): what the pool reports (capacity, health),
// the warning when free space falls to the low-water mark, and the refusal of
// new objects when the pool is full, read-only or failed.
import { isSystemError, systemError } from '../../native/system-error.js';
import type { PoolCapacity, PoolHealth } from '../pool.js';
import type { ThinPoolStatus } from '../../devices/dm-thin.js';
import type { PoolTarget } from './pool-target.js';

const HEALTH_CHECK_MS = 30_000;

export interface HealthWatchOptions {
  name: string;
  blockSizeBytes: number;
  /** Free data or metadata at or below this percentage is `lowWater`, and warned of. */
  lowWaterPercent: number;
  /** Free data or metadata below this percentage refuses new objects (ENOSPC). */
  minFreePercent: number;
  warn?: (fields: Record<string, unknown>, message: string) => void;
}

export class HealthWatch {
  private timer: NodeJS.Timeout | undefined;
  private lowWaterWarned = false;

  constructor(private readonly target: PoolTarget, private readonly options: HealthWatchOptions) {}

  /** Checks now, then every 30 s until stop(). */
  async start(): Promise<void> {
    await this.check();
    this.timer = setInterval(() => void this.check().catch(() => undefined), HEALTH_CHECK_MS).unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** A pool whose target failed reports its data device as full: nothing more can be allocated. */
  async capacity(): Promise<PoolCapacity> {
    const status = await this.target.status();
    if (status.state !== 'working') return { totalBytes: this.target.data!.sizeBytes, usedBytes: this.target.data!.sizeBytes, freeBytes: 0 };
    const totalBytes = status.data.total * this.options.blockSizeBytes;
    const usedBytes = status.data.used * this.options.blockSizeBytes;
    return {
      totalBytes, usedBytes, freeBytes: totalBytes - usedBytes,
      dataPercent: percent(status.data.used, status.data.total),
      metadataPercent: percent(status.metadata.used, status.metadata.total),
    };
  }

  async health(): Promise<PoolHealth> {
    const status = await this.target.status();
    if (status.state !== 'working') return { mode: status.state, needsCheck: false, lowWater: false };
    return { mode: status.mode, needsCheck: status.needsCheck, noSpace: status.noSpace, lowWater: this.isLowWater(status), transactionId: status.transactionId };
  }

  /**
   * New objects are refused (ENOSPC, nothing changed) when the pool is out
   * of data space or below the free-space floor, and (EROFS) when its
   * metadata went read-only or the target failed.
   */
  async refuseWhenFull(): Promise<void> {
    const status = await this.target.status();
    this.warnAtLowWater(status);
    if (status.state !== 'working' || status.mode === 'ro') throw systemError('EROFS', 'thin-pool', this.target.dmName);
    if (status.mode === 'out_of_data_space' || freePercent(status) < this.options.minFreePercent) throw systemError('ENOSPC', 'thin-pool', this.target.dmName);
  }

  /**
   * A write into a thin device of a pool out of data space fails with
   * ENOSPC (error_if_no_space), but a buffered write reports the failed
   * writeback at fsync as EIO. When the pool is out of data space, an EIO
   * is that: ENOSPC, with the EIO as its cause.
   */
  async writeFailureCause(error: unknown): Promise<unknown> {
    if (!isSystemError(error, 'EIO')) return error;
    const status = await this.target.status().catch(() => undefined);
    if (status?.state !== 'working' || status.mode !== 'out_of_data_space') return error;
    return Object.assign(systemError('ENOSPC', (error as NodeJS.ErrnoException).syscall ?? 'write', this.target.dmName), { cause: error });
  }

  private isLowWater(status: Extract<ThinPoolStatus, { state: 'working' }>): boolean {
    return freePercent(status) <= this.options.lowWaterPercent;
  }

  /** Logs a warning once each time free data or metadata falls to the low-water mark. */
  private async check(): Promise<void> {
    this.warnAtLowWater(await this.target.status());
  }

  private warnAtLowWater(status: ThinPoolStatus): void {
    if (status.state !== 'working') return;
    const low = this.isLowWater(status);
    if (low && !this.lowWaterWarned) {
      this.options.warn?.({
        pool: this.options.name, dataPercent: percent(status.data.used, status.data.total), metadataPercent: percent(status.metadata.used, status.metadata.total),
        lowWaterPercent: this.options.lowWaterPercent, mode: status.mode,
      }, 'thin pool free space is at or below its low-water mark');
    }
    this.lowWaterWarned = low;
  }
}

function percent(used: number, total: number): number {
  return total === 0 ? 0 : Math.round((used / total) * 10000) / 100;
}

/** The smaller of free data and free metadata, in percent: whichever runs out first stops the pool. */
function freePercent(status: Extract<ThinPoolStatus, { state: 'working' }>): number {
  return Math.min(100 - percent(status.data.used, status.data.total), 100 - percent(status.metadata.used, status.metadata.total));
}
