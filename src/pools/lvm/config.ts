// The `lvm` pool's configuration (docs/config.md "lvm pools"): an existing
// volume group's existing thin pool. The agent neither makes nor changes the
// VG or the thin pool; it makes, changes and removes only its own thin LVs in it.
import type { ImageCacheConfig } from '../pool-config.js';

export interface LvmPoolConfig {
  name: string;
  backend: 'lvm';
  /** The volume group (`vg`). */
  vg: string;
  /** The thin pool LV in it (`thin_pool`). */
  thinPool: string;
  /** Free data or metadata at or below this logs a warning and is reported as `lowWater` (`low_water`). */
  lowWaterPercent: number;
  /** Free data or metadata below this refuses new volumes with 507 (`min_free`). */
  minFreePercent: number;
  maxImageBytes?: number;
  imageCache?: ImageCacheConfig;
}

/** The reads of one `[[pools]]` table that this reader needs (the daemon's TableReader). */
export interface PoolTableReader {
  name(key: string): string;
  string(key: string, fallback?: string): string;
  percent(key: string, fallback?: string): number;
  fail(key: string, problem: string): never;
}

/** lvm2's VG and LV names: [A-Za-z0-9+_.-], not starting with '-', not '.' or '..' (lvm(8) "VALID NAMES"). */
const LVM_NAME = /^(?!-)(?!\.{1,2}$)[A-Za-z0-9+_.-]{1,127}$/;

/** The backend keys of an `lvm` pool; the daemon reads the keys every pool has (max_image_bytes, image_cache). */
export function readLvmPoolConfig(pool: PoolTableReader): LvmPoolConfig {
  const name = pool.name('name');
  const vg = pool.string('vg');
  if (!LVM_NAME.test(vg)) pool.fail('vg', 'must be an LVM volume group name ([A-Za-z0-9+_.-], not starting with "-")');
  const thinPool = pool.string('thin_pool');
  if (!LVM_NAME.test(thinPool)) pool.fail('thin_pool', 'must be an LVM logical volume name ([A-Za-z0-9+_.-], not starting with "-")');
  return {
    name, backend: 'lvm', vg, thinPool,
    lowWaterPercent: pool.percent('low_water', '10%'),
    minFreePercent: pool.percent('min_free', '5%'),
  };
}
