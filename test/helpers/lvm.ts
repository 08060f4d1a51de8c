// lvm2 as the VM lane's lvm tests use it by hand (test/vm/guest/lvm-*.ts):
// commands run without a shell, and the names the agent's LVs must have,
// written out here rather than taken from src/pools/lvm/lvm-names.ts so the
// tests check that encoding instead of repeating it.
import { spawnSync } from 'node:child_process';

/** Runs an lvm2 command; its stdout, or an error with its stderr. */
export function lvmRun(command: string, args: string[]): string {
  const result = spawnSync(command, args, { encoding: 'utf8', env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' } });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.status}: ${result.stderr}`);
  return result.stdout;
}

/** The LV of pool `pool`'s object `name` ('@' is `+a`, '_' is `+u`). */
export function agentLvName(pool: string, name: string): string {
  return `va.${pool}.${name.replace(/@/g, '+a').replace(/_/g, '+u')}`;
}

/** Names of the LVs in `vg` that carry pool `pool`'s tag, sorted. */
export function agentLvs(vg: string, pool: string): string[] {
  const report = JSON.parse(lvmRun('lvs', ['--reportformat', 'json', '-o', 'lv_name,lv_tags', vg])) as { report: Array<{ lv: Array<{ lv_name: string; lv_tags: string }> }> };
  return report.report[0]!.lv.filter((row) => row.lv_tags.split(',').includes(`volagent.pool.${pool}`)).map((row) => row.lv_name).sort();
}
