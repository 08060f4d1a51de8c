// Image data against a real volagentd on XFS: upload (Content-Length and
// chunked, sparse, durable before visible), download (whole and Range),
// the pool's upload limit, broken uploads and a kill -9 mid-upload leaving
// nothing, and the image-volume cache's LRU eviction under both limits.
// Every refusal is checked on disk and in the catalog.
import { createReadStream } from 'node:fs';
import { mkdir, open, stat } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import path from 'node:path';
import { Readable } from 'node:stream';
import t from 'tap';

import type { AgentProcess } from '../helpers/agent.js';
import { downloadOn, poolEntries, readCatalog, startAgent, streamOn } from '../helpers/agent.js';
import { makeSparseFile, sha256 } from '../helpers/files.js';
import { makeLoopFs, TEST_ROOT } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** A stream of `total` bytes of `fill`, in chunks of `chunk`. */
function pattern(total: number, fill: number, chunk = 256 * KiB): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= total) {
        this.push(null);
        return;
      }
      const n = Math.min(chunk, total - sent);
      sent += n;
      this.push(Buffer.alloc(n, fill));
    },
  });
}

async function until(what: string, check: () => Promise<boolean> | boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const top = t;

if (!skipUnlessRoot(t)) {
  const xfs = await makeLoopFs('xfs', 4 * GiB);
  t.teardown(() => xfs.cleanup());
  const fastPool = path.join(xfs.mountPoint, 'fast');
  const cachePool = path.join(xfs.mountPoint, 'cache');
  const work = path.join(xfs.mountPoint, 'work');
  for (const dir of [fastPool, cachePool, work]) await mkdir(dir);
  await mkdir(TEST_ROOT, { recursive: true });
  const dir = path.join(xfs.mountPoint, 'agent');
  await mkdir(dir);
  const spec = {
    dir, lockWaitMs: 150,
    pools: [
      { name: 'fast', path: fastPool, maxImageBytes: '1GiB' },
      { name: 'cache', path: cachePool, imageCache: { maxBytes: '8MiB', maxCount: 3 } },
    ],
  };
  let agent: AgentProcess = await startAgent(t, spec);
  const objectFile = (poolPath: string, name: string): string => path.join(poolPath, 'objects', `${name}.raw`);
  const state = async (): Promise<unknown> => ({ fast: await poolEntries(fastPool), cache: await poolEntries(cachePool), catalog: readCatalog(agent.catalogPath) });
  const upload = (id: string, query: string, data: Readable | Buffer, headers: Record<string, string | number> = {}) =>
    streamOn(agent.socket, 'PUT', `/v1/images/${id}/data?${query}`, data, { headers });

  // 1 GiB, 24 runs of random data (some not block-aligned), holes between.
  const source = path.join(work, 'source.raw');
  const runs: Array<[number, number]> = [
    ...Array.from({ length: 20 }, (_, i) => [i * 50 * MiB + 3 * MiB, MiB] as [number, number]),
    [5000, 100], [GiB - 3 * MiB - 777, 10_000], [700 * MiB + 123, 2 * MiB], [GiB - 4096, 4096],
  ];
  await makeSparseFile(source, { sizeBytes: GiB, data: runs });
  const sourceDigest = await sha256(source);
  const dataBytes = runs.reduce((sum, [, length]) => sum + length, 0);

  /** An upload of 64 MiB that stops sending after 8 MiB, once those reached the pool; `reply` is its answer. */
  async function stalledUpload(id: string): Promise<{ reply: Promise<unknown> }> {
    const body = new Readable({ read() {} });
    const reply = streamOn(agent.socket, 'PUT', `/v1/images/${id}/data?tenant=alice`, body, { headers: { 'content-length': 64 * MiB } });
    reply.catch(() => undefined);
    body.push(Buffer.alloc(8 * MiB, 0x43));
    await until('the upload to reach the pool', async () => (await poolEntries(fastPool)).some((e) => e.startsWith('.tmp-')));
    return { reply };
  }

  await t.test('upload with Content-Length: a sparse, read-only, durable Image-Volume; download is the same bytes', async (t) => {
    const reply = await upload('img-raw', 'tenant=alice&visibility=public', createReadStream(source, { highWaterMark: MiB }), { 'content-length': GiB });
    t.equal(reply.status, 201, reply.text);
    t.match(reply.body, { imageId: 'img-raw', volumeId: /^iv-/, mode: 'upload', tenant: 'alice', visibility: 'public', cached: false, state: 'available', sizeBytes: GiB, pool: 'fast' });
    const iv = reply.body.volumeId as string;
    const volume = (await agent.request('GET', `/v1/volumes/${iv}`)).body;
    t.match(volume, { kind: 'image', readOnly: true, cloneMethod: 'upload', sizeBytes: GiB, tenant: 'alice', state: 'available' });
    t.ok(volume.allocatedBytes >= dataBytes, `allocated ${volume.allocatedBytes} covers the ${dataBytes} data bytes`);
    t.ok(volume.allocatedBytes <= dataBytes + runs.length * 2 * 4096 + MiB, `allocated ${volume.allocatedBytes} is about the data (${dataBytes}), not 1 GiB`);
    t.equal((await stat(objectFile(fastPool, iv))).mode & 0o777, 0o444, 'the file is read-only');
    t.equal(await sha256(objectFile(fastPool, iv)), sourceDigest, 'the Image-Volume holds the uploaded bytes');
    t.same((await poolEntries(fastPool)).filter((e) => e.startsWith('.tmp-')), [], 'no temporary left');

    const whole = await downloadOn(agent.socket, '/v1/images/img-raw/data');
    t.equal(whole.status, 200);
    t.equal(whole.headers['content-length'], String(GiB));
    t.equal(whole.headers['accept-ranges'], 'bytes');
    t.equal(whole.sha256, sourceDigest, 'download equals the upload by sha256');
  });

  await t.test('download ranges: 206 with Content-Range; past the end is 416 and says the size', async (t) => {
    const handle = await open(source, 'r');
    const expect = async (start: number, length: number): Promise<Buffer> => {
      const buffer = Buffer.alloc(length);
      await handle.read(buffer, 0, length, start);
      return buffer;
    };
    try {
      const cases: Array<[string, number, number]> = [
        ['bytes=5000-5099', 5000, 100],
        ['bytes=4990-5109', 4990, 120],
        [`bytes=${GiB - 100}-`, GiB - 100, 100],
        ['bytes=-4096', GiB - 4096, 4096],
        [`bytes=${GiB - 10}-${GiB + 100}`, GiB - 10, 10],
      ];
      for (const [range, start, length] of cases) {
        const part = await downloadOn(agent.socket, '/v1/images/img-raw/data', { range });
        t.equal(part.status, 206, range);
        t.equal(part.headers['content-range'], `bytes ${start}-${start + length - 1}/${GiB}`, `${range}: content-range`);
        t.same(part.body, await expect(start, length), `${range}: the bytes`);
      }
      for (const range of [`bytes=${GiB}-`, `bytes=${GiB + 5}-${GiB + 10}`, 'bytes=-0']) {
        const refused = await downloadOn(agent.socket, '/v1/images/img-raw/data', { range });
        t.equal(refused.status, 416, range);
        t.equal(refused.headers['content-range'], `bytes */${GiB}`);
        t.equal(JSON.parse(refused.body!.toString()).error.code, 'RANGE_NOT_SATISFIABLE');
      }
      const ignored = await downloadOn(agent.socket, '/v1/images/img-raw/data', { range: 'bytes=0-1,5-6' });
      t.equal(ignored.status, 200, 'several ranges: the whole image (the Range may be ignored)');
      t.equal(ignored.sha256, sourceDigest);
    } finally {
      await handle.close();
    }
  });

  await t.test('a chunked upload of an odd length; a volume cloned from it is a reflink of the same bytes', async (t) => {
    const length = 3 * MiB + 123;
    const reply = await upload('img-chunked', 'tenant=alice', pattern(length, 0x5a, 100_000));
    t.equal(reply.status, 201, reply.text);
    t.match(reply.body, { sizeBytes: length, visibility: 'private', cached: false });
    const download = await downloadOn(agent.socket, '/v1/images/img-chunked/data');
    t.same(download.body, Buffer.alloc(length, 0x5a));
    const clone = await agent.request('PUT', '/v1/volumes/from-upload', { tenant: 'alice', source: { image: 'img-chunked' }, sizeBytes: 4 * MiB });
    t.equal(clone.status, 201, clone.text);
    t.match(clone.body, { cloneMethod: 'reflink', sizeBytes: 4 * MiB, kind: 'volume', readOnly: false });
    t.equal(await sha256(objectFile(fastPool, 'from-upload'), length), await sha256(objectFile(fastPool, reply.body.volumeId)));
  });

  await t.test('bad uploads and downloads get their 4xx and change nothing', async (t) => {
    const before = await state();
    const cases: Array<[string, string, Readable | Buffer, Record<string, string | number>, number, string]> = [
      ['img-raw', 'tenant=alice', Buffer.alloc(4096, 1), {}, 409, 'IMAGE_EXISTS'],
      ['bad..id', 'tenant=alice', Buffer.alloc(4096, 1), {}, 400, 'INVALID_ID'],
      ['img-x', '', Buffer.alloc(4096, 1), {}, 400, 'BAD_REQUEST'], // an admin names the owner,
      ['img-x', 'tenant=alice&pool=nope', Buffer.alloc(4096, 1), {}, 404, 'POOL_NOT_FOUND'],
      ['img-x', 'tenant=alice&visibility=shared', Buffer.alloc(4096, 1), {}, 400, 'BAD_REQUEST'],
      ['img-x', 'tenant=alice&colour=red', Buffer.alloc(4096, 1), {}, 400, 'BAD_REQUEST'],
      ['img-x', 'tenant=alice&cache=true', Buffer.alloc(4096, 1), {}, 422, 'UNSUPPORTED_FOR_POOL'],
      ['img-x', 'tenant=alice', Buffer.alloc(0), { 'content-length': 0 }, 400, 'INVALID_SIZE'],
      ['img-x', 'tenant=alice', pattern(0, 0), {}, 400, 'INVALID_SIZE'],
      ['img-x', 'tenant=alice', pattern(GiB + 4096, 7, MiB), { 'content-length': GiB + 4096, expect: '100-continue' }, 413, 'PAYLOAD_TOO_LARGE'],
    ];
    for (const [id, query, data, headers, status, code] of cases) {
      const reply = await upload(id, query, data, headers);
      t.equal(reply.status, status, `${id}?${query}: ${reply.text}`);
      t.equal(reply.body?.error?.code, code);
    }
    // Chunked past max_image_bytes: refused the moment it passes the limit.
    const chunked = await upload('img-x', 'tenant=alice', pattern(GiB + MiB, 0x11, MiB));
    t.equal(chunked.status, 413, chunked.text);
    t.match(chunked.body.error, { code: 'PAYLOAD_TOO_LARGE', details: { limitBytes: GiB } });

    const downloads: Array<[string, Record<string, string>, number, string]> = [
      ['/v1/images/nope/data', {}, 404, 'IMAGE_NOT_FOUND'],
      ['/v1/images/img-chunked/data?tenant=bob', {}, 404, 'IMAGE_NOT_FOUND'], // scoped to bob: alice's private image is not there
      ['/v1/images/img-raw/data?tenant=bob&x=1', {}, 400, 'BAD_REQUEST'],
    ];
    for (const [url, headers, status, code] of downloads) {
      const reply = await downloadOn(agent.socket, url, headers);
      t.equal(reply.status, status, url);
      t.equal(JSON.parse(reply.body!.toString()).error.code, code);
    }
    t.equal((await downloadOn(agent.socket, '/v1/images/img-raw/data?tenant=bob', { range: 'bytes=0-0' })).status, 206, 'a public image is readable by any tenant');
    t.same(await state(), before, 'nothing changed on disk or in the catalog');
  });

  await t.test('an upload broken off mid-body leaves no image, no volume and no file', async (t) => {
    const before = await state();
    const body = new Readable({ read() {} });
    const reply = streamOn(agent.socket, 'PUT', '/v1/images/img-broken/data?tenant=alice', body, {
      headers: { 'content-length': 64 * MiB },
      onRequest: (req) => {
        body.push(Buffer.alloc(8 * MiB, 0x42));
        void until('the upload to reach the pool', async () => (await poolEntries(fastPool)).some((e) => e.startsWith('.tmp-iv-')))
          .then(() => req.destroy());
      },
    });
    await t.rejects(reply, 'the client broke the connection');
    await until('the agent to settle the broken upload', async () => readCatalog(agent.catalogPath).images.every((i) => i.id !== 'img-broken'));
    await until('the temporary to go', async () => !(await poolEntries(fastPool)).some((e) => e.startsWith('.tmp-')));
    t.same(await state(), before, 'as before the upload');
    t.ok(agent.logs.some((line) => line.includes('UPLOAD_INCOMPLETE')), 'logged as an incomplete upload');
  });

  await t.test('kill -9 mid-upload: after restart no image, no volume and no file', async (t) => {
    const before = await state();
    const { reply } = await stalledUpload('img-killed');
    t.match(readCatalog(agent.catalogPath).images.find((i) => i.id === 'img-killed'), { state: 'creating' }, 'the intent was recorded');
    await agent.kill();
    await t.rejects(reply);
    agent = await startAgent(top, spec); // outlives this subtest
    t.same(await state(), before, 'start-up reconcile removed the row and the temporary');
    t.equal((await agent.request('GET', '/v1/images/img-killed')).status, 404);
  });

  await t.test('SIGTERM mid-upload: the agent breaks the upload off, stops, and keeps nothing', async (t) => {
    const before = await state();
    await stalledUpload('img-stopped');
    const stopped = Date.now();
    t.equal(await agent.stop(), 0, 'a clean exit');
    t.ok(Date.now() - stopped < 10_000, 'without waiting for the rest of the upload');
    t.ok(agent.logs.some((line) => line.includes('broke off uploads and downloads in progress')), 'and says so');
    t.same(await state(), before, 'no image, no volume, no file: nothing left for start-up to settle');
    agent = await startAgent(top, spec);
  });

  await t.test('clients that hang up mid-download: the agent goes on, and lets the image go', async (t) => {
    const before = agent.logs.filter((line) => line.includes('download ended early')).length;
    for (let i = 0; i < 3; i++) {
      await new Promise<void>((resolve) => {
        const req = httpRequest({ socketPath: agent.socket, path: '/v1/images/img-raw/data', agent: false }, (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.on('error', () => resolve());
        req.end();
      });
    }
    await until('the agent to see the three hang-ups', () => agent.logs.filter((line) => line.includes('download ended early')).length === before + 3);
    t.equal((await agent.request('GET', '/v1/version')).status, 200, 'the agent is alive');
    const whole = await downloadOn(agent.socket, '/v1/images/img-raw/data');
    t.equal(whole.sha256, sourceDigest, 'and serves the whole image after them');
  });

  await t.test('deleting an image during a download: the download completes, then the Image-Volume goes', async (t) => {
    const iv = (await agent.request('GET', '/v1/images/img-raw')).body.volumeId as string;
    let resumeReader: (() => void) | undefined;
    const download = downloadOn(agent.socket, '/v1/images/img-raw/data', {}, (res) => {
      res.pause();
      resumeReader = () => res.resume();
    });
    await until('the download to start', () => resumeReader !== undefined);
    t.equal((await agent.request('DELETE', '/v1/images/img-raw')).status, 204);
    t.equal((await agent.request('GET', '/v1/images/img-raw')).body.state, 'deleting');
    t.equal((await agent.request('PUT', '/v1/volumes/late', { tenant: 'alice', source: { image: 'img-raw' } })).status, 404, 'no new clone from it');
    t.ok(await stat(objectFile(fastPool, iv)), 'the Image-Volume stays while it is read');
    resumeReader!();
    t.equal((await download).sha256, sourceDigest, 'the download completed');
    await until('the image to go', async () => (await agent.request('GET', '/v1/images/img-raw')).status === 404);
    t.notOk((await poolEntries(fastPool)).includes(`${iv}.raw`), 'with its Image-Volume');
    t.notOk(readCatalog(agent.catalogPath).volumes.some((v) => v.id === iv), 'and its row');
  });

  await t.test('image cache: LRU eviction under max_count and max_bytes, entries in use kept, hits and misses counted', async (t) => {
    const cacheView = async (): Promise<any> => (await agent.request('GET', '/v1/pools')).body.find((p: any) => p.name === 'cache').imageCache;
    const put = (id: string, bytes: number, fill: number) => upload(id, 'pool=cache&tenant=alice&cache=true', pattern(bytes, fill), { 'content-length': bytes });
    const entries = (): string[] => readCatalog(agent.catalogPath).images.filter((i) => i.cached === 1).map((i) => i.id).sort();
    t.same(await cacheView(), { maxBytes: 8 * MiB, maxCount: 3, entries: 0, bytes: 0, hits: 0, misses: 0, evictions: 0, notCached: 0 });
    for (const [id, fill] of [['c1', 1], ['c2', 2], ['c3', 3]] as const) {
      const reply = await put(id, MiB, fill);
      t.equal(reply.status, 201, reply.text);
      t.match(reply.body, { cached: true, internal: true, pool: 'cache' });
    }
    t.match((await agent.request('GET', `/v1/volumes/${(await agent.request('GET', '/v1/images/c1')).body.volumeId}`)).body, { tenant: 'volagent-internal' }, 'entries live in the internal tenant');
    t.equal((await agent.request('PUT', '/v1/volumes/use-c1', { tenant: 'alice', source: { image: 'c1' } })).status, 201);
    t.equal((await put('c4', MiB, 4)).status, 201, 'a fourth entry');
    t.same(entries(), ['c1', 'c3', 'c4'], 'over max_count: c2, the least recently used, was evicted (c1 was used)');
    const c5 = await put('c5', 6 * MiB, 5);
    t.equal(c5.status, 201, c5.text);
    t.same(entries(), ['c1', 'c4', 'c5'], 'over max_bytes: c3 was evicted, which made enough room');
    t.match(await cacheView(), { entries: 3, bytes: 8 * MiB, hits: 1, misses: 5, evictions: 2 });
    t.equal((await poolEntries(cachePool)).filter((e) => e.endsWith('.raw')).length, 4, 'three entries and use-c1 on disk');

    // c5 (6 MiB) is being read: a 7 MiB entry would need it gone, so nothing is
    // evicted and the upload is kept as a plain image (never an error for the upload).
    const imageVolumeOf = async (id: string): Promise<string> => (await agent.request('GET', `/v1/images/${id}`)).body.volumeId;
    const c5Volume = await imageVolumeOf('c5');
    let resumeReader: (() => void) | undefined;
    const reading = downloadOn(agent.socket, '/v1/images/c5/data', {}, (res) => {
      res.pause();
      resumeReader = () => res.resume();
    });
    await until('the download to start', () => resumeReader !== undefined);
    const read = await put('c6', 7 * MiB, 6);
    t.equal(read.status, 201, read.text);
    t.match(read.body, { imageId: 'c6', cached: false, state: 'available', notCached: /no room: 1 entry is in use/ });
    t.same(entries(), ['c1', 'c4', 'c5'], 'nothing evicted: c5 is being read, and c1 and c4 alone would not make room');
    t.ok((await poolEntries(cachePool)).includes(`${c5Volume}.raw`), "c5's Image-Volume is on disk");
    resumeReader!();
    t.equal((await reading).bytes, 6 * MiB);
    t.equal((await agent.request('DELETE', '/v1/images/c6')).status, 204, 'the plain image is deleted as any image');

    // An exported entry is in use too (regression: it was evicted, its export left pointing at nothing).
    const exported = await agent.request('POST', `/v1/volumes/${c5Volume}/exports`, { protocol: 'nbd', readOnly: true });
    t.equal(exported.status, 201, exported.text);
    const exportedRefusal = await put('c7', 7 * MiB, 6);
    t.equal(exportedRefusal.status, 201, exportedRefusal.text);
    t.match(exportedRefusal.body, { imageId: 'c7', cached: false, notCached: /no room: 1 entry is in use/ });
    t.same(entries(), ['c1', 'c4', 'c5'], 'the exported entry was not evicted');
    t.match((await agent.request('GET', `/v1/exports/${exported.body.id}`)).body, { volume: c5Volume }, 'its export is still served');
    t.match(await cacheView(), { entries: 3, evictions: 2, notCached: 2 });
    t.match(await agent.request('GET', '/metrics'), { text: /volagent_image_cache_not_cached_total\{pool="cache"\} 2/ }, 'counted in the metrics');
    t.equal((await agent.request('DELETE', '/v1/images/c7')).status, 204);
    t.equal((await agent.request('DELETE', `/v1/exports/${exported.body.id}`)).status, 204);
    t.equal((await put('c8', 7 * MiB, 6)).status, 201, 'once the read ended and the export is gone, an upload of the same size evicts and fits');
    t.same(entries(), ['c8'], 'c1, c4 and c5 evicted, least recently used first');

    const before2 = await state();
    const tooBig = await put('c9', 9 * MiB, 7);
    t.equal(tooBig.status, 507, 'larger than max_bytes (declared)');
    t.match(tooBig.body.error, { code: 'IMAGE_CACHE_FULL', details: { maxBytes: 8 * MiB, sizeBytes: 9 * MiB } });
    const tooBigChunked = await upload('c9', 'pool=cache&tenant=alice&cache=true', pattern(9 * MiB, 7));
    t.equal(tooBigChunked.status, 507, 'larger than max_bytes (chunked, refused when it passes)');
    t.same(await state(), before2, 'nothing changed');
    t.match(await cacheView(), { entries: 1, hits: 1, misses: 6, evictions: 5 });
    t.equal((await agent.request('GET', '/v1/volumes/use-c1')).status, 200, 'a volume cloned from an evicted entry stays');
  });
}
