// One bad row never keeps the agent from starting (issue 19, item 3): states
// that a bug or a hand edit can leave are written into a stopped agent's
// catalog and pool, and the agent must start, serve, and have `check` name
// each one; `check --repair` settles what is safe, in an order the foreign
// keys allow, and leaves the rest (a volume left deleting while exported)
// until its export is gone. Regression: a `deleting` row with an export made
// start-up fail on the foreign key (FOREIGN KEY constraint failed, exit 1).
// Needs root (the privileged lane), for parity with the other agent tests.
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import t from 'tap';

import type { AgentProcess, AgentSpec } from '../helpers/agent.js';
import { poolEntries, readCatalog, startAgent } from '../helpers/agent.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { tempDir } from '../helpers/temp-dir.js';

const MiB = 1024 * 1024;

if (!skipUnlessRoot(t)) {
  const dir = await tempDir(t, 'volagent-bad-rows-');
  const poolPath = path.join(dir, 'pool');
  await mkdir(poolPath);
  const spec: AgentSpec = { dir, pools: [{ name: 'p', path: poolPath, imageCache: { maxBytes: '64MiB', maxCount: 4 } }] };
  const first: AgentProcess = await startAgent(t, spec);
  const must = async (method: string, url: string, body?: unknown, raw?: Buffer) => {
    const reply = await first.request(method, url, body, raw ? { raw, headers: { 'content-type': 'application/octet-stream' } } : {});
    if (reply.status >= 300) throw new Error(`${method} ${url}: ${reply.status} ${reply.text}`);
    return reply.body;
  };
  // A cache entry exported read-only; a volume exported and then (by hand) left deleting; a volume whose row goes.
  const entry = await must('PUT', '/v1/images/c1/data?tenant=t1&cache=true', undefined, Buffer.alloc(MiB, 7));
  const entryExport = await must('POST', `/v1/volumes/${entry.volumeId}/exports`, { protocol: 'nbd', readOnly: true });
  await must('PUT', '/v1/volumes/vd', { tenant: 't1', sizeBytes: MiB });
  const deletingExport = await must('POST', '/v1/volumes/vd/exports', { protocol: 'nbd', readOnly: false });
  await must('PUT', '/v1/volumes/vx', { tenant: 't1', sizeBytes: MiB });
  const strayExport = await must('POST', '/v1/volumes/vx/exports', { protocol: 'nbd', readOnly: true });
  await must('PUT', '/v1/volumes/keep', { tenant: 't1', sizeBytes: MiB });
  if ((await first.stop()) !== 0) throw new Error('the first agent did not stop cleanly');

  // The bad states, written while the agent is down (foreign keys off, as a hand edit with sqlite3 has them).
  await rm(path.join(poolPath, 'objects', `${entry.volumeId}.raw`));
  await rm(path.join(poolPath, 'objects', 'vx.raw'));
  const db = new BetterSqlite3(first.catalogPath);
  db.pragma('foreign_keys = OFF');
  db.prepare("UPDATE volumes SET state = 'deleting' WHERE id = 'vd'").run();
  db.prepare("DELETE FROM volumes WHERE id = 'vx'").run();
  db.close();

  const agent = await startAgent(t, spec);

  await t.test('the agent starts, serves, and check names each bad state', async (t) => {
    t.equal((await agent.request('GET', '/v1/volumes/keep')).status, 200, 'it serves');
    t.equal((await agent.request('PUT', '/v1/volumes/new', { tenant: 't1', sizeBytes: MiB })).status, 201, 'and makes volumes');
    const check = await agent.request('GET', '/v1/check');
    t.equal(check.status, 200);
    t.equal(check.body.clean, false);
    const differences = check.body.differences as Array<Record<string, string>>;
    const find = (kind: string, key: string, value: string) => differences.find((d) => d.kind === kind && d[key] === value);
    t.match(find('missing', 'volume', entry.volumeId), { detail: /object is gone/ }, "the cache entry's Image-Volume file is gone");
    t.match(find('export', 'export', entryExport.id), { detail: /not served/ }, "the entry's export cannot be served");
    t.match(find('export', 'export', strayExport.id), { detail: /names volume vx, which has no catalog row/ }, 'the export whose volume row is gone');
    t.match(find('transitional', 'volume', 'vd'), { detail: /left deleting while exported \(exp-/ }, 'the deleting volume that is exported');
    t.ok(differences.every((d) => d.action === undefined), 'check changes nothing');
  });

  await t.test('repair settles what is safe; the exported deleting volume waits for its export to go', async (t) => {
    const repaired = (await agent.request('POST', '/v1/check/repair')).body;
    const of = (key: string, value: string) => repaired.differences.filter((d: Record<string, string>) => d[key] === value);
    t.match(of('volume', entry.volumeId).find((d: Record<string, string>) => d.kind === 'missing'), { action: 'marked-error' });
    t.match(of('export', entryExport.id), [{ action: 'removed', detail: /which is in error/ }], "the entry's export goes with its object");
    t.match(of('export', strayExport.id), [{ action: 'removed' }], 'the stray export row goes');
    t.match(of('volume', 'vd'), [{ kind: 'transitional' }], 'vd is named again');
    t.equal(of('volume', 'vd')[0].action, undefined, 'and left as it is: it is exported');
    const exports = readCatalog(agent.catalogPath);
    t.same((await agent.request('GET', '/v1/exports')).body.map((e: { id: string }) => e.id), [deletingExport.id], 'only the export of vd is left');
    t.ok(exports.volumes.some((v) => v.id === 'vd' && v.state === 'deleting'));

    t.equal((await agent.request('DELETE', `/v1/exports/${deletingExport.id}`)).status, 204, 'the operator unexports it');
    const finished = (await agent.request('POST', '/v1/check/repair')).body;
    t.match(finished.differences.find((d: Record<string, string>) => d.volume === 'vd'), { kind: 'transitional', action: 'finished' }, 'then repair finishes the delete');
    t.notOk(readCatalog(agent.catalogPath).volumes.some((v) => v.id === 'vd'), 'vd is gone from the catalog');
    t.notOk((await poolEntries(poolPath)).includes('vd.raw'), 'and from the pool');
    const after = (await agent.request('GET', '/v1/check')).body;
    t.same(after, { clean: true, repaired: false, differences: [] }, 'nothing is left to settle');
    t.match((await agent.request('GET', `/v1/volumes/${entry.volumeId}`)).body, { state: 'error', error: 'backend object missing' }, "the lost Image-Volume's row says so");
  });
}
