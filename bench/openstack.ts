// OpenStack benchmark (needs root and Debian's Cinder and Glance): `cinder
// create --image` through the real services (test/helpers/openstack.ts),
// by the clone path through volagent against Cinder's download path from
// Glance's file store, in the same run, for a 10 GiB image holding 1 GiB of
// data and a 1 GiB image holding 100 MiB.
//  - clone path: the image is `location-add cinder://VOLUME` of a volume in
//    the XFS pool; `cinder create --image` clones it (the driver's
//    clone_image: a reflink).
//  - download path: the same bytes uploaded to Glance's file store
//    (`glance image-create --file`); `cinder create --image` downloads them
//    into a new volume of the same pool (Cinder's image-volume cache off, so
//    every create downloads).
// Timed: from the `cinder create` command (the CLI's own start-up, about a
// second of Python, included) to the volume `available` (polled on Cinder's
// API every 100 ms), rounds alternating between the paths; volumes deleted
// untimed. Goal: the clone path >= 10x faster than the download path at
// 10 GiB, and flat in image size (10 GiB p50 within 1.5x of 1 GiB's).
// Then `cinder migrate` of a 10 GiB volume holding 1 GiB of data from host A
// to host B (the stack's two hosts: two agents in two network namespaces):
// the driver's migrate_volume (host B's agent pulls the data extents over
// NBD with TLS) against Cinder's generic host-assisted copy of the same
// volume (`--force-host-copy True`: Cinder attaches both volumes on host A
// and copies them with dd). Timed from the `cinder migrate` command to the
// migration's `success` (polled on Cinder's API); the volume is put on host
// A by `cinder manage` of an agent volume (type `plain`, which every host
// passes), rounds alternating. Goal: the driver's pull >= 5x faster.
// Prints a table and one JSON line. Exit code 0 whether goals are met or not.
// `--quick`: 2 rounds per row instead of 5 (migration: 1 instead of 3).
// `--only=create` or `--only=migrate`: one part.

import os from 'node:os';

import { BACKEND_B, HOST_B, OpenStack, PROJECTS, propertyTable, stackMissing } from '../test/helpers/openstack.js';
import { run as runCommand } from '../test/helpers/run.js';
import type { Latency, Verdict } from './lib.js';
import { atLeast, atMost, f1, GiB, goalNote, latency, MiB, msSince, now, onSignalCleanup, runBench, sleep, writeRuns } from './lib.js';

const P = PROJECTS.one;

interface Case { label: string; sizeGb: number; dataBytes: number }

const CASES: Case[] = [
  { label: '10 GiB image, 1 GiB of data', sizeGb: 10, dataBytes: GiB },
  { label: '1 GiB image, 100 MiB of data', sizeGb: 1, dataBytes: 100 * MiB },
];

export async function main(args: string[]): Promise<number> {
  return runBench('bench openstack', 'loop devices, mounts, Debian\'s Cinder and Glance', import.meta.url, args, async (run) => {
    const missing = stackMissing();
    if (missing) throw new Error(`the OpenStack services are not installed: ${missing} (npm test -- --lane openstack installs them)`);
    const rounds = run.quick ? 2 : 5;
    const only = args.find((a) => a.startsWith('--only='))?.slice('--only='.length);
    if (only !== undefined && only !== 'create' && only !== 'migrate') throw new Error(`--only=${only}: create or migrate`);
    const stack = new OpenStack({ poolBytes: 64 * GiB, imageVolumeCache: false });
    onSignalCleanup.push(() => stack.stop());
    await stack.start();

    /**
     * Milliseconds from `cinder create --image` to available; the volume is deleted afterwards,
     * untimed. The status is polled on Cinder's API with curl every 100 ms (the `cinder` CLI
     * would take about a second of Python start-up per poll).
     */
    const createFromImage = async (image: string, sizeGb: number): Promise<{ ms: number; id: string }> => {
      const started = now();
      const id = propertyTable(await stack.cinder(P, ['create', '--volume-type', 'xfs', '--image', image, String(sizeGb)])).id!;
      for (;;) {
        const shown = JSON.parse(await runCommand('curl', ['-sf', '-H', `X-Auth-Token: bench:${P}`, `http://127.0.0.1:8776/v3/${P}/volumes/${id}`])) as { volume: { status: string } };
        const status = shown.volume.status;
        if (status === 'available') break;
        if (status.startsWith('error')) throw new Error(`volume ${id} from image ${image}: ${status}`);
        await sleep(100);
      }
      return { ms: msSince(started), id };
    };
    const destroy = async (id: string): Promise<void> => {
      await stack.cinder(P, ['delete', id]);
      await stack.waitVolumeGone(P, id, 600_000);
    };

    const results: Array<{ case: Case; clone: Latency; download: Latency; cloneMethods: string[] }> = [];
    for (const c of only === 'migrate' ? [] : CASES) {
      // The source volume, written with the data through the agent's file (untimed set-up).
      const source = propertyTable(await stack.cinder(P, ['create', '--volume-type', 'xfs', String(c.sizeGb)])).id!;
      await stack.waitVolume(P, source, ['available']);
      const sourceFile = stack.volumeFile('xfs', `volume-${source}`);
      await writeRuns(sourceFile, c.sizeGb * GiB, 64, c.dataBytes / 64);
      const cinderImage = propertyTable(await stack.glance(P, ['image-create', '--disk-format', 'raw', '--container-format', 'bare', '--name', `bench-cinder-${c.sizeGb}`])).id!; // no data (stdin closed): queued until location-add
      await stack.glance(P, ['location-add', cinderImage, '--url', `cinder://${source}`]);
      await stack.waitImage(P, cinderImage, ['active']);
      const fileImage = propertyTable(await stack.glance(P, ['image-create', '--disk-format', 'raw', '--container-format', 'bare', '--name', `bench-file-${c.sizeGb}`, '--file', sourceFile])).id!;
      await stack.waitImage(P, fileImage, ['active'], 1_800_000);

      const clone: number[] = [];
      const download: number[] = [];
      const cloneMethods: string[] = [];
      for (let round = 0; round < rounds; round += 1) {
        const cloned = await createFromImage(cinderImage, c.sizeGb);
        clone.push(cloned.ms);
        cloneMethods.push((await stack.agent(`/v1/volumes/volume-${cloned.id}`)).cloneMethod as string);
        await destroy(cloned.id);
        const downloaded = await createFromImage(fileImage, c.sizeGb);
        download.push(downloaded.ms);
        await destroy(downloaded.id);
        console.log(`# ${c.label}, round ${round + 1}: clone ${f1(cloned.ms)} ms, download ${f1(downloaded.ms)} ms`);
      }
      results.push({ case: c, clone: latency(clone), download: latency(download), cloneMethods });
      await stack.glance(P, ['image-delete', fileImage]);
      await stack.glance(P, ['image-delete', cinderImage]); // deletes the source volume too (Glance owns it now)
      await stack.waitVolumeGone(P, source, 600_000);
    }

    const migration = only === 'create' ? undefined : await migrations(stack, run.quick ? 1 : 3);
    const migrationVerdicts = migration ? [migration.verdict] : [];
    if (results.length === 0) {
      console.log(JSON.stringify({ bench: 'openstack', migration: migration?.figures, verdicts: migrationVerdicts }));
      return 0;
    }
    console.log(`\ncinder create --image, from the command to 'available', ms; N = ${rounds} per row`);
    console.log(`${'case'.padEnd(34)}${'path'.padEnd(10)}${'p50'.padStart(10)}${'max'.padStart(10)}${'mean'.padStart(10)}`);
    for (const r of results) {
      for (const [name, l] of [['clone', r.clone], ['download', r.download]] as const) {
        console.log(`${r.case.label.padEnd(34)}${name.padEnd(10)}${f1(l.p50).padStart(10)}${f1(l.max).padStart(10)}${f1(l.mean).padStart(10)}`);
      }
    }
    const [big, small] = results as [typeof results[0], typeof results[0]];
    const speedup = big.download.p50 / big.clone.p50;
    const flat = big.clone.p50 / small.clone.p50;
    const speedupGoal = atLeast('10 GiB: clone path speed-up vs download path', speedup, 'x', 10);
    const flatGoal = atMost('clone path, 10 GiB vs 1 GiB image', flat, 'x', 1.5);
    console.log(`clone methods seen: ${[...new Set(results.flatMap((r) => r.cloneMethods))].join(', ')}`);
    console.log(`10 GiB: clone path ${f1(speedup)}x faster than the download path (p50); ${goalNote(speedupGoal)}`);
    console.log(`clone path, 10 GiB vs 1 GiB image: ${f1(flat)}x (p50); ${goalNote(flatGoal)} (flat in size)`);
    console.log(JSON.stringify({
      bench: 'openstack', rounds,
      cases: results.map((r) => ({ label: r.case.label, clone: r.clone, download: r.download, cloneMethods: r.cloneMethods })),
      speedup10GiB: speedup, cloneFlatness: flat, ...(migration ? { migration: migration.figures } : {}),
      verdicts: [speedupGoal, flatGoal, ...migrationVerdicts],
    }));
    return 0;
  });
}

/** `cinder migrate` host A → host B of a 10 GiB volume with 1 GiB of data: the driver's pull against Cinder's generic copy. */
async function migrations(stack: OpenStack, rounds: number): Promise<{ figures: { driver: Latency; generic: Latency; speedup: number }; verdict: Verdict }> {
  const admin = PROJECTS.admin;
  const sizeBytes = 10 * GiB;
  const destination = `${HOST_B}@${BACKEND_B}#xfs`;
  const migrate = async (name: string, forceHostCopy: boolean): Promise<{ ms: number; id: string; method: string }> => {
    if ((await stack.agentRequest('PUT', `/v1/volumes/${name}`, { pool: 'xfs', tenant: P, sizeBytes })).status !== 201) throw new Error(`agent volume ${name} not made`);
    await writeRuns(stack.volumeFile('xfs', name), sizeBytes, 64, GiB / 64);
    const id = propertyTable(await stack.cinder(P, ['manage', '--id-type', 'source-name', '--volume-type', 'plain', `${os.hostname()}@volagent#xfs`, name])).id!;
    await stack.waitVolume(P, id, ['available']);
    const started = now();
    await stack.cinder(admin, ['migrate', ...(forceHostCopy ? ['--force-host-copy', 'True'] : []), id, destination]);
    for (;;) {
      const shown = JSON.parse(await runCommand('curl', ['-sf', '-H', `X-Auth-Token: bench:${admin}`, `http://127.0.0.1:8776/v3/${admin}/volumes/${id}`])) as { volume: { migration_status: string | null; status: string } };
      if (shown.volume.migration_status === 'success' && shown.volume.status === 'available') break;
      if (shown.volume.migration_status === 'error') throw new Error(`migration of ${id} (${forceHostCopy ? 'generic' : 'driver'}) failed`);
      await sleep(100);
    }
    const ms = msSince(started);
    const onB = ((await stack.agentB('GET', '/v1/volumes')).json as Array<{ id: string; cloneMethod: string; source?: { remote?: { volume: string } } }>);
    const pulled = onB.find((v) => v.source?.remote?.volume === name);
    return { ms, id, method: pulled ? pulled.cloneMethod : 'generic copy' };
  };
  const driver: number[] = [];
  const generic: number[] = [];
  for (let round = 0; round < rounds; round += 1) {
    const pulled = await migrate(`bench-pull-${round}`, false);
    if (pulled.method !== 'nbd_pull') throw new Error(`the driver's migration did not pull (${pulled.method})`);
    driver.push(pulled.ms);
    await stack.cinder(P, ['delete', pulled.id]);
    await stack.waitVolumeGone(P, pulled.id, 600_000);
    const copied = await migrate(`bench-copy-${round}`, true);
    generic.push(copied.ms);
    await stack.cinder(P, ['delete', copied.id]);
    await stack.waitVolumeGone(P, copied.id, 600_000);
    console.log(`# migrate 10 GiB (1 GiB of data), round ${round + 1}: driver pull ${f1(pulled.ms)} ms, generic copy ${f1(copied.ms)} ms`);
  }
  const result = { driver: latency(driver), generic: latency(generic), speedup: 0 };
  result.speedup = result.generic.p50 / result.driver.p50;
  const verdict = atLeast('migration: driver speed-up vs generic copy', result.speedup, 'x', 5);
  console.log(`\ncinder migrate host A -> host B, 10 GiB volume with 1 GiB of data, from the command to 'success', ms; N = ${rounds}`);
  console.log(`${'path'.padEnd(34)}${'p50'.padStart(10)}${'max'.padStart(10)}${'mean'.padStart(10)}`);
  for (const [name, l] of [['driver (NBD pull, TLS)', result.driver], ['generic (--force-host-copy)', result.generic]] as const) {
    console.log(`${name.padEnd(34)}${f1(l.p50).padStart(10)}${f1(l.max).padStart(10)}${f1(l.mean).padStart(10)}`);
  }
  console.log(`the driver's migration ${f1(result.speedup)}x faster than Cinder's generic copy (p50); ${goalNote(verdict)}`);
  return { figures: result, verdict };
}
