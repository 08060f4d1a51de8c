#!/usr/bin/env node
// Runs a shell script in a VM-lane guest, for poking at the lane by hand:
//   node scripts/vm/run.mjs [--disk IMG]... [--cpus N] [--mem MiB] [--timeout S] -- 'shell script'
//   node scripts/vm/run.mjs --file job.sh
// Prints the script's stdout/stderr and exits with its status. Needs the
// compiled helper (npm run build:ts); VOLAGENT_VM_VERBOSE=1 shows the console.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const { runInVm, vmLaneAvailable } = await import(pathToFileURL(path.join(root, 'dist', 'test', 'helpers', 'vm.js')).href);

const args = process.argv.slice(2);
const disks = [];
let cpus;
let memoryMiB;
let timeoutMs = 600_000;
let script;
while (args.length) {
  const a = args.shift();
  if (a === '--disk') disks.push(args.shift());
  else if (a === '--cpus') cpus = Number(args.shift());
  else if (a === '--mem') memoryMiB = Number(args.shift());
  else if (a === '--timeout') timeoutMs = Number(args.shift()) * 1000;
  else if (a === '--file') script = readFileSync(args.shift(), 'utf8');
  else if (a === '--') { script = args.join(' '); break; }
  else { console.error(`unknown argument ${a}`); process.exit(2); }
}
if (script === undefined) { console.error('usage: run.mjs [--disk IMG]... [--cpus N] [--mem MiB] [--timeout S] (--file F | -- SCRIPT)'); process.exit(2); }
const lane = vmLaneAvailable();
if (!lane.ok) { console.error(`VM lane unavailable: ${lane.reason}`); process.exit(2); }
const r = await runInVm({ script, disks, cpus, memoryMiB, timeoutMs });
process.stdout.write(r.stdout);
process.stderr.write(r.stderr);
console.error(`[vm] accel=${r.accel} exit=${r.exitCode} boot=${r.timings.bootMs}ms script=${r.timings.scriptMs}ms total=${r.timings.totalMs}ms`);
process.exit(r.exitCode);
