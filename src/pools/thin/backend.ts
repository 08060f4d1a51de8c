// The thin backend's config and constructor: a dm-thin pool the agent owns,
// on a data and a metadata device (src/pools/thin/thin-pool.ts).
import type { PoolBackend } from '../backend.js';
import type { PoolConfig } from '../pool-config.js';
import { ThinPool } from './thin-pool.js';

export interface ThinPoolConfig extends PoolConfig {
  backend: 'thin';
  dataDevice: string;
  metadataDevice: string;
  blockSizeBytes: number;
  /** Free data or metadata at or below this logs a warning (and is the kernel's low-water mark for data). */
  lowWaterPercent: number;
  /** Free data or metadata below this refuses new volumes with 507 (`min_free`). */
  minFreePercent: number;
  /** Writes to a full pool fail at once instead of queueing (`error_if_no_space`). */
  errorIfNoSpace: boolean;
  /** Where the agent makes its device nodes: `<deviceDir>/<pool>/<volume>` (`device_dir`). */
  deviceDir: string;
}

/** dm-thin's data block size: a multiple of 64 KiB (128 sectors) from 64 KiB to 1 GiB. */
const MIN_BLOCK_BYTES = 64 * 1024;
const MAX_BLOCK_BYTES = 1024 * 1024 * 1024;

export const thinBackend: PoolBackend<ThinPoolConfig> = {
  name: 'thin',
  usesLedger: true,
  readConfig(table, common) {
    const blockSizeBytes = table.bytes('block_size', '64KiB')!;
    if (blockSizeBytes < MIN_BLOCK_BYTES || blockSizeBytes > MAX_BLOCK_BYTES || blockSizeBytes % MIN_BLOCK_BYTES !== 0) {
      table.fail('block_size', 'must be a multiple of 64KiB from 64KiB to 1GiB (dm-thin data block size)');
    }
    return {
      ...common, backend: 'thin', blockSizeBytes,
      dataDevice: table.path('data_device'),
      metadataDevice: table.path('metadata_device'),
      lowWaterPercent: table.percent('low_water', '10%'),
      minFreePercent: table.percent('min_free', '5%'),
      errorIfNoSpace: table.boolean('error_if_no_space', true),
      deviceDir: table.path('device_dir', '/dev/volagent'),
    };
  },
  create(config, context) {
    if (!context.ledger) throw new Error(`pool '${config.name}': a thin pool needs the catalog's ledger`);
    const { name, dataDevice, metadataDevice, blockSizeBytes, lowWaterPercent, minFreePercent, errorIfNoSpace, deviceDir } = config;
    return new ThinPool({
      name, dataDevice, metadataDevice, blockSizeBytes, lowWaterPercent, minFreePercent, errorIfNoSpace, deviceDir,
      ledger: context.ledger, ...(context.warn ? { warn: context.warn } : {}),
    });
  },
  serviceAccess(config) {
    // A block device is allowed by path; a file (development, bound to a loop device) must also be writable.
    const devices = [config.dataDevice, config.metadataDevice];
    return { readWritePaths: devices.filter((device) => !device.startsWith('/dev/')), devices: devices.filter((device) => device.startsWith('/dev/')) };
  },
};
