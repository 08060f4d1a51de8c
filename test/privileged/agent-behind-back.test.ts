// A pool changed behind the agent's back (issue 19, item 5): a stray file
// with the name the agent wants (EEXIST), and a volume whose file was removed
// (ENOENT). Each request gets its coded 409 (OBJECT_EXISTS, OBJECT_MISSING;
// regression: both were 500 INTERNAL) and changes nothing on disk or in the
// catalog; `check` names each difference and `check --repair` settles it.
// Needs root (the privileged lane), for parity with the other agent tests.
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { downloadOn, poolEntries, readCatalog, startAgent } from '../helpers/agent.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { tempDir } from '../helpers/temp-dir.js';

const MiB = 1024 * 1024;

if (!skipUnlessRoot(t)) {
  const dir = await tempDir(t, 'volagent-behind-');
  const poolPath = path.join(dir, 'pool');
  await mkdir(poolPath);
  const agent = await startAgent(t, { dir, pools: [{ name: 'p', path: poolPath }] });
  const state = async () => ({ catalog: readCatalog(agent.catalogPath), files: await poolEntries(poolPath) });
  const objects = path.join(poolPath, 'objects');

  await t.test('a stray file with the name the agent wants: 409 OBJECT_EXISTS, nothing changed; check names it, repair removes it', async (t) => {
    await agent.request('PUT', '/v1/volumes/src', { tenant: 't1', sizeBytes: MiB });
    await writeFile(path.join(objects, 'v9.raw'), 'stray');
    await writeFile(path.join(objects, 'src@s9.raw'), 'stray');
    for (const [what, method, url, body] of [
      ['create', 'PUT', '/v1/volumes/v9', { tenant: 't1', sizeBytes: MiB }],
      ['clone', 'PUT', '/v1/volumes/v9?wait=true', { tenant: 't1', source: { volume: 'src' } }],
      ['snapshot', 'PUT', '/v1/volumes/src/snapshots/s9?wait=true', undefined],
    ] as const) {
      const before = await state();
      const reply = await agent.request(method, url, body);
      t.equal(reply.status, 409, `${what}: ${reply.text}`);
      t.equal(reply.body.error.code, 'OBJECT_EXISTS', what);
      t.match(reply.body.error.message, /EEXIST.*check --repair/, `${what}: the message says what to do`);
      t.same(await state(), before, `${what}: the catalog and the pool's files are as they were`);
    }
    const check = (await agent.request('GET', '/v1/check')).body;
    t.match(check.differences.filter((d: { kind: string }) => d.kind === 'orphan').map((d: { object: string }) => d.object).sort(), ['src@s9', 'v9']);
    const repair = (await agent.request('POST', '/v1/check/repair')).body;
    t.ok(repair.differences.filter((d: { kind: string }) => d.kind === 'orphan').every((d: { action: string }) => d.action === 'removed'), 'repair removes the strays');
    t.equal((await agent.request('PUT', '/v1/volumes/v9', { tenant: 't1', sizeBytes: MiB })).status, 201, 'then the create works');
    t.equal((await agent.request('PUT', '/v1/volumes/src/snapshots/s9?wait=true')).status, 201, 'and the snapshot');
  });

  await t.test("a volume whose file was removed: 409 OBJECT_MISSING for whatever reads or changes it, nothing changed; check names it, repair marks it error, then it is deleted", async (t) => {
    await agent.request('PUT', '/v1/volumes/gone', { tenant: 't1', sizeBytes: MiB });
    await rm(path.join(objects, 'gone.raw'));
    for (const [what, method, url, body] of [
      ['clone', 'PUT', '/v1/volumes/from-gone?wait=true', { tenant: 't1', source: { volume: 'gone' } }],
      ['snapshot', 'PUT', '/v1/volumes/gone/snapshots/sg?wait=true', undefined],
      ['resize', 'POST', '/v1/volumes/gone/resize', { sizeBytes: 2 * MiB }],
      ['nbd export', 'POST', '/v1/volumes/gone/exports', { protocol: 'nbd' }],
      ['block export', 'POST', '/v1/volumes/gone/exports', { protocol: 'block' }],
      ['register by clone', 'PUT', '/v1/images/img-gone?wait=true', { volume: 'gone', mode: 'clone', tenant: 't1' }],
    ] as const) {
      const before = await state();
      const reply = await agent.request(method, url, body);
      t.equal(reply.status, 409, `${what}: ${reply.text}`);
      t.equal(reply.body.error.code, 'OBJECT_MISSING', what);
      t.same(await state(), before, `${what}: the catalog and the pool's files are as they were`);
    }
    // An image whose Image-Volume file was removed: its download is the same 409.
    const image = (await agent.request('PUT', '/v1/images/img-lost?wait=true', { volume: 'src', mode: 'clone', tenant: 't1' })).body;
    await rm(path.join(objects, `${image.volumeId}.raw`));
    const download = await downloadOn(agent.socket, '/v1/images/img-lost/data');
    t.equal(download.status, 409, 'a download of a lost Image-Volume');
    t.match(JSON.parse(download.body!.toString()), { error: { code: 'OBJECT_MISSING' } });

    const check = (await agent.request('GET', '/v1/check')).body;
    t.same(check.differences.filter((d: { kind: string }) => d.kind === 'missing').map((d: { object: string }) => d.object).sort(), [image.volumeId, 'gone'].sort());
    const repair = (await agent.request('POST', '/v1/check/repair')).body;
    t.ok(repair.differences.filter((d: { kind: string }) => d.kind === 'missing').every((d: { action: string }) => d.action === 'marked-error'), 'repair marks the rows error');
    t.match((await agent.request('GET', '/v1/volumes/gone')).body, { state: 'error', error: 'backend object missing' });
    t.equal((await agent.request('DELETE', '/v1/volumes/gone')).status, 204, 'a row in error whose file is gone is deleted');
    t.notOk(readCatalog(agent.catalogPath).volumes.some((v) => v.id === 'gone'));
    t.equal((await agent.request('DELETE', '/v1/images/img-lost')).status, 204, 'and so is the image');
  });
}
