// `npm test`: runs every lane (unit, privileged, vm, openstack) with node-tap and prints
// one closing line "N passed, N failed, N skipped".
//
// As root, the Debian packages a lane needs are installed when missing. Not
// root, the privileged and vm lanes are skipped with the reason. With CI=true
// a skipped lane, a skipped test or a lane that ran nothing is a failure.
//
//   npm test                  every lane
//   npm test -- --lane unit   one lane (repeatable)
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ci = ['true', '1'].includes(process.env.CI ?? '');
const isRoot = process.getuid?.() === 0;

const LANES = [
  { name: 'unit', dir: 'dist/test/unit', timeout: 120, jobs: 2, packages: ['thin-provisioning-tools'] },
  { name: 'privileged', dir: 'dist/test/privileged', timeout: 600, jobs: 1, packages: ['xfsprogs', 'btrfs-progs', 'e2fsprogs', 'util-linux', 'libnbd-bin', 'qemu-utils', 'openssl', 'socat', 'systemd', 'python3-prometheus-client', 'curl', 'tmux', 'iproute2', 'procps'], root: true },
  // Debian's Cinder (and in the openstack lane its Glance), run as plain processes by the tests
  // (test/helpers/openstack.ts), or imported by the driver's Python tests in a VM guest
  // (test/vm/lvm-driver.test.ts): installed with their recommended packages, as an operator's
  // `apt install` does, and with services kept from starting (policy-rc.d).
  { name: 'vm', dir: 'dist/test/vm', timeout: 900, jobs: 1, packages: ['qemu-system-x86', 'linux-image-amd64', 'busybox-static', 'util-linux', 'thin-provisioning-tools', 'libnbd-bin', 'qemu-utils', 'systemd', 'xfsprogs', 'dmsetup', 'lvm2'], root: true, stackPackages: ['python3-cinder'] },
  { name: 'openstack', dir: 'dist/test/openstack', timeout: 2400, jobs: 1, packages: [], root: true, stackPackages: ['cinder-api', 'cinder-scheduler', 'cinder-volume', 'glance-api', 'rabbitmq-server', 'python3-cinderclient', 'python3-glanceclient', 'dmidecode', 'xfsprogs', 'e2fsprogs', 'curl', 'util-linux', 'qemu-utils', 'sudo', 'libnbd-bin', 'iproute2', 'procps', 'mariadb-server', 'python3-pymysql'] },
];

function missingPackages(packages) {
  return packages.filter((name) => {
    const q = spawnSync('dpkg-query', ['-W', '-f=${Status}', name], { encoding: 'utf8' });
    return q.status !== 0 || !q.stdout.includes('install ok installed');
  });
}

let aptUpdated = false;
const POLICY_RC_D = '/usr/sbin/policy-rc.d';
function installPackages(packages, { noServiceStart = false, recommends = false } = {}) {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  if (!aptUpdated) {
    const update = spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
    if (update.status !== 0) return 'apt-get update failed';
    aptUpdated = true;
  }
  console.log(`# installing Debian packages: ${packages.join(' ')}`);
  // policy-rc.d answering 101 ("action forbidden") keeps invoke-rc.d from starting what the packages install.
  const ownPolicy = noServiceStart && !existsSync(POLICY_RC_D);
  if (ownPolicy) writeFileSync(POLICY_RC_D, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  try {
    const install = spawnSync('apt-get', ['install', '-y', '-qq', ...(recommends ? [] : ['--no-install-recommends']), ...packages], { stdio: 'inherit', env });
    return install.status === 0 ? undefined : `apt-get install ${packages.join(' ')} failed`;
  } finally {
    if (ownPolicy) rmSync(POLICY_RC_D, { force: true });
  }
}

/** Why the lane cannot run here, or undefined when it can (after installing what it needs). */
function prepare(lane) {
  if (lane.root && !isRoot) return 'needs root (loop devices, mounts, qemu with host devices)';
  const missing = missingPackages(lane.packages);
  const missingStack = missingPackages(lane.stackPackages ?? []);
  if (missing.length + missingStack.length > 0 && !isRoot) return `needs Debian packages: ${[...missing, ...missingStack].join(' ')}`;
  if (missing.length > 0) {
    const failure = installPackages(missing);
    if (failure) return failure;
  }
  if (missingStack.length > 0) {
    const failure = installPackages(missingStack, { noServiceStart: true, recommends: true });
    if (failure) return failure;
  }
  return undefined;
}

function testFiles(dir) {
  const abs = path.join(root, dir);
  if (!existsSync(abs)) return [];
  return readdirSync(abs, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.test.js'))
    .sort()
    .map((f) => path.join(dir, f));
}

async function sweep() {
  // Agents left in a killed run's namespaces hold its loop filesystems: the namespaces go first.
  const { sweepNamespaces } = await import(path.join(root, 'dist/test/helpers/netns.js'));
  for (const line of await sweepNamespaces()) console.log(`# swept leftover ${line}`);
  const { sweepLeftovers } = await import(path.join(root, 'dist/test/helpers/loop-fs.js'));
  for (const line of await sweepLeftovers()) console.log(`# swept leftover ${line}`);
}

/** Runs tap on the files, echoing its TAP stream, and reads the final `# { total: ... }` summary. */
function runTap(lane, files) {
  const tap = path.join(root, 'node_modules', '.bin', 'tap');
  const args = ['--reporter=tap', `--timeout=${lane.timeout}`, `--jobs=${lane.jobs}`, '--disable-coverage', ...files];
  return new Promise((resolve) => {
    const child = spawn(tap, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, VOLAGENT_LANE: lane.name } });
    let tail = '';
    child.stdout.on('data', (chunk) => {
      process.stdout.write(chunk);
      tail = (tail + chunk.toString()).slice(-4096);
    });
    child.on('close', (code) => {
      const summary = [...tail.matchAll(/^# \{ (total: .*) \}$/gm)].at(-1)?.[1] ?? '';
      const count = (key) => Number(new RegExp(`\\b${key}: (\\d+)`).exec(summary)?.[1] ?? 0);
      resolve({ code: code ?? 1, total: count('total'), pass: count('pass'), fail: count('fail'), skip: count('skip'), todo: count('todo') });
    });
  });
}

const { values } = parseArgs({ options: { lane: { type: 'string', multiple: true } } });
const chosen = values.lane ?? LANES.map((l) => l.name);
const unknown = chosen.filter((name) => !LANES.some((l) => l.name === name));
if (unknown.length > 0) {
  console.error(`unknown lane(s): ${unknown.join(', ')}; lanes: ${LANES.map((l) => l.name).join(', ')}`);
  process.exit(2);
}

const totals = { passed: 0, failed: 0, skipped: 0 };
const problems = [];
for (const lane of LANES.filter((l) => chosen.includes(l.name))) {
  console.log(`# lane ${lane.name}`);
  const reason = prepare(lane);
  if (reason) {
    console.log(`# lane ${lane.name} skipped: ${reason}`);
    totals.skipped += 1;
    if (ci) problems.push(`lane ${lane.name} skipped under CI: ${reason}`);
    continue;
  }
  if (lane.root) await sweep();
  const files = testFiles(lane.dir);
  if (files.length === 0) {
    problems.push(`lane ${lane.name} has no test files in ${lane.dir} (did the build run?)`);
    continue;
  }
  const result = await runTap(lane, files);
  totals.passed += result.pass;
  totals.failed += result.fail;
  totals.skipped += result.skip;
  console.log(`# lane ${lane.name}: ${result.pass} passed, ${result.fail} failed, ${result.skip} skipped, ${result.todo} todo`);
  if (result.code !== 0) problems.push(`lane ${lane.name}: tap exited ${result.code}`);
  if (result.total === 0) problems.push(`lane ${lane.name} ran no test`);
  if (ci && result.skip > 0) problems.push(`lane ${lane.name}: ${result.skip} skipped under CI`);
  if (ci && result.todo > 0) problems.push(`lane ${lane.name}: ${result.todo} todo under CI`);
}

for (const problem of problems) console.log(`# FAILED: ${problem}`);
console.log(`${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
process.exit(problems.length > 0 || totals.failed > 0 ? 1 : 0);
