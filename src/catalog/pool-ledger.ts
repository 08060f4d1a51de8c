// The catalog as the ledger of the backends that keep state in it
// (PoolContext.ledger; today the thin backend: src/pools/thin/ledger.ts). Reads go to
// the agent's connection; writes go through `writes`: inline while the
// daemon starts (pools open before anything is served), then, once the agent
// runs its catalog writer thread, through that thread (`writeThrough`).
import type { NewThinPool, PendingThinChange, ThinChange, ThinDeviceRecord, ThinLedger, ThinPoolRecord } from '../pools/thin/ledger.js';
import type { Catalog } from './catalog.js';
import type { CatalogWrites } from './writes.js';
import { inlineWrites } from './writes.js';

export class CatalogPoolLedger implements ThinLedger {
  private writes: CatalogWrites;

  constructor(private readonly catalog: Catalog) {
    this.writes = inlineWrites(catalog);
  }

  /** From now on, writes go through `writes` (the agent's writer thread). */
  writeThrough(writes: CatalogWrites): void {
    this.writes = writes;
  }

  pool(pool: string): ThinPoolRecord | undefined {
    return this.catalog.thinPool(pool);
  }

  devices(pool: string): ThinDeviceRecord[] {
    return this.catalog.thinDevices(pool);
  }

  device(pool: string, name: string): ThinDeviceRecord | undefined {
    return this.catalog.thinDevice(pool, name);
  }

  async recordPool(record: NewThinPool): Promise<void> {
    await this.writes.recordThinPool(record);
  }

  async markPoolReady(pool: string): Promise<void> {
    await this.writes.markThinPoolReady(pool);
  }

  begin(pool: string, change: ThinChange): Promise<PendingThinChange> {
    return this.writes.beginThinChange(pool, change);
  }

  async commit(pool: string): Promise<void> {
    await this.writes.commitThinChange(pool);
  }

  async abandon(pool: string): Promise<void> {
    await this.writes.abandonThinChange(pool);
  }

  async updateDevice(pool: string, name: string, changes: { sizeBytes?: number; readOnly?: boolean }): Promise<void> {
    await this.writes.updateThinDevice(pool, name, changes);
  }
}
