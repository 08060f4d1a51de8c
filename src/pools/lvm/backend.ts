// The `lvm` backend's config and constructor (docs/config.md "lvm pools"):
// an existing volume group's existing thin pool (src/pools/lvm/lvm-pool.ts).
// The agent neither makes nor changes the VG or the thin pool; it makes,
// changes and removes only its own thin LVs in it.
import type { PoolBackend } from '../backend.js';
import type { PoolConfig } from '../pool-config.js';
import { LvmPool } from './lvm-pool.js';

export interface LvmPoolConfig extends PoolConfig {
  backend: 'lvm';
  /** The volume group (`vg`). */
  vg: string;
  /** The thin pool LV in it (`thin_pool`). */
  thinPool: string;
  /** Free data or metadata at or below this logs a warning and is reported as `lowWater` (`low_water`). */
  lowWaterPercent: number;
  /** Free data or metadata below this refuses new volumes with INSUFFICIENT_SPACE (`min_free`). */
  minFreePercent: number;
}

/** lvm2's VG and LV names: [A-Za-z0-9+_.-], not starting with '-', not '.' or '..' (lvm(8) "VALID NAMES"). */
const LVM_NAME = /^(?!-)(?!\.{1,2}$)[A-Za-z0-9+_.-]{1,127}$/;

export const lvmBackend: PoolBackend<LvmPoolConfig> = {
  name: 'lvm',
  usesLedger: false,
  readConfig(table, common) {
    const vg = table.string('vg');
    if (!LVM_NAME.test(vg)) table.fail('vg', 'must be an LVM volume group name ([A-Za-z0-9+_.-], not starting with "-")');
    const thinPool = table.string('thin_pool');
    if (!LVM_NAME.test(thinPool)) table.fail('thin_pool', 'must be an LVM logical volume name ([A-Za-z0-9+_.-], not starting with "-")');
    return {
      ...common, backend: 'lvm', vg, thinPool,
      lowWaterPercent: table.percent('low_water', '10%'),
      minFreePercent: table.percent('min_free', '5%'),
    };
  },
  create(config, context) {
    const { name, vg, thinPool, lowWaterPercent, minFreePercent } = config;
    return new LvmPool({ name, vg, thinPool, lowWaterPercent, minFreePercent, ...(context.warn ? { warn: context.warn } : {}) });
  },
  location: (config) => `${config.vg}/${config.thinPool}`,
  serviceAccess() {
    // lvm2 reads every block device when it looks for the VG's PVs and writes
    // the VG's metadata to each PV at every change; which devices those are
    // changes with vgextend, so the unit allows block devices by group, not
    // today's PV paths. It keeps its locks under /run/lock/lvm, its cache
    // under /run/lvm, and a backup and archive of the VG's metadata under
    // /etc/lvm (ProtectSystem=strict makes /etc read-only otherwise).
    return { readWritePaths: ['-/etc/lvm', '-/run/lvm', '-/run/lock/lvm'], devices: [], deviceGroups: ['block-*'] };
  },
};
