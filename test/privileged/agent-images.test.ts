// Volume-backed images against a real volagentd: register by clone and by
// adopt, create volumes from images under the visibility × tenant matrix,
// Image-Volumes immutable, delete keeping clones, idempotency, and a crash
// in the middle of a registration settled at restart. XFS pool (reflink) and
// ext4 pool (copy). Every refusal is checked on disk and in the catalog.
import { spawn } from 'node:child_process';
import { mkdir, open, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import type { AgentProcess } from '../helpers/agent.js';
import { outcomeOf, poolEntries, readCatalog, restartHoldingNextCopy, startAgent, untilCopyHeld, waitOperation } from '../helpers/agent.js';
import { Command, NbdErrno } from '../../src/exports/nbd/protocol.js';
import { sha256 } from '../helpers/files.js';
import { makeLoopFs, TEST_ROOT } from '../helpers/loop-fs.js';
import { RawNbdClient } from '../helpers/nbd-client.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

if (!skipUnlessRoot(t)) {
  const xfs = await makeLoopFs('xfs', GiB);
  t.teardown(() => xfs.cleanup());
  const ext4 = await makeLoopFs('ext4', GiB);
  t.teardown(() => ext4.cleanup());
  const xfsPool = path.join(xfs.mountPoint, 'pool');
  const ext4Pool = path.join(ext4.mountPoint, 'pool');
  await mkdir(xfsPool);
  await mkdir(ext4Pool);
  await mkdir(TEST_ROOT, { recursive: true });
  const dir = path.join(xfs.mountPoint, 'agent');
  await mkdir(dir);
  const spec = { dir, pools: [{ name: 'fast', path: xfsPool }, { name: 'slow', path: ext4Pool }], lockWaitMs: 150 };
  let agent: AgentProcess = await startAgent(t, spec);
  const objectFile = (poolPath: string, name: string): string => path.join(poolPath, 'objects', `${name}.raw`);
  /** Restarts the agent with its next copy held in the middle: resolves the file whose removal lets it go on. */
  const holdNextCopy = async (label: string): Promise<string> => {
    const restarted = await restartHoldingNextCopy(t, agent, spec, label);
    agent = restarted.agent;
    return restarted.held;
  };
  const state = async (): Promise<unknown> => ({ fast: await poolEntries(xfsPool), slow: await poolEntries(ext4Pool), catalog: readCatalog(agent.catalogPath) });

  async function volumeWithData(id: string, tenant: string, pool: string, poolPath: string): Promise<string> {
    t.equal((await agent.request('PUT', `/v1/volumes/${id}`, { tenant, pool, sizeBytes: 64 * MiB })).status, 201, `create ${id}`);
    const handle = await open(objectFile(poolPath, id), 'r+');
    try {
      for (let i = 0; i < 4; i++) await handle.write(Buffer.alloc(MiB, 0x30 + i), 0, MiB, i * 16 * MiB);
      await handle.sync();
    } finally {
      await handle.close();
    }
    return sha256(objectFile(poolPath, id));
  }

  await t.test('register by clone: a new read-only Image-Volume; the source stays writable', async (t) => {
    const digest = await volumeWithData('base', 'alice', 'fast', xfsPool);
    const reply = await agent.request('PUT', '/v1/images/img-private', { volume: 'base', mode: 'clone', tenant: 'alice', visibility: 'private' });
    t.equal(reply.status, 201, reply.text);
    t.match(reply.body, { imageId: 'img-private', volumeId: /^iv-/, location: `cinder://${reply.body.volumeId}`, mode: 'clone', visibility: 'private', internal: false, state: 'available', tenant: 'alice', sizeBytes: 64 * MiB });
    const iv = reply.body.volumeId as string;
    t.match((await agent.request('GET', `/v1/volumes/${iv}`)).body, { kind: 'image', readOnly: true, tenant: 'alice', cloneMethod: 'reflink', source: { volume: 'base' } });
    t.equal((await stat(objectFile(xfsPool, iv))).mode & 0o777, 0o444, 'the file is read-only');
    t.equal(await sha256(objectFile(xfsPool, iv)), digest, 'same data');
    t.match((await agent.request('GET', '/v1/volumes/base')).body, { kind: 'volume', readOnly: false });
    const again = await agent.request('PUT', '/v1/images/img-private', { volume: 'base', mode: 'clone', tenant: 'alice', visibility: 'private' });
    t.equal(again.status, 200, 'the same registration again is a repeat');
    t.equal(again.body.volumeId, iv, 'naming the same Image-Volume');
    const before = await state();
    const conflict = await agent.request('PUT', '/v1/images/img-private', { volume: 'base', mode: 'clone', tenant: 'alice', visibility: 'public' });
    t.equal(conflict.status, 409);
    t.equal(conflict.body.error.code, 'IMAGE_EXISTS');
    t.same(await state(), before, 'a conflict changes nothing');
  });

  await t.test('internal and public: the Image-Volume lives in the internal tenant', async (t) => {
    const reply = await agent.request('PUT', '/v1/images/img-public', { volume: 'base', mode: 'clone', tenant: 'alice', visibility: 'public', internal: true });
    t.equal(reply.status, 201, reply.text);
    t.match((await agent.request('GET', `/v1/volumes/${reply.body.volumeId}`)).body, { kind: 'image', tenant: 'volagent-internal', readOnly: true });
    t.same((await agent.request('GET', '/v1/images?tenant=bob')).body.map((i: any) => i.imageId), ['img-public'], 'bob sees the public image only');
    t.same((await agent.request('GET', '/v1/images?tenant=alice')).body.map((i: any) => i.imageId).sort(), ['img-private', 'img-public']);
  });

  await t.test('create from image: the visibility × tenant matrix', async (t) => {
    const cases = [
      { image: 'img-private', tenant: 'alice', status: 201 },
      // The admin (the control plane) clones any image into any tenant; a tenant-bound bob gets 404 (access.test.ts).
      { image: 'img-private', tenant: 'bob', status: 201 },
      { image: 'img-public', tenant: 'alice', status: 201 },
      { image: 'img-public', tenant: 'bob', status: 201 },
      { image: 'absent', tenant: 'bob', status: 404, code: 'IMAGE_NOT_FOUND' },
    ];
    for (const [i, c] of cases.entries()) {
      const before = await state();
      const reply = await agent.request('PUT', `/v1/volumes/from-${i}`, { tenant: c.tenant, source: { image: c.image }, sizeBytes: 128 * MiB });
      t.equal(reply.status, c.status, `${c.tenant} from ${c.image}: ${reply.text}`);
      if (c.code) {
        t.equal(reply.body.error.code, c.code);
        t.same(await state(), before, 'a refusal changes nothing');
      } else {
        t.match(reply.body, { tenant: c.tenant, kind: 'volume', readOnly: false, sizeBytes: 128 * MiB, cloneMethod: 'reflink', source: { image: c.image } });
      }
    }
  });

  await t.test('ten concurrent creates from one image all succeed', async (t) => {
    const replies = await Promise.all(Array.from({ length: 10 }, (_, i) =>
      agent.request('PUT', `/v1/volumes/many-${i}`, { tenant: 'bob', source: { image: 'img-public' } })));
    t.same(replies.map((r) => r.status), Array(10).fill(201));
    t.equal(readCatalog(agent.catalogPath).volumes.filter((v) => v.id.startsWith('many-') && v.state === 'available').length, 10);
  });

  await t.test('Image-Volumes are immutable through the API', async (t) => {
    const iv = (await agent.request('GET', '/v1/images/img-private')).body.volumeId as string;
    const before = await state();
    const resize = await agent.request('POST', `/v1/volumes/${iv}/resize`, { sizeBytes: 128 * MiB });
    t.equal(resize.body.error.code, 'VOLUME_READ_ONLY');
    const snapshot = await agent.request('PUT', `/v1/volumes/${iv}/snapshots/s1`);
    t.equal(snapshot.body.error.code, 'VOLUME_IS_IMAGE');
    const del = await agent.request('DELETE', `/v1/volumes/${iv}`);
    t.equal(del.status, 409);
    t.match(del.body.error, { code: 'VOLUME_IS_IMAGE', details: { image: 'img-private' } });
    const twice = await agent.request('PUT', '/v1/images/img-again', { volume: iv, mode: 'adopt', tenant: 'alice' });
    t.equal(twice.body.error.code, 'VOLUME_IS_IMAGE', 'an Image-Volume is not registered again');
    t.same(await state(), before, 'nothing changed');
  });

  // Root ignores the file's mode 0444: what keeps an Image-Volume immutable is
  // the agent refusing every writer. Each writer path, tried and refused; the
  // file's bytes are the same after all of them.
  await t.test('every writer path of an Image-Volume is refused, and its bytes stay as they were', async (t) => {
    const iv = (await agent.request('GET', '/v1/images/img-private')).body.volumeId as string;
    const file = objectFile(xfsPool, iv);
    const digest = await sha256(file);
    t.equal((await stat(file)).mode & 0o777, 0o444, 'the file is 0444 (which root ignores)');
    const before = await state();
    for (const [what, method, url, body, code] of [
      ['a writable NBD export', 'POST', `/v1/volumes/${iv}/exports`, { protocol: 'nbd', readOnly: false }, 'VOLUME_READ_ONLY'],
      ['a writable block export', 'POST', `/v1/volumes/${iv}/exports`, { protocol: 'block', readOnly: false }, 'VOLUME_READ_ONLY'],
      ['a resize', 'POST', `/v1/volumes/${iv}/resize`, { sizeBytes: 128 * MiB }, 'VOLUME_READ_ONLY'],
      ['a new volume under its id', 'PUT', `/v1/volumes/${iv}`, { tenant: 'alice', sizeBytes: 64 * MiB }, 'VOLUME_EXISTS'],
      ['a clone into its id', 'PUT', `/v1/volumes/${iv}`, { tenant: 'alice', source: { volume: 'base' } }, 'VOLUME_EXISTS'],
      ['an adoption', 'PUT', '/v1/images/img-adopt-iv', { volume: iv, mode: 'adopt', tenant: 'alice' }, 'VOLUME_IS_IMAGE'],
    ] as const) {
      const reply = await agent.request(method, url, body);
      t.equal(reply.status, 409, `${what}: ${reply.text}`);
      t.equal(reply.body.error.code, code, what);
    }
    t.same(await state(), before, 'no export, no row, no file changed');

    // Read-only exports: the NBD server refuses writes, the loop device is read-only even for root.
    const nbd = (await agent.request('POST', `/v1/volumes/${iv}/exports`, { protocol: 'nbd', readOnly: true })).body;
    const qemuIo = await outcomeOf(spawn('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 0 64k', nbd.uri], { stdio: ['ignore', 'pipe', 'pipe'] }));
    t.equal(qemuIo.code, 1, 'qemu-io does not open the export for writing');
    t.match(qemuIo.stderr, /Could not open image: Permission denied/, 'the export says it is read-only (NBD_FLAG_READ_ONLY)');
    // A client that ignores the flag and writes anyway: the server answers EPERM and writes nothing.
    const raw = await RawNbdClient.connect(path.join(dir, 'nbd.sock'));
    try {
      await raw.open(nbd.id, { structured: false });
      const cookie = raw.request(Command.WRITE, 0, 64 * 1024, 0, Buffer.alloc(64 * 1024, 0x77));
      t.same(await raw.simpleReply(), { error: NbdErrno.EPERM, cookie }, 'NBD_CMD_WRITE to the read-only export: EPERM');
    } finally {
      raw.destroy();
    }
    const block = (await agent.request('POST', `/v1/volumes/${iv}/exports`, { protocol: 'block', readOnly: true })).body;
    t.equal((await outcomeOf(spawn('blockdev', ['--getro', block.uri], { stdio: ['ignore', 'pipe', 'pipe'] }))).stdout.trim(), '1', 'the loop device is read-only');
    const blockWrite = await outcomeOf(spawn('dd', ['if=/dev/zero', `of=${block.uri}`, 'bs=64k', 'count=1', 'oflag=direct'], { stdio: ['ignore', 'pipe', 'pipe'] }));
    t.not(blockWrite.code, 0, 'dd as root cannot write the read-only loop device');
    t.match(blockWrite.stderr, /error writing '\/dev\/loop\d+': Operation not permitted/, 'EPERM (LO_FLAGS_READ_ONLY)');
    for (const id of [nbd.id, block.id]) t.equal((await agent.request('DELETE', `/v1/exports/${id}`)).status, 204);
    t.equal(await sha256(file), digest, "the Image-Volume's bytes are as they were");
  });

  await t.test('bad registrations get clear errors and change nothing', async (t) => {
    const before = await state();
    const cases: Array<[unknown, number, string]> = [
      [{ volume: 'base', mode: 'copy', tenant: 'alice' }, 400, 'BAD_REQUEST'],
      [{ volume: 'base', tenant: 'alice' }, 400, 'BAD_REQUEST'],
      [{ volume: 'base', mode: 'clone', tenant: 'alice', visibility: 'shared' }, 400, 'BAD_REQUEST'],
      [{ volume: 'base', mode: 'clone', tenant: 'alice', internal: 'yes' }, 400, 'BAD_REQUEST'],
      [{ volume: 'base', mode: 'clone', tenant: 'alice', extra: 1 }, 400, 'UNKNOWN_FIELD'],
      [{ volume: '../x', mode: 'clone', tenant: 'alice' }, 400, 'INVALID_ID'],
      [{ volume: 'absent', mode: 'clone', tenant: 'alice' }, 404, 'VOLUME_NOT_FOUND'],
      [{ volume: 'base', mode: 'clone' }, 400, 'BAD_REQUEST'], // an admin names the owner
    ];
    for (const [body, status, code] of cases) {
      const reply = await agent.request('PUT', '/v1/images/bad', body);
      t.equal(reply.status, status, JSON.stringify(body));
      t.equal(reply.body.error.code, code);
    }
    t.same(await state(), before);
  });

  await t.test('register by adopt on a copy pool: the volume itself becomes the read-only Image-Volume', async (t) => {
    const digest = await volumeWithData('golden', 'carol', 'slow', ext4Pool);
    const reply = await agent.request('PUT', '/v1/images/img-adopted', { volume: 'golden', mode: 'adopt', tenant: 'carol', visibility: 'private' });
    t.equal(reply.status, 201, reply.text);
    t.match(reply.body, { volumeId: 'golden', location: 'cinder://golden', mode: 'adopt' });
    t.match((await agent.request('GET', '/v1/volumes/golden')).body, { kind: 'image', readOnly: true, tenant: 'carol' });
    t.equal((await stat(objectFile(ext4Pool, 'golden'))).mode & 0o777, 0o444);
    const copy = await agent.request('PUT', '/v1/volumes/golden-copy?wait=true', { tenant: 'carol', source: { image: 'img-adopted' } });
    t.equal(copy.status, 201, copy.text);
    t.equal(copy.body.cloneMethod, 'copy_file_range');
    t.equal(await sha256(objectFile(ext4Pool, 'golden-copy')), digest);
  });

  await t.test('register by clone on a copy pool: 202 with the copy operation; available when it ends; a repeat joins it', async (t) => {
    const digest = await volumeWithData('silver', 'carol', 'slow', ext4Pool);
    const held = await holdNextCopy('register');
    const reply = await agent.request('PUT', '/v1/images/img-copied', { volume: 'silver', mode: 'clone', tenant: 'carol' });
    t.equal(reply.status, 202, reply.text);
    t.match(reply.body, { operation: { id: /^op-/, kind: 'clone' }, image: { imageId: 'img-copied', state: 'creating', mode: 'clone' } });
    await untilCopyHeld(held);
    const repeat = await agent.request('PUT', '/v1/images/img-copied', { volume: 'silver', mode: 'clone', tenant: 'carol' });
    t.equal(repeat.status, 202, 'a repeat while the copy runs joins the registration');
    t.equal(repeat.body.operation.id, reply.body.operation.id, 'the same operation');
    t.match((await agent.request('GET', '/v1/images/img-copied')).body, { state: 'creating' }, 'not available before its data');
    await rm(held);
    t.equal((await waitOperation(agent, reply.body.operation.id)).state, 'succeeded');
    const waited = await agent.request('PUT', '/v1/images/img-copied?wait=true', { volume: 'silver', mode: 'clone', tenant: 'carol' });
    t.equal(waited.status, 200, 'with wait=true, a repeat answers once the image is available');
    t.match(waited.body, { imageId: 'img-copied', state: 'available' });
    t.match((await agent.request('GET', `/v1/volumes/${waited.body.volumeId}`)).body, { kind: 'image', readOnly: true, cloneMethod: 'copy_file_range' });
    t.equal(await sha256(objectFile(ext4Pool, waited.body.volumeId)), digest);
    const direct = await agent.request('PUT', '/v1/images/img-copied2?wait=true', { volume: 'silver', mode: 'clone', tenant: 'carol' });
    t.equal(direct.status, 201, 'wait=true: 201 once made');
    t.match(direct.body, { state: 'available' });
  });

  await t.test('a registration whose copy is cancelled leaves no image, no volume and no file', async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/bronze', { tenant: 'carol', pool: 'slow', sizeBytes: 256 * MiB })).status, 201);
    const handle = await open(objectFile(ext4Pool, 'bronze'), 'r+');
    try {
      for (let i = 0; i < 8; i++) await handle.write(Buffer.alloc(16 * MiB, 0x61 + i), 0, 16 * MiB, i * 32 * MiB);
      await handle.sync();
    } finally {
      await handle.close();
    }
    const held = await holdNextCopy('cancel');
    const before = await state();
    const reply = await agent.request('PUT', '/v1/images/img-cancelled', { volume: 'bronze', mode: 'clone', tenant: 'carol' });
    t.equal(reply.status, 202, reply.text);
    await untilCopyHeld(held);
    const cancelled = await agent.request('DELETE', `/v1/operations/${reply.body.operation.id}`);
    t.equal(cancelled.status, 200);
    t.match(cancelled.body, { state: 'cancelled', error: { code: 'OPERATION_CANCELLED' } }, 'cancelled in the middle of the copy');
    for (let i = 0; i < 100 && (await agent.request('GET', '/v1/images/img-cancelled')).status !== 404; i++) await new Promise((r) => setTimeout(r, 20));
    t.equal((await agent.request('GET', '/v1/images/img-cancelled')).status, 404, 'the registration was rolled back');
    const after = (await state()) as { catalog: { operations: unknown[] } };
    const expected = before as { catalog: { operations: unknown[] } };
    t.same({ ...after, catalog: { ...after.catalog, operations: [] } }, { ...expected, catalog: { ...expected.catalog, operations: [] } }, 'as before, but for the cancelled operation');
    await rm(held, { force: true });
  });

  await t.test('deleting an image: clones stay intact, the Image-Volume goes once no clone reads it', async (t) => {
    const iv = (await agent.request('GET', '/v1/images/img-private')).body.volumeId as string;
    const digest = await sha256(objectFile(xfsPool, 'from-0'));
    t.equal((await agent.request('DELETE', '/v1/images/img-private')).status, 204);
    t.equal((await agent.request('DELETE', '/v1/images/img-private')).status, 204, 'idempotent');
    let gone = false;
    for (let i = 0; i < 100 && !gone; i++) {
      gone = (await agent.request('GET', '/v1/images/img-private')).status === 404;
      if (!gone) await new Promise((r) => setTimeout(r, 20));
    }
    t.ok(gone, 'the image is gone');
    t.equal((await agent.request('GET', `/v1/volumes/${iv}`)).status, 404, 'with its Image-Volume');
    t.notOk((await poolEntries(xfsPool)).includes(`${iv}.raw`), 'and its file');
    t.equal(await sha256(objectFile(xfsPool, 'from-0')), digest, 'the clone made from it is intact');
    const refused = await agent.request('PUT', '/v1/volumes/late', { tenant: 'alice', source: { image: 'img-private' } });
    t.equal(refused.body.error.code, 'IMAGE_NOT_FOUND');
    // Adopted: the volume is the Image-Volume, so it goes with the image; its copy stays.
    t.equal((await agent.request('DELETE', '/v1/images/img-adopted')).status, 204);
    for (let i = 0; i < 100 && (await agent.request('GET', '/v1/volumes/golden')).status !== 404; i++) await new Promise((r) => setTimeout(r, 20));
    t.equal((await agent.request('GET', '/v1/volumes/golden')).status, 404);
    t.equal((await agent.request('GET', '/v1/volumes/golden-copy')).status, 200);
  });

  await t.test('kill -9 with an image left creating and one left deleting: restart settles both', async (t) => {
    await volumeWithData('crash-src', 'dave', 'fast', xfsPool);
    t.equal((await agent.request('PUT', '/v1/images/img-keep', { volume: 'crash-src', mode: 'clone', tenant: 'dave' })).status, 201);
    await agent.kill();
    // Forge what a crash leaves between the steps: an image row creating with its Image-Volume
    // made, and an image row deleting (the agent is down; the catalog is ours for a moment).
    const BetterSqlite3 = (await import('better-sqlite3')).default;
    const db = new BetterSqlite3(agent.catalogPath);
    const keep = db.prepare("SELECT volume_id FROM images WHERE id = 'img-keep'").get() as { volume_id: string };
    db.prepare("UPDATE images SET state = 'creating' WHERE id = 'img-keep'").run();
    db.prepare("UPDATE images SET state = 'deleting' WHERE id = 'img-public'").run();
    const publicIv = (db.prepare("SELECT volume_id FROM images WHERE id = 'img-public'").get() as { volume_id: string }).volume_id;
    db.close();
    agent = await startAgent(t, spec);
    const catalog = readCatalog(agent.catalogPath);
    t.notOk(catalog.images.some((i) => i.id === 'img-keep' || i.id === 'img-public'), 'both image rows settled');
    t.notOk(catalog.volumes.some((v) => v.id === keep.volume_id || v.id === publicIv), 'with their Image-Volumes');
    t.notOk((await poolEntries(xfsPool)).some((e) => e === `${keep.volume_id}.raw` || e === `${publicIv}.raw` || e.startsWith('.tmp-')), 'and their files');
    t.equal((await agent.request('GET', '/v1/volumes/many-0')).status, 200, 'clones of the deleted image stay');
    t.match((await agent.request('GET', '/v1/volumes/crash-src')).body, { readOnly: false, kind: 'volume' });
    const check = await agent.request('GET', '/v1/check');
    t.equal(check.body.clean, true, JSON.stringify(check.body));
  });
}
