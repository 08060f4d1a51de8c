// `volagent image ...` and `volagent create --from-image` against a real
// volagentd on XFS: register, ls, show, upload (file and stdin), download
// (sparse file and stdout), rm, with the exit statuses of refusals and what
// they leave on disk. Needs root.
import { spawn } from 'node:child_process';
import { mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { poolEntries, readCatalog, startAgent, VOLAGENT, waitOperation } from '../helpers/agent.js';
import { makeSparseFile, sha256 } from '../helpers/files.js';
import { makeLoopFs } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const MiB = 2 ** 20;

interface Outcome {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

if (!skipUnlessRoot(t)) {
  const xfs = await makeLoopFs('xfs', 2 * 1024 * MiB);
  t.teardown(() => xfs.cleanup());
  const poolPath = path.join(xfs.mountPoint, 'pool');
  const work = path.join(xfs.mountPoint, 'work');
  const dir = path.join(xfs.mountPoint, 'agent');
  for (const d of [poolPath, work, dir]) await mkdir(d);
  const ext4 = await makeLoopFs('ext4', 512 * MiB);
  t.teardown(() => ext4.cleanup());
  const slowPath = path.join(ext4.mountPoint, 'pool');
  await mkdir(slowPath);
  const agent = await startAgent(t, { dir, pools: [{ name: 'fast', path: poolPath }, { name: 'slow', path: slowPath }] });

  const cli = (args: string[], stdin?: Buffer): Promise<Outcome> => {
    const env = { ...process.env };
    delete env.VOLAGENT_SOCKET;
    const child = spawn(process.execPath, [VOLAGENT, '--socket', agent.socket, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.stdin.end(stdin);
    return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr })));
  };
  const state = async (): Promise<unknown> => ({ pool: await poolEntries(poolPath), slow: await poolEntries(slowPath), catalog: readCatalog(agent.catalogPath) });

  const imageFile = path.join(work, 'image.raw');
  await makeSparseFile(imageFile, { sizeBytes: 256 * MiB, data: [[0, MiB], [100 * MiB + 512, 3 * MiB], [255 * MiB, MiB]] });
  const digest = await sha256(imageFile);

  await t.test('upload a file, show it, download it sparse and to stdout', async (t) => {
    const up = await cli(['image', 'upload', 'img1', imageFile, '--tenant', 'alice', '--public']);
    t.equal(up.code, 0, up.stderr);
    t.match(up.stdout.toString(), /^uploaded image img1: 256 MiB public in pool fast, tenant alice, location cinder:\/\/iv-/);
    const shown = await cli(['image', 'show', 'img1']);
    t.match(shown.stdout.toString(), /mode: +upload/);
    const json = JSON.parse((await cli(['image', 'show', 'img1', '--json'])).stdout.toString());
    t.match(json, { imageId: 'img1', sizeBytes: 256 * MiB, visibility: 'public', mode: 'upload' });

    const target = path.join(work, 'copy.raw');
    const down = await cli(['image', 'download', 'img1', target]);
    t.equal(down.code, 0, down.stderr);
    t.equal(await sha256(target), digest, 'the same bytes');
    t.ok((await stat(target)).blocks * 512 < 16 * MiB, 'written sparse: holes stayed holes');
    const again = await cli(['image', 'download', 'img1', target]);
    t.equal(again.code, 4, 'an existing file is never overwritten');
    t.equal(await sha256(target), digest, 'and is left as it was');

    const piped = await cli(['image', 'download', 'img1', '-']);
    t.equal(piped.code, 0, piped.stderr);
    t.equal(piped.stdout.length, 256 * MiB);
  });

  await t.test('upload from stdin (chunked), register a volume, create from an image, list and remove', async (t) => {
    const data = Buffer.alloc(5 * MiB + 7, 0x61);
    const up = await cli(['image', 'upload', 'img-stdin', '-', '--tenant', 'alice', '--json'], data);
    t.equal(up.code, 0, up.stderr);
    t.match(JSON.parse(up.stdout.toString()), { sizeBytes: data.length, visibility: 'private' });

    const created = await cli(['create', 'v1', '--from-image', 'img1', '--tenant', 'bob', '--size', '512MiB']);
    t.equal(created.code, 0, created.stderr);
    t.match(created.stdout.toString(), /^created v1: 512 MiB in pool fast, tenant bob, from image img1, by reflink/);
    const registered = await cli(['image', 'register', 'img-v1', '--volume', 'v1', '--tenant', 'bob', '--mode', 'clone']);
    t.equal(registered.code, 0, registered.stderr);
    t.match(registered.stdout.toString(), /^registered image img-v1: 512 MiB private/);

    const listed = await cli(['image', 'ls', '--tenant', 'bob']);
    t.match(listed.stdout.toString(), /img1 .*public/);
    t.match(listed.stdout.toString(), /img-v1 .*private/);
    t.notMatch(listed.stdout.toString(), /img-stdin/, 'alice\'s private image is not listed for bob');

    t.equal((await cli(['image', 'rm', 'img-stdin'])).code, 0);
    t.equal((await cli(['image', 'show', 'img-stdin'])).code, 3, 'gone');
  });

  await t.test('register on a pool that copies: the operation is followed to the available image', async (t) => {
    t.equal((await cli(['create', 'copper', '--size', '64MiB', '--tenant', 'dave', '--pool', 'slow'])).code, 0);
    const registered = await cli(['image', 'register', 'img-copper', '--volume', 'copper', '--tenant', 'dave', '--json']);
    t.equal(registered.code, 0, registered.stderr);
    t.match(JSON.parse(registered.stdout.toString()), { imageId: 'img-copper', state: 'available', pool: 'slow' });
    const noWait = await cli(['image', 'register', 'img-copper2', '--volume', 'copper', '--tenant', 'dave', '--no-wait']);
    t.equal(noWait.code, 0, noWait.stderr);
    const operation = /started as operation (op-\S+);/.exec(noWait.stdout.toString())?.[1];
    t.ok(operation, `it names the operation: ${noWait.stdout.toString()}`);
    t.equal((await waitOperation(agent, operation!)).state, 'succeeded');
    const waited = await agent.request('PUT', '/v1/images/img-copper2?wait=true', { volume: 'copper', mode: 'clone', tenant: 'dave', visibility: 'private' });
    t.equal(waited.body.state, 'available', 'and then the image is available');
  });

  await t.test('refusals: exit status, one line, nothing changed', async (t) => {
    const before = await state();
    const cases: Array<[string[], number, RegExp]> = [
      [['image', 'upload', 'img1', imageFile, '--tenant', 'alice'], 4, /IMAGE_EXISTS/],
      [['image', 'upload', 'img2', path.join(work, 'absent.raw'), '--tenant', 'alice'], 3, /ENOENT/],
      [['image', 'upload', 'img2', imageFile], 2, /--tenant is required/],
      [['image', 'download', 'nope', path.join(work, 'nope.raw')], 3, /IMAGE_NOT_FOUND/],
      [['image', 'download', 'img-v1', path.join(work, 'denied.raw'), '--tenant', 'alice'], 3, /IMAGE_NOT_FOUND/],
      [['image', 'register', 'img3', '--volume', 'v1', '--tenant', 'bob', '--mode', 'move'], 2, /--mode must be clone or adopt/],
      [['image', 'frobnicate'], 2, /usage: volagent image register/],
    ];
    for (const [args, code, message] of cases) {
      const outcome = await cli(args);
      t.equal(outcome.code, code, args.join(' '));
      t.match(outcome.stderr, message);
    }
    t.same(await state(), before);
    for (const file of ['nope.raw', 'denied.raw']) await t.rejects(stat(path.join(work, file)), { code: 'ENOENT' }, `no ${file} left`);
  });

}
