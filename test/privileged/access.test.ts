// The access rule (docs/api.md "Access"), route by route, through the real
// unix socket with real uids (setpriv + curl): the agent decides from the
// peer's credentials, never from a field the caller writes. Every refused
// row is tried by a second tenant (or a reader), and the catalog and the
// pool's files are the same after it as before. Needs root (setpriv, chown).
import { chmod, chown, mkdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import t from 'tap';

import type { AgentProcess } from '../helpers/agent.js';
import { poolEntries, readCatalog, startAgent } from '../helpers/agent.js';
import { curlAs } from '../helpers/curl-as.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { tempDir } from '../helpers/temp-dir.js';

const SOCKET_GROUP = 4242;
const T1_UID = 62001;
const T2_UID = 62002;
const READER_UID = 62003;
const INTERNAL = 'volagent-internal';
const MiB = 1024 * 1024;

/** The tenant column of volume `id`, read from the catalog file. */
function tenantOf(catalogPath: string, id: string): string | undefined {
  const db = new BetterSqlite3(catalogPath, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT tenant FROM volumes WHERE id = ?').get(id) as { tenant: string } | undefined)?.tenant;
  } finally {
    db.close();
  }
}

interface Row {
  title: string;
  uid: number;
  method: string;
  url: string;
  body?: unknown;
  status: number;
  code: string;
}

if (!skipUnlessRoot(t)) {
  const dir = await tempDir(t, 'volagent-access-');
  const poolPath = path.join(dir, 'pool');
  await mkdir(poolPath);
  const agent: AgentProcess = await startAgent(t, {
    dir, pools: [{ name: 'p', path: poolPath }],
    allow: [
      { uid: 0, role: 'admin' }, { uid: T1_UID, role: 'tenant', tenant: 't1' }, { uid: T2_UID, role: 'tenant', tenant: 't2' },
      { uid: READER_UID, role: 'reader' },
    ],
  });
  await chown(dir, 0, SOCKET_GROUP);
  await chown(agent.socket, 0, SOCKET_GROUP);
  await chmod(dir, 0o750);
  const as = (uid: number, method: string, url: string, body?: unknown, dataFile?: string) =>
    curlAs(agent.socket, uid, [SOCKET_GROUP], method, url, body, dataFile !== undefined ? { dataFile } : {});
  const admin = async (method: string, url: string, body?: unknown) => {
    const reply = await agent.request(method, url, body);
    if (reply.status >= 300) throw new Error(`${method} ${url}: ${reply.status} ${reply.text}`);
    return reply.body;
  };
  /** What a refused request must leave as it was: every catalog row and every file of the pool. */
  const state = async () => ({ catalog: readCatalog(agent.catalogPath), files: await poolEntries(poolPath), exports: (await agent.request('GET', '/v1/exports')).body });
  const pattern = Buffer.alloc(MiB, 0x5a);
  const dataFile = path.join(dir, 'image.raw');
  await writeFile(dataFile, pattern);
  await chmod(dataFile, 0o644);

  // t1 owns a volume with a snapshot, a private and a public image, an export and an operation; t2 owns one volume;
  // the internal tenant holds an Image-Volume registered by the admin.
  await admin('PUT', '/v1/volumes/v1', { tenant: 't1', sizeBytes: MiB });
  await admin('PUT', '/v1/volumes/v1/snapshots/s1?wait=true');
  await admin('PUT', '/v1/images/img-priv?wait=true', { volume: 'v1', mode: 'clone', tenant: 't1' });
  await admin('PUT', '/v1/images/img-pub?wait=true', { volume: 'v1', mode: 'clone', tenant: 't1', visibility: 'public' });
  const internal = await admin('PUT', '/v1/images/img-int?wait=true', { volume: 'v1', mode: 'clone', tenant: 't1', internal: true });
  const cloned = await agent.request('PUT', '/v1/volumes/v1c', { tenant: 't1', source: { volume: 'v1' } });
  // A copy pool: the clone is an operation. (No assertion at the top level: tap would end the root test there.)
  if (cloned.status !== 202) throw new Error(`the clone of v1 answered ${cloned.status}, not 202: ${cloned.text}`);
  const operation = cloned.body.operation.id as string;
  await admin('GET', `/v1/operations/${operation}?wait=true`);
  const exported = await admin('POST', '/v1/volumes/v1/exports', { protocol: 'nbd', readOnly: true });
  await admin('PUT', '/v1/volumes/v2', { tenant: 't2', sizeBytes: MiB });

  await t.test('tenant-bound peers: their own objects and public images only; another tenant named is 403, its objects 404; nothing changes', async (t) => {
    const rows: Row[] = [
      { title: 'get a volume of t1', uid: T2_UID, method: 'GET', url: '/v1/volumes/v1', status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'list volumes scoped to t1', uid: T2_UID, method: 'GET', url: '/v1/volumes?tenant=t1', status: 403, code: 'TENANT_FORBIDDEN' },
      { title: 'get a volume of t1, naming t1', uid: T2_UID, method: 'GET', url: '/v1/volumes/v1?tenant=t1', status: 403, code: 'TENANT_FORBIDDEN' },
      { title: 'create in t1', uid: T2_UID, method: 'PUT', url: '/v1/volumes/x1', body: { tenant: 't1', sizeBytes: MiB }, status: 403, code: 'TENANT_FORBIDDEN' },
      { title: 'create in the internal tenant', uid: T2_UID, method: 'PUT', url: '/v1/volumes/x1', body: { tenant: INTERNAL, source: { volume: internal.volumeId } }, status: 403, code: 'TENANT_FORBIDDEN' },
      { title: 'clone an internal Image-Volume', uid: T2_UID, method: 'PUT', url: '/v1/volumes/x1', body: { source: { volume: internal.volumeId } }, status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'clone a volume of t1', uid: T2_UID, method: 'PUT', url: '/v1/volumes/x1', body: { source: { volume: 'v1' } }, status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'clone a snapshot of t1', uid: T2_UID, method: 'PUT', url: '/v1/volumes/x1', body: { source: { snapshot: 's1' } }, status: 404, code: 'SNAPSHOT_NOT_FOUND' },
      { title: 'clone a private image of t1', uid: T2_UID, method: 'PUT', url: '/v1/volumes/x1', body: { source: { image: 'img-priv' } }, status: 404, code: 'IMAGE_NOT_FOUND' },
      { title: 'delete a volume of t1', uid: T2_UID, method: 'DELETE', url: '/v1/volumes/v1c', status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'resize a volume of t1', uid: T2_UID, method: 'POST', url: '/v1/volumes/v1c/resize', body: { sizeBytes: 2 * MiB }, status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'list the snapshots of a volume of t1', uid: T2_UID, method: 'GET', url: '/v1/volumes/v1/snapshots', status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'get a snapshot of t1', uid: T2_UID, method: 'GET', url: '/v1/volumes/v1/snapshots/s1', status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'snapshot a volume of t1', uid: T2_UID, method: 'PUT', url: '/v1/volumes/v1/snapshots/s9', status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'delete a snapshot of t1', uid: T2_UID, method: 'DELETE', url: '/v1/volumes/v1/snapshots/s1', status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'export a volume of t1', uid: T2_UID, method: 'POST', url: '/v1/volumes/v1c/exports', body: { protocol: 'nbd', readOnly: true }, status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'get an export of t1', uid: T2_UID, method: 'GET', url: `/v1/exports/${exported.id}`, status: 404, code: 'EXPORT_NOT_FOUND' },
      { title: 'unexport an export of t1', uid: T2_UID, method: 'DELETE', url: `/v1/exports/${exported.id}`, status: 404, code: 'EXPORT_NOT_FOUND' },
      { title: 'get a private image of t1', uid: T2_UID, method: 'GET', url: '/v1/images/img-priv', status: 404, code: 'IMAGE_NOT_FOUND' },
      { title: 'download a private image of t1', uid: T2_UID, method: 'GET', url: '/v1/images/img-priv/data', status: 404, code: 'IMAGE_NOT_FOUND' },
      { title: 'delete a private image of t1', uid: T2_UID, method: 'DELETE', url: '/v1/images/img-priv', status: 404, code: 'IMAGE_NOT_FOUND' },
      { title: 'delete a public image of t1', uid: T2_UID, method: 'DELETE', url: '/v1/images/img-pub', status: 404, code: 'IMAGE_NOT_FOUND' },
      { title: 'register a volume of t1', uid: T2_UID, method: 'PUT', url: '/v1/images/img-x', body: { volume: 'v1', mode: 'clone' }, status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'adopt a volume of t1', uid: T2_UID, method: 'PUT', url: '/v1/images/img-x', body: { volume: 'v1c', mode: 'adopt' }, status: 404, code: 'VOLUME_NOT_FOUND' },
      { title: 'register its own volume for t1', uid: T2_UID, method: 'PUT', url: '/v1/images/img-x', body: { volume: 'v2', mode: 'clone', tenant: 't1' }, status: 403, code: 'TENANT_FORBIDDEN' },
      { title: 'register into the internal tenant', uid: T2_UID, method: 'PUT', url: '/v1/images/img-x', body: { volume: 'v2', mode: 'clone', internal: true }, status: 403, code: 'TENANT_FORBIDDEN' },
      { title: 'upload for t1', uid: T2_UID, method: 'PUT', url: '/v1/images/img-x/data?tenant=t1', status: 403, code: 'TENANT_FORBIDDEN' },
      { title: 'upload into the image cache (internal tenant)', uid: T2_UID, method: 'PUT', url: '/v1/images/img-x/data?cache=true', status: 403, code: 'TENANT_FORBIDDEN' },
      { title: 'get an operation of t1', uid: T2_UID, method: 'GET', url: `/v1/operations/${operation}`, status: 404, code: 'OPERATION_NOT_FOUND' },
      { title: 'wait for an operation of t1', uid: T2_UID, method: 'GET', url: `/v1/operations/${operation}?wait=true`, status: 404, code: 'OPERATION_NOT_FOUND' },
      { title: 'cancel an operation of t1', uid: T2_UID, method: 'DELETE', url: `/v1/operations/${operation}`, status: 404, code: 'OPERATION_NOT_FOUND' },
      { title: 'check the agent', uid: T2_UID, method: 'GET', url: '/v1/check', status: 403, code: 'FORBIDDEN' },
      { title: 'repair the agent', uid: T2_UID, method: 'POST', url: '/v1/check/repair', status: 403, code: 'FORBIDDEN' },
      { title: 'scrape the metrics', uid: T2_UID, method: 'GET', url: '/metrics', status: 403, code: 'FORBIDDEN' },
      { title: 'list the objects the agent did not make', uid: T2_UID, method: 'GET', url: '/v1/pools/p/unmanaged', status: 403, code: 'FORBIDDEN' },
      { title: 'adopt an object the agent did not make', uid: T2_UID, method: 'PUT', url: '/v1/volumes/x1', body: { tenant: 't2', source: { unmanaged: 'lv0' } }, status: 403, code: 'FORBIDDEN' },
      { title: 'a reader adopts an object', uid: READER_UID, method: 'PUT', url: '/v1/volumes/x1', body: { tenant: 't2', source: { unmanaged: 'lv0' } }, status: 403, code: 'FORBIDDEN' },
      { title: 'a reader downloads a private image', uid: READER_UID, method: 'GET', url: '/v1/images/img-priv/data', status: 403, code: 'FORBIDDEN' },
      { title: 'a reader deletes a volume', uid: READER_UID, method: 'DELETE', url: '/v1/volumes/v1c', status: 403, code: 'FORBIDDEN' },
      { title: 'transfer its own volume to t2', uid: T1_UID, method: 'POST', url: '/v1/volumes/v1c/transfer', body: { tenant: 't2' }, status: 403, code: 'FORBIDDEN' },
      { title: 'transfer a volume of t1 to itself', uid: T2_UID, method: 'POST', url: '/v1/volumes/v1c/transfer', body: { tenant: 't2' }, status: 403, code: 'FORBIDDEN' },
      { title: 'a reader transfers a volume', uid: READER_UID, method: 'POST', url: '/v1/volumes/v1c/transfer', body: { tenant: 't2' }, status: 403, code: 'FORBIDDEN' },
    ];
    for (const row of rows) {
      const before = await state();
      const upload = row.url.includes('/data') && row.method === 'PUT';
      const reply = await as(row.uid, row.method, row.url, row.body, upload ? dataFile : undefined);
      t.equal(reply.status, row.status, `${row.title}: ${row.status} (${reply.stderr}${typeof reply.body === 'object' ? JSON.stringify(reply.body) : ''})`);
      t.equal(reply.body?.error?.code, row.code, `${row.title}: ${row.code}`);
      t.same(await state(), before, `${row.title}: the catalog, the pool's files and the exports are as they were`);
    }
    t.equal((await stat(path.join(poolPath, 'objects', 'v1c.raw'))).size, MiB, 'the refused resize left the file as it was');
  });

  await t.test('tenant-bound peers: lists hold their own and public objects only; their own work is done', async (t) => {
    const t2Volumes = await as(T2_UID, 'GET', '/v1/volumes');
    t.same(t2Volumes.body.map((v: { id: string }) => v.id), ['v2'], 't2 lists its volume only');
    t.same((await as(T2_UID, 'GET', '/v1/images')).body.map((i: { imageId: string }) => i.imageId), ['img-pub'], 't2 lists the public image only');
    t.same((await as(T2_UID, 'GET', '/v1/exports')).body, [], 't2 sees no export of t1');
    t.same((await as(T2_UID, 'GET', '/v1/operations')).body, [], 't2 sees no operation of t1');
    t.equal((await as(T2_UID, 'GET', '/v1/images/img-pub')).status, 200, 'a public image is readable');
    const download = await as(T2_UID, 'GET', '/v1/images/img-pub/data');
    t.equal(download.status, 200);
    t.equal(Buffer.from(download.body as string, 'latin1').length, MiB, "a public image's bytes");
    const fromPublic = await as(T2_UID, 'PUT', '/v1/volumes/t2-from-pub?wait=true', { source: { image: 'img-pub' } });
    t.equal(fromPublic.status, 201, 'a public image is cloned');
    t.match(fromPublic.body, { id: 't2-from-pub', tenant: 't2', source: { image: 'img-pub' } }, 'into the peer\'s own tenant, though it named none');
    const own = await as(T2_UID, 'PUT', '/v1/volumes/t2-own?wait=true', { tenant: 't2', source: { volume: 'v2' } });
    t.equal(own.status, 201, 'its own volume is cloned, naming its own tenant');
    t.equal((await as(T2_UID, 'GET', '/v1/volumes/v2?tenant=t2')).status, 200, 'naming its own tenant in the query');
    const all = (await agent.request('GET', '/v1/operations')).body as { id: string; tenant: string }[];
    t.ok(all.some((o) => o.tenant === INTERNAL), 'the internal Image-Volume was copied by an operation of the internal tenant');
    const t1Ops = await as(T1_UID, 'GET', '/v1/operations');
    t.same(t1Ops.body.map((o: { id: string }) => o.id), all.filter((o) => o.tenant === 't1').map((o) => o.id), "t1 sees its own operations, none of the internal tenant's");
    t.ok(t1Ops.body.some((o: { id: string }) => o.id === operation), "among them its clone's");
    t.match((await as(T1_UID, 'GET', `/v1/operations/${operation}`)).body, { id: operation, tenant: 't1', state: 'succeeded' });
    const images = (await agent.request('GET', '/v1/images')).body as { imageId: string; volumeId: string }[];
    const imageVolume = (id: string) => images.find((i) => i.imageId === id)!.volumeId;
    const t1Volumes = await as(T1_UID, 'GET', '/v1/volumes');
    t.same(t1Volumes.body.map((v: { id: string }) => v.id).sort(), [imageVolume('img-priv'), imageVolume('img-pub'), 'v1', 'v1c'].sort(),
      "t1 lists its volumes and its images' Image-Volumes, not the internal tenant's");
    t.equal((await as(T1_UID, 'GET', '/v1/images/img-priv/data')).status, 200, 'the owner downloads its private image');
    t.equal((await as(T1_UID, 'DELETE', '/v1/volumes/t2-own')).status, 404, "t1 cannot delete t2's clone");
    t.equal((await as(T2_UID, 'DELETE', '/v1/volumes/t2-own')).status, 204, 't2 deletes its own');
    t.equal((await agent.request('GET', '/v1/volumes/t2-own')).status, 404, 'gone');
  });

  await t.test('every role reads the version and the pools; a reader checks and scrapes, a tenant-bound peer does not', async (t) => {
    for (const uid of [T1_UID, T2_UID, READER_UID]) {
      t.equal((await as(uid, 'GET', '/v1/version')).status, 200, `uid ${uid}: version`);
      t.equal((await as(uid, 'GET', '/v1/pools')).status, 200, `uid ${uid}: pools`);
    }
    t.equal((await as(READER_UID, 'GET', '/v1/check')).status, 200, 'a reader checks');
    t.equal((await as(READER_UID, 'GET', '/metrics')).status, 200, 'a reader scrapes');
    t.equal((await as(READER_UID, 'GET', '/v1/exports')).body.length, 1, "a reader lists t1's export");
    t.equal((await as(READER_UID, 'GET', '/v1/operations')).body.length, (await agent.request('GET', '/v1/operations')).body.length, 'a reader lists every operation');
  });

  await t.test('a reader reads metadata of everything, image data of public images only', async (t) => {
    const volumes = await as(READER_UID, 'GET', '/v1/volumes');
    t.ok(volumes.body.some((v: { id: string }) => v.id === 'v1') && volumes.body.some((v: { id: string }) => v.id === 'v2'), 'both tenants\' volumes');
    t.equal((await as(READER_UID, 'GET', '/v1/images/img-priv')).status, 200, "a private image's metadata");
    t.equal((await as(READER_UID, 'GET', '/v1/images/img-pub/data')).status, 200, "a public image's data");
    t.same((await as(READER_UID, 'GET', '/v1/volumes?tenant=t2')).body.map((v: { id: string }) => v.id).sort(), ['t2-from-pub', 'v2'], 'a scope filters');
  });

  await t.test("an admin acts for any tenant, uses any tenant's source, and ?tenant is an ownership check", async (t) => {
    const before = await state();
    for (const [url, code] of [
      ['/v1/volumes/v1?tenant=t2', 'VOLUME_NOT_FOUND'], ['/v1/volumes/v1/snapshots/s1?tenant=t2', 'VOLUME_NOT_FOUND'],
      ['/v1/images/img-priv?tenant=t2', 'IMAGE_NOT_FOUND'], [`/v1/exports/${exported.id}?tenant=t2`, 'EXPORT_NOT_FOUND'],
      [`/v1/operations/${operation}?tenant=t2`, 'OPERATION_NOT_FOUND'],
    ] as const) {
      const reply = await agent.request('GET', url);
      t.equal(reply.status, 404, url);
      t.equal(reply.body.error.code, code, url);
    }
    const deleted = await agent.request('DELETE', '/v1/volumes/v1c?tenant=t2');
    t.equal(deleted.status, 404, 'a scoped delete of another tenant\'s volume');
    t.equal((await agent.request('DELETE', '/v1/images/img-pub?tenant=t2')).status, 404, 'a public image is readable by t2, not deletable as t2');
    t.same(await state(), before, 'nothing changed');
    t.equal((await agent.request('GET', '/v1/images/img-pub?tenant=t2')).status, 200, 'a public image is read under any scope');
    t.equal((await agent.request('GET', '/v1/volumes/v1?tenant=t1')).status, 200, 'the owner scope');
    const crossed = await agent.request('PUT', '/v1/volumes/t2-from-t1?wait=true', { tenant: 't2', source: { volume: 'v1' } });
    t.equal(crossed.status, 201, "a volume of t1 cloned into t2 (Cinder's create from an Image-Volume)");
    t.match(crossed.body, { tenant: 't2', source: { volume: 'v1' } });
    const fromInternal = await agent.request('PUT', '/v1/volumes/t2-from-int?wait=true', { tenant: 't2', source: { volume: internal.volumeId } });
    t.equal(fromInternal.status, 201, 'an internal Image-Volume cloned into a project');
    const registered = await agent.request('PUT', '/v1/images/img-up?wait=true', { volume: 'v2', mode: 'clone', tenant: 't2', internal: true });
    t.equal(registered.status, 201, "upload-to-image: a project's volume cloned into the internal tenant");
    t.match((await agent.request('GET', `/v1/volumes/${registered.body.volumeId}`)).body, { tenant: INTERNAL, kind: 'image', readOnly: true });
  });

  await t.test('adopting a volume with a writable export is refused (409 VOLUME_IN_USE), nothing changes; read-only exports do not stop it', async (t) => {
    await admin('PUT', '/v1/volumes/va', { tenant: 't1', sizeBytes: MiB });
    const writable = await admin('POST', '/v1/volumes/va/exports', { protocol: 'nbd', readOnly: false });
    const before = await state();
    const modeBefore = (await stat(path.join(poolPath, 'objects', 'va.raw'))).mode & 0o777;
    const refused = await agent.request('PUT', '/v1/images/img-va', { volume: 'va', mode: 'adopt', tenant: 't1' });
    t.equal(refused.status, 409);
    t.match(refused.body, { error: { code: 'VOLUME_IN_USE', details: { volume: 'va', exports: [writable.id] } } });
    t.same(await state(), before, 'no image row, the volume and its export as they were');
    t.equal((await stat(path.join(poolPath, 'objects', 'va.raw'))).mode & 0o777, modeBefore, 'the file is still writable');
    t.match((await agent.request('GET', '/v1/volumes/va')).body, { kind: 'volume', readOnly: false });
    await admin('DELETE', `/v1/exports/${writable.id}`);
    await admin('POST', '/v1/volumes/va/exports', { protocol: 'nbd', readOnly: true });
    const adopted = await agent.request('PUT', '/v1/images/img-va', { volume: 'va', mode: 'adopt', tenant: 't1' });
    t.equal(adopted.status, 201, 'with only a read-only export, adopted');
    t.match((await agent.request('GET', '/v1/volumes/va')).body, { kind: 'image', readOnly: true });
  });

  await t.test('transfer (admin only): the volume, its snapshots and exports become the new tenant\'s; operations keep theirs; refusals change nothing', async (t) => {
    await admin('PUT', '/v1/volumes/vt', { tenant: 't1', sizeBytes: MiB });
    const snap = await agent.request('PUT', '/v1/volumes/vt/snapshots/vt-s1');
    if (snap.status !== 202) throw new Error(`the snapshot answered ${snap.status}: ${snap.text}`);
    const snapOperation = snap.body.operation.id as string;
    await admin('GET', `/v1/operations/${snapOperation}?wait=true`);
    const vtExport = await admin('POST', '/v1/volumes/vt/exports', { protocol: 'nbd', readOnly: true });
    const images = (await agent.request('GET', '/v1/images')).body as { imageId: string; volumeId: string }[];
    const imageVolume = images.find((i) => i.imageId === 'img-priv')!.volumeId;
    for (const [title, url, body, status, code] of [
      ['to the internal tenant', '/v1/volumes/vt/transfer', { tenant: INTERNAL }, 403, 'TENANT_FORBIDDEN'],
      ['an Image-Volume', `/v1/volumes/${imageVolume}/transfer`, { tenant: 't2' }, 409, 'VOLUME_IS_IMAGE'],
      ['scoped to another tenant', '/v1/volumes/vt/transfer?tenant=t2', { tenant: 't2' }, 404, 'VOLUME_NOT_FOUND'],
      ['an absent volume', '/v1/volumes/absent/transfer', { tenant: 't2' }, 404, 'VOLUME_NOT_FOUND'],
      ['no tenant', '/v1/volumes/vt/transfer', {}, 400, 'BAD_REQUEST'],
    ] as const) {
      const before = await state();
      const reply = await agent.request('POST', url, body);
      t.equal(reply.status, status, `${title}: ${reply.text}`);
      t.equal(reply.body.error.code, code, title);
      t.same(await state(), before, `${title}: nothing changed`);
    }
    const moved = await agent.request('POST', '/v1/volumes/vt/transfer', { tenant: 't2' });
    t.equal(moved.status, 200, moved.text);
    t.match(moved.body, { id: 'vt', tenant: 't2', state: 'available' });
    t.equal(tenantOf(agent.catalogPath, 'vt'), 't2', 'the catalog row');
    t.equal((await as(T1_UID, 'GET', '/v1/volumes/vt')).status, 404, 'the old tenant no longer sees it');
    t.match((await as(T2_UID, 'GET', '/v1/volumes/vt')).body, { id: 'vt', tenant: 't2' }, 'the new tenant does');
    t.match((await as(T2_UID, 'GET', '/v1/volumes/vt/snapshots/vt-s1')).body, { id: 'vt-s1', tenant: 't2' }, 'its snapshot follows');
    t.equal((await as(T2_UID, 'GET', `/v1/exports/${vtExport.id}`)).status, 200, 'its export follows');
    t.equal((await as(T1_UID, 'GET', `/v1/exports/${vtExport.id}`)).status, 404);
    t.match((await agent.request('GET', `/v1/operations/${snapOperation}`)).body, { tenant: 't1' }, 'an operation already recorded keeps its tenant');
    const before = await state();
    const again = await agent.request('POST', '/v1/volumes/vt/transfer', { tenant: 't2' });
    t.equal(again.status, 200, 'the same tenant again');
    t.same(again.body, moved.body);
    t.same(await state(), before, 'a no-op');
    t.equal((await as(T2_UID, 'DELETE', `/v1/exports/${vtExport.id}`)).status, 204, 'the new owner unexports it');
    t.equal((await as(T2_UID, 'DELETE', '/v1/volumes/vt/snapshots/vt-s1')).status, 204, 'and deletes its snapshot');
    t.equal((await as(T2_UID, 'DELETE', '/v1/volumes/vt')).status, 204, 'and the volume');
  });
}
