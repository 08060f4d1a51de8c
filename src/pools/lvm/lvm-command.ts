// lvm2's command line, the only way the `lvm` backend changes a volume group
// (docs/design.md "Pools"): `lvm <command> <args>` run without a shell, its
// reports read as JSON (`--reportformat json --units b --nosuffix`), so sizes
// are plain byte counts and no column is parsed from text.
//
// Contract relied on (lvm2 2.03, lvm(8), lvmreport(7)):
// - every command takes the VG's lock itself: commands may run concurrently;
// - a command that fails exits non-zero (5: ECMD_FAILED, 3: EINVALID_CMD_LINE)
//   and says why on stderr; the exit status does not say which failure it was,
//   so callers decide the errno from the VG's state read afterwards, never from
//   the message;
// - `lvs` of several LVs of which some are absent exits 5 but still writes a
//   complete JSON report of those present on stdout.
import { spawn } from 'node:child_process';

/** lvm2 refused or failed; `stderr` carries its words (for logs, never for decisions). */
export class LvmCommandError extends Error {
  override name = 'LvmCommandError';
  constructor(readonly command: string, readonly args: readonly string[], readonly exitCode: number | null, readonly stderr: string, readonly stdout: string) {
    super(`lvm ${command} exited ${exitCode ?? 'by a signal'}: ${stderr.trim().split('\n').filter((l) => !/^\s*WARNING:/.test(l)).join('; ') || '(no message)'}`);
  }
}

export interface LvmRunOutcome {
  stdout: string;
  stderr: string;
  exitCode: number | null;
}

/** The environment lvm2 runs in: fd warnings off (the agent's descriptors are inherited by design, not leaked). */
function lvmEnvironment(): NodeJS.ProcessEnv {
  return { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' };
}

/** Runs `lvm <command> <args>`; resolves whatever the exit status (see `lvm`). */
export function runLvm(command: string, args: readonly string[]): Promise<LvmRunOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn('lvm', [command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: lvmEnvironment() });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), exitCode: code }));
  });
}

/** Runs `lvm <command> <args>`; LvmCommandError unless it exits 0. */
export async function lvm(command: string, args: readonly string[]): Promise<string> {
  const outcome = await runLvm(command, args);
  if (outcome.exitCode !== 0) throw new LvmCommandError(command, args, outcome.exitCode, outcome.stderr, outcome.stdout);
  return outcome.stdout;
}

export type ReportRow = Record<string, string>;

/**
 * One report command (`lvs`, `vgs`) in JSON with byte sizes: the rows of its
 * first report section. `partial`: rows of the LVs found are an answer even
 * when others named are absent (exit 5 with a complete report).
 */
export async function lvmReport(command: 'lvs' | 'vgs', section: 'lv' | 'vg', fields: readonly string[], targets: readonly string[], partial = false): Promise<ReportRow[]> {
  const args = ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', fields.join(','), ...targets];
  const outcome = await runLvm(command, args);
  const rows = parseReport(outcome.stdout, section);
  if (outcome.exitCode !== 0 && !(partial && rows)) throw new LvmCommandError(command, args, outcome.exitCode, outcome.stderr, outcome.stdout);
  if (!rows) throw new LvmCommandError(command, args, outcome.exitCode, `no JSON report on stdout: ${outcome.stderr}`, outcome.stdout);
  return rows;
}

/** The rows of section `section` of a `--reportformat json` answer; undefined when it is not one. */
export function parseReport(stdout: string, section: string): ReportRow[] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdout);
  } catch {
    return undefined;
  }
  const report = (parsed as { report?: Array<Record<string, unknown>> }).report;
  if (!Array.isArray(report)) return undefined;
  const rows: ReportRow[] = [];
  for (const part of report) {
    const list = part[section];
    if (Array.isArray(list)) rows.push(...(list as ReportRow[]));
  }
  return rows;
}

/** A byte count from a `--units b --nosuffix` column; NaN when empty. */
export function bytesOf(value: string | undefined): number {
  return value === undefined || value === '' ? NaN : Number(value);
}
