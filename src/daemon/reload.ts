// What a config reload (SIGHUP) may change while the agent runs: pools can be
// added. Everything else (a pool's settings, a removed pool, the control
// socket, the catalog, NBD addresses, agent settings) needs a restart, and is
// refused with a line saying so; the agent goes on as configured before.
import type { PoolConfig } from '../pools/pool-config.js';
import type { AgentConfig } from './config.js';

export interface ReloadPlan {
  /** Pools in the new config and not in the running one. */
  added: PoolConfig[];
  /** Why each other difference is not applied. */
  refused: string[];
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export function planReload(running: AgentConfig, next: AgentConfig): ReloadPlan {
  const refused: string[] = [];
  const before = new Map(running.pools.map((pool) => [pool.name, pool]));
  const after = new Map(next.pools.map((pool) => [pool.name, pool]));
  for (const [name, pool] of before) {
    const changed = after.get(name);
    if (!changed) refused.push(`pool ${name} is no longer in the config: removing a pool needs a restart; it is still served`);
    else if (!same(pool, changed)) refused.push(`pool ${name} changed: changing a pool needs a restart; it is served as before`);
  }
  const sections: Array<[string, unknown, unknown]> = [
    ['[control]', running.control, next.control],
    ['[catalog]', running.catalog, next.catalog],
    ['[nbd]', running.nbd, next.nbd],
    ['[agent]', [running.internalTenant, running.lockWaitMs, running.keepFinishedOperations], [next.internalTenant, next.lockWaitMs, next.keepFinishedOperations]],
  ];
  for (const [section, was, is] of sections) {
    if (!same(was, is)) refused.push(`${section} changed: it needs a restart; the running settings stay`);
  }
  return { added: next.pools.filter((pool) => !before.has(pool.name)), refused };
}
