// `npm run bench -- all [--quick]`: every other benchmark this machine can
// run, one at a time, each in its own process (`node scripts/bench.mjs NAME`
// with this script's other arguments), its output shown and kept in
// DIR/NAME.log and its JSON line saved as DIR/NAME.json. Then one table of
// every goal the benches judged (their JSON lines' `verdicts`), a line per
// bench not run with the reason, and a line per bench that failed; DIR/all.json
// holds all of it.
//   --out=DIR     default $VOLAGENT_TEST_ROOT-bench-all: beside the test root,
//                 not in it, since the clone bench and the test lanes sweep
//                 the test root away
//   --only=a,b    these benches only;  --skip=a,b  all but these
// Exit code 0 when every bench run gave its JSON line, goals met or not; 1
// when one failed; 2 for a bad argument; 130 when interrupted.
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { formatTable } from '../src/cli/table.js';
import { REPO_ROOT } from '../test/helpers/agent.js';
import { TEST_ROOT } from '../test/helpers/loop-fs.js';
import { stackMissing } from '../test/helpers/openstack.js';
import { rootMissing } from '../test/helpers/privileged.js';
import { vmLaneAvailable, which } from '../test/helpers/vm.js';
import type { Verdict } from './lib.js';
import { metText, withUnit } from './lib.js';

/** The benches, in the order they run: the cheap ones first. */
export const BENCHES = ['clone', 'api', 'images', 'nbd', 'remote', 'thin', 'lvm', 'openstack'] as const;
export type BenchName = typeof BENCHES[number];

const BENCH_SCRIPT = path.join(REPO_ROOT, 'scripts', 'bench.mjs');
const DEFAULT_OUT = `${path.resolve(TEST_ROOT)}-bench-all`;

/** The Debian package of each command MISSING looks for. */
const PACKAGE_OF: Record<string, string> = {
  'mkfs.xfs': 'xfsprogs', xfs_io: 'xfsprogs', 'mkfs.ext4': 'e2fsprogs', curl: 'curl', ip: 'iproute2', time: 'time',
  nbdcopy: 'libnbd-bin', nbdinfo: 'libnbd-bin', 'qemu-nbd': 'qemu-utils', nbdkit: 'nbdkit', lvm: 'lvm2', lvcreate: 'lvm2',
};

function commandsMissing(commands: string[]): string | undefined {
  const missing = commands.filter((command) => which(command) === undefined);
  if (missing.length === 0) return undefined;
  return `not installed: ${missing.map((command) => `${command} (Debian package ${PACKAGE_OF[command]})`).join(', ')}`;
}

function vmLaneMissing(): string | undefined {
  const lane = vmLaneAvailable();
  return lane.ok ? undefined : lane.reason;
}

/** Why this machine cannot run each bench (what the bench's `needs` names), or undefined when it can. */
const MISSING: Record<BenchName, () => string | undefined> = {
  clone: () => rootMissing() ?? commandsMissing(['mkfs.xfs', 'mkfs.ext4', 'xfs_io']),
  api: () => rootMissing() ?? commandsMissing(['mkfs.xfs', 'mkfs.ext4']),
  images: () => rootMissing() ?? commandsMissing(['mkfs.xfs', 'curl']),
  nbd: () => rootMissing() ?? commandsMissing(['mkfs.xfs', 'nbdcopy', 'nbdinfo', 'qemu-nbd', 'nbdkit']),
  remote: () => rootMissing() ?? commandsMissing(['ip', 'mkfs.xfs', 'qemu-nbd', 'nbdcopy', 'nbdinfo', 'time']),
  thin: () => vmLaneMissing() ?? commandsMissing(['lvcreate']),
  lvm: () => vmLaneMissing() ?? commandsMissing(['lvm']),
  openstack: stackMissing,
};

export interface AllOptions {
  benches: BenchName[];
  outDir: string;
  /** The arguments for each bench: all but --only, --skip and --out. */
  benchArgs: string[];
}

/** This script's arguments; a RangeError names an unknown bench. */
export function parseAllArgs(args: string[]): AllOptions {
  const listed = (flag: string): string[] => args
    .filter((a) => a.startsWith(`--${flag}=`))
    .flatMap((a) => a.slice(flag.length + 3).split(','))
    .filter(Boolean);
  const only = listed('only');
  const skip = listed('skip');
  const unknown = [...only, ...skip].filter((name) => !(BENCHES as readonly string[]).includes(name));
  if (unknown.length > 0) throw new RangeError(`unknown bench ${unknown.join(', ')}; benches: ${BENCHES.join(', ')}`);
  return {
    benches: BENCHES.filter((name) => (only.length === 0 || only.includes(name)) && !skip.includes(name)),
    outDir: path.resolve(args.find((a) => a.startsWith('--out='))?.slice('--out='.length) ?? DEFAULT_OUT),
    benchArgs: args.filter((a) => !/^--(only|skip|out)=/.test(a)),
  };
}

/** The last line of `output` that is a JSON object, parsed; undefined when there is none. */
export function lastJsonObject(output: string): Record<string, unknown> | undefined {
  for (const line of output.split('\n').reverse()) {
    if (!line.trimStart().startsWith('{')) continue;
    try {
      const value: unknown = JSON.parse(line);
      if (value !== null && typeof value === 'object' && !Array.isArray(value)) return value as Record<string, unknown>;
    } catch {
      // a human line that starts with a brace
    }
  }
  return undefined;
}

/** A JSON line's `verdicts` (a null figure, not measured, back to NaN); undefined when it has none or one is malformed. */
export function verdictsOf(json: Record<string, unknown>): Verdict[] | undefined {
  const list = json.verdicts;
  if (!Array.isArray(list)) return undefined;
  const wellFormed = list.every((v: Partial<Record<keyof Verdict, unknown>> | null) => v !== null && typeof v === 'object'
    && typeof v.measure === 'string' && (typeof v.figure === 'number' || v.figure === null)
    && typeof v.unit === 'string' && typeof v.goal === 'string' && typeof v.met === 'boolean');
  return wellFormed ? (list as Array<Verdict & { figure: number | null }>).map((v) => ({ ...v, figure: v.figure ?? NaN })) : undefined;
}

export type Outcome =
  | { bench: BenchName; status: 'ran'; verdicts: Verdict[]; log: string; result: Record<string, unknown> }
  | { bench: BenchName; status: 'not run'; reason: string }
  | { bench: BenchName; status: 'failed'; reason: string; log: string };

/** A bench run's outcome from its exit code and standard output: it ran when it exited 0 with a JSON line carrying verdicts. */
export function outcomeOf(bench: BenchName, exitCode: number, stdout: string, log: string): Outcome {
  const result = lastJsonObject(stdout);
  const verdicts = result && verdictsOf(result);
  if (exitCode === 0 && result && verdicts) return { bench, status: 'ran', verdicts, log, result };
  const problems = [
    ...(exitCode !== 0 ? [`exit ${exitCode}`] : []),
    ...(result ? (verdicts ? [] : ['no verdicts in its JSON line']) : ['no JSON line']),
  ];
  return { bench, status: 'failed', reason: problems.join(', '), log };
}

/** The closing report: one table of every verdict, then the benches not run and those that failed, then a count. */
export function report(outcomes: Outcome[]): string {
  const rows: string[][] = [];
  const lines: string[] = [];
  let met = 0;
  for (const o of outcomes) {
    if (o.status === 'ran') {
      for (const v of o.verdicts) rows.push([o.bench, v.measure, withUnit(v.figure, v.unit), v.goal, metText(v.met)]);
      met += o.verdicts.filter((v) => v.met).length;
    } else if (o.status === 'not run') {
      lines.push(`NOT RUN  ${o.bench}: ${o.reason}\n`);
    } else {
      lines.push(`FAILED   ${o.bench}: ${o.reason}; log ${o.log}\n`);
    }
  }
  const count = (status: Outcome['status']): number => outcomes.filter((o) => o.status === status).length;
  const summary = `${met} of ${rows.length} goals met; benches: ${count('ran')} ran, ${count('not run')} not run, ${count('failed')} failed\n`;
  return formatTable(['bench', 'measure', { header: 'figure', align: 'right' }, 'goal', 'result'], rows) + lines.join('') + summary;
}

/**
 * Runs `node scripts/bench.mjs NAME ARGS` from the repo root, its output to
 * this process's and to `logFile`. SIGINT and SIGTERM are passed on to it
 * while it runs (it cleans up and exits), and mark the run interrupted.
 */
async function runLogged(bench: BenchName, args: string[], logFile: string): Promise<{ exitCode: number; stdout: string; interrupted: boolean }> {
  const log = createWriteStream(logFile);
  const child = spawn(process.execPath, [BENCH_SCRIPT, bench, ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let interrupted = false;
  child.stdout.setEncoding('utf8').on('data', (text: string) => { process.stdout.write(text); log.write(text); stdout += text; });
  child.stderr.setEncoding('utf8').on('data', (text: string) => { process.stderr.write(text); log.write(text); });
  const forward = (signal: NodeJS.Signals): void => { interrupted = true; child.kill(signal); };
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  try {
    const exitCode = await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code, signal) => resolve(code ?? 128 + (signal ? os.constants.signals[signal] : 0)));
    });
    return { exitCode, stdout, interrupted };
  } finally {
    process.off('SIGINT', forward);
    process.off('SIGTERM', forward);
    await new Promise<void>((resolve) => log.end(resolve));
  }
}

export async function main(args: string[]): Promise<number> {
  let options: AllOptions;
  try {
    options = parseAllArgs(args);
  } catch (error) {
    console.error(`bench all: ${(error as Error).message}`);
    return 2;
  }
  const { benches, outDir, benchArgs } = options;
  await mkdir(outDir, { recursive: true });
  const startedAt = new Date().toISOString();
  const outcomes: Outcome[] = [];
  let interrupted = false;
  for (const bench of benches) {
    const jsonFile = path.join(outDir, `${bench}.json`);
    await rm(jsonFile, { force: true }); // an earlier run's figures must not pass for this run's
    const reason = MISSING[bench]();
    if (reason !== undefined) {
      console.log(`bench all: ${bench} NOT RUN: ${reason}`);
      outcomes.push({ bench, status: 'not run', reason });
      continue;
    }
    const log = path.join(outDir, `${bench}.log`);
    console.log(`bench all: ${[bench, ...benchArgs].join(' ')} (its output also in ${log})`);
    const run = await runLogged(bench, benchArgs, log);
    const outcome = outcomeOf(bench, run.exitCode, run.stdout, log);
    if (outcome.status === 'ran') await writeFile(jsonFile, `${JSON.stringify(outcome.result)}\n`);
    outcomes.push(outcome);
    if (run.interrupted) {
      interrupted = true;
      break;
    }
  }
  await writeFile(path.join(outDir, 'all.json'), `${JSON.stringify({ bench: 'all', startedAt, args, outDir, interrupted, outcomes }, null, 2)}\n`);
  console.log(`\n${report(outcomes)}${interrupted ? 'interrupted: the benches after it did not run\n' : ''}results: ${outDir}`);
  if (interrupted) return 130;
  return outcomes.some((o) => o.status === 'failed') ? 1 : 0;
}
