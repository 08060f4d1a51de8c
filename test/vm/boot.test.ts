// Proves the VM lane: the Debian 6.1 kernel boots under qemu with
// device-mapper, the host's node and the repo's addon run in the guest, exit
// statuses come back, and no qemu outlives a run.
// Needs about 40 s under TCG on 2 cores (4 boots); the timeout is set below.
import { readFileSync, readdirSync } from 'node:fs';
import { open, rm, mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import t from 'tap';

import { liveVmPids, repoRoot, runGuestTests, runInVm, vmLaneAvailable, VmError } from '../helpers/vm.js';

/** pids of qemu processes whose parent is this process. */
function ourQemuChildren(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const m = /^\d+ \((.*)\) \S (\d+)/.exec(stat);
      if (m && m[2] === String(process.pid) && m[1]?.startsWith('qemu')) pids.push(Number(name));
    } catch {
      /* exited meanwhile */
    }
  }
  return pids;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function field(stdout: string, key: string): string | undefined {
  const m = new RegExp(`^${key}=(.*)$`, 'm').exec(stdout);
  return m?.[1];
}

const lane = vmLaneAvailable();
if (!lane.ok) {
  console.log(`# VM lane unavailable: ${lane.reason}`);
  t.plan(0, `VM lane unavailable: ${lane.reason}`);
} else {
  t.setTimeout(240_000);

  t.test('boots the 6.1 kernel with device-mapper; node and the addon run in the guest', async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'volagent-boot-test-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const diskA = path.join(dir, 'a.img');
    const diskB = path.join(dir, 'b.img');
    for (const [file, mib] of [[diskA, 16], [diskB, 8]] as const) {
      const fh = await open(file, 'w');
      await fh.truncate(mib * 1024 * 1024);
      await fh.close();
    }
    const script = `
read t0 _ </proc/uptime
echo "uname=$(uname -r)"
echo "cwd=$(pwd)"
[ -c /dev/mapper/control ] && echo control=char || echo control=missing
grep -q ' device-mapper$' /proc/misc && echo misc=yes || echo misc=no
grep -q '^dm_thin_pool ' /proc/modules && echo thin=loaded || echo thin=missing
echo "node=$(node --version)"
read t1 _ </proc/uptime
node -e "import('./dist/src/native/binding.js').then(async b => console.log('dm=' + JSON.stringify(await b.native.dmVersion()) + '\\ndmlist=' + JSON.stringify(await b.native.dmListDevices())))"
echo "dmrc=$?"
read t2 _ </proc/uptime
echo "vda=$(cat /sys/block/vda/size) $(cat /sys/block/vda/serial)"
echo "vdb=$(cat /sys/block/vdb/size)"
printf 'written-in-guest' | dd of=/dev/vda bs=512 conv=notrunc,fsync 2>/dev/null && echo ddrc=0
echo hello >"$VOLAGENT_VM_OUT/hello.txt"
echo "times=$t0 $t1 $t2"
`;
    const r = await runInVm({ script, disks: [{ path: diskA, serial: 'volagent-a' }, diskB], timeoutMs: 180_000 });
    t.comment(`accel=${r.accel} boot=${r.timings.bootMs}ms script=${r.timings.scriptMs}ms total=${r.timings.totalMs}ms`);
    const times = (field(r.stdout, 'times') ?? '').split(' ').map(Number);
    if (times.length === 3) {
      t.comment(`guest: node --version ${Math.round(((times[1] ?? 0) - (times[0] ?? 0)) * 1000)}ms, node -e dmVersion ${Math.round(((times[2] ?? 0) - (times[1] ?? 0)) * 1000)}ms`);
    }
    t.equal(r.exitCode, 0, 'script exit status', { stdout: r.stdout, stderr: r.stderr });
    t.equal(field(r.stdout, 'uname'), lane.kernel, 'uname -r is the booted kernel');
    t.match(field(r.stdout, 'uname') ?? '', /^6\.1\./, 'the 6.1 kernel');
    t.not(field(r.stdout, 'uname'), os.release(), 'not the host kernel');
    t.equal(field(r.stdout, 'cwd'), repoRoot, 'cwd is the repo root');
    t.equal(field(r.stdout, 'control'), 'char', '/dev/mapper/control exists');
    t.equal(field(r.stdout, 'misc'), 'yes', '/proc/misc lists device-mapper');
    t.equal(field(r.stdout, 'thin'), 'loaded', 'dm_thin_pool is loaded');
    t.equal(field(r.stdout, 'node'), process.version, "node --version is the host's node");
    t.equal(field(r.stdout, 'dmrc'), '0', 'node -e with the addon exits 0', { stderr: r.stderr });
    const dm = JSON.parse(field(r.stdout, 'dm') ?? 'null') as { major: number; minor: number; patch: number } | null;
    t.equal(dm?.major, 4, 'DM_VERSION major is 4');
    t.ok((dm?.minor ?? 0) > 0, `DM_VERSION minor > 0 (got ${dm?.minor})`);
    t.equal(field(r.stdout, 'dmlist'), '[]', 'DM_LIST_DEVICES through the chokepoint: no devices in a fresh guest');
    t.equal(field(r.stdout, 'vda'), '32768 volagent-a', 'first disk is /dev/vda, 16 MiB, with its serial');
    t.equal(field(r.stdout, 'vdb'), '16384', 'second disk is /dev/vdb, 8 MiB');
    t.equal(field(r.stdout, 'ddrc'), '0');
    t.equal(readFileSync(diskA).subarray(0, 16).toString(), 'written-in-guest', 'guest writes reach the host image');
    t.equal(r.files['hello.txt']?.toString(), 'hello\n', '$VOLAGENT_VM_OUT files come back');
    t.equal(alive(r.pid), false, 'qemu has exited');
    t.same(liveVmPids(), [], 'no live VM recorded');
    t.same(ourQemuChildren(), [], 'no qemu child process');
  });

  t.test('a failing guest script returns its exit status', async (t) => {
    const r = await runInVm({ script: 'echo before; echo oops >&2; exit 7\necho after\n', timeoutMs: 120_000 });
    t.equal(r.exitCode, 7);
    t.equal(r.stdout, 'before\n');
    t.equal(r.stderr, 'oops\n');
    t.equal(alive(r.pid), false, 'qemu has exited');
    t.same(ourQemuChildren(), [], 'no qemu child process');
  });

  t.test('runGuestTests runs several node files in one boot with per-file status', async (t) => {
    const smoke = path.relative(repoRoot, fileURLToPath(new URL('./guest/smoke.js', import.meta.url)));
    const missing = path.relative(repoRoot, fileURLToPath(new URL('./guest/no-such-file.js', import.meta.url)));
    const { results, vm } = await runGuestTests([smoke, missing], { setup: 'test -c /dev/mapper/control', timeoutMs: 180_000 });
    t.comment(`runGuestTests: boot=${vm.timings.bootMs}ms total=${vm.timings.totalMs}ms; ${results.map((r) => `${r.file} ${r.durationMs}ms`).join(', ')}`);
    t.equal(results.length, 2);
    t.equal(results[0]?.file, smoke);
    t.equal(results[0]?.exitCode, 0, 'guest tap file passes', { output: results[0]?.output });
    t.match(results[0]?.output ?? '', /^# \{"total":\d+,"pass":\d+\}|^1\.\.2$/m, 'TAP output came back');
    t.notMatch(results[0]?.output ?? '', /^not ok/m, 'no failing guest assertion');
    t.equal(results[1]?.exitCode, 1, 'a missing file fails with node exit status 1');
    t.match(results[1]?.output ?? '', /Cannot find module/);
    t.same(ourQemuChildren(), [], 'no qemu child process');
  });

  t.test('a VM that runs past its timeout is killed', async (t) => {
    const started = Date.now();
    await t.rejects(runInVm({ script: 'sleep 600', timeoutMs: 3_000 }), VmError);
    t.ok(Date.now() - started < 20_000, 'rejected soon after the timeout');
    t.same(liveVmPids(), [], 'no live VM recorded');
    t.same(ourQemuChildren(), [], 'no qemu child process');
  });
}
