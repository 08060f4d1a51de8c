import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';

import { Catalog, IllegalTransitionError } from '../../src/catalog/catalog.js';
import type { NewVolume } from '../../src/catalog/catalog.js';
import { CatalogWriter } from '../../src/catalog/writer.js';
import { commitGroup } from '../../src/catalog/writer-group.js';
import type { WriteCall } from '../../src/catalog/writer-wire.js';
import { inlineWrites } from '../../src/catalog/writes.js';
import { tempDir } from '../helpers/temp-dir.js';

const volume = (id: string): NewVolume => ({ id, pool: 'default', tenant: 't1', kind: 'volume', sizeBytes: 1 << 20, requestKey: `key-${id}` });

async function openPair(t: Test): Promise<{ file: string; reader: Catalog; writer: CatalogWriter }> {
  const file = path.join(await tempDir(t), 'catalog.db');
  const reader = Catalog.open(file);
  const writer = await CatalogWriter.start(file);
  t.teardown(async () => {
    await writer.close();
    reader.close();
  });
  return { file, reader, writer };
}

t.test('a write resolves once committed, and a read on another connection sees it', async (t) => {
  const { reader, writer } = await openPair(t);
  const inserted = await writer.writes.insertCreating(volume('v1'), { id: 'op-1', kind: 'clone', targetId: 'v1', totalBytes: 10, tenant: 't' });
  t.equal(inserted.inserted, true);
  t.equal(reader.getVolume('v1')?.state, 'creating');
  t.equal(reader.getVolume('v1')?.operationId, 'op-1', 'the operation is named by the row');
  t.equal(reader.getOperation('op-1')?.state, 'running', 'and inserted in the same transaction');
  t.equal(await writer.writes.transitionVolume('v1', 'creating', 'available', { cloneMethod: 'reflink' }), true);
  t.equal(reader.getVolume('v1')?.state, 'available');
  const again = await writer.writes.insertCreating(volume('v1'), { id: 'op-2', kind: 'clone', targetId: 'v1', totalBytes: 10, tenant: 't' });
  t.equal(again.inserted, false, 'a taken id returns the existing row');
  t.equal(reader.getOperation('op-2'), undefined, 'and inserts no operation');
});

t.test('errors cross the thread as what they were, and change nothing', async (t) => {
  const { reader, writer } = await openPair(t);
  await writer.writes.insertCreating(volume('v1'));
  const illegal = writer.writes.transitionVolume('v1', 'creating', 'deleting');
  await t.rejects(illegal, IllegalTransitionError);
  await illegal.catch((error: IllegalTransitionError) => t.same([error.id, error.from, error.to], ['v1', 'creating', 'deleting']));
  await t.rejects(writer.writes.insertOperation({ id: 'op-1', kind: 'clone', targetId: 'v1', totalBytes: 1, tenant: 't' })
    .then(() => writer.writes.insertOperation({ id: 'op-1', kind: 'clone', targetId: 'v1', totalBytes: 1, tenant: 't' })),
  { code: 'SQLITE_CONSTRAINT_PRIMARYKEY' }, 'a constraint error keeps its SQLite code');
  t.equal(reader.getVolume('v1')?.state, 'creating');
  t.equal(reader.listOperations().length, 1);
});

t.test('many concurrent writes: each answered, all durable, in fewer commits than calls or as many', async (t) => {
  const { file, reader, writer } = await openPair(t);
  const ids = Array.from({ length: 50 }, (_, i) => `v${i}`);
  const results = await Promise.all(ids.map((id) => writer.writes.insertCreating(volume(id))));
  t.ok(results.every((r) => r.inserted));
  t.equal(reader.listVolumes().length, 50);
  const { calls, commits } = writer.stats();
  t.equal(calls, 50);
  t.ok(commits >= 1 && commits <= 50, `${commits} commit(s) for 50 calls`);
  await writer.close();
  const fresh = Catalog.open(file);
  t.teardown(() => fresh.close());
  t.equal(fresh.listVolumes().length, 50, 'after close, a new connection sees every row');
});

t.test('close commits what was sent; later calls are refused', async (t) => {
  const { reader, writer } = await openPair(t);
  const sent = writer.writes.insertCreating(volume('v1'));
  const closed = writer.close();
  t.equal((await sent).inserted, true);
  await closed;
  t.equal(reader.getVolume('v1')?.state, 'creating');
  await t.rejects(writer.writes.insertCreating(volume('v2')), /closed/);
  t.equal(reader.getVolume('v2'), undefined);
});

t.test('a writer on a file that is not a catalog fails to start with SQLite\'s error', async (t) => {
  const dir = await tempDir(t);
  await t.rejects(CatalogWriter.start(dir), { code: 'SQLITE_CANTOPEN' });
});

t.test('group commit: a failing call is rolled back alone, the others commit', async (t) => {
  const catalog = Catalog.open(path.join(await tempDir(t), 'catalog.db'));
  t.teardown(() => catalog.close());
  await inlineWrites(catalog).insertCreating(volume('v0'));
  const calls: WriteCall[] = [
    { type: 'call', id: 1, method: 'insertCreating', args: [volume('v1')], durability: 'durable' },
    // Its operation id is taken (inserted below): it fails and leaves no volume row.
    { type: 'call', id: 2, method: 'insertCreating', args: [volume('v1-dup'), { id: 'op-x', kind: 'clone', targetId: 'v1', totalBytes: 1, tenant: 't' }], durability: 'durable' },
    { type: 'call', id: 3, method: 'transitionVolume', args: ['v0', 'creating', 'deleting'], durability: 'durable' },
    { type: 'call', id: 4, method: 'transitionVolume', args: ['v0', 'creating', 'available', { cloneMethod: 'create' }], durability: 'durable' },
    { type: 'call', id: 5, method: 'notAWrite' as WriteCall['method'], args: [], durability: 'durable' },
  ];
  const before = catalog.db.prepare('SELECT count(*) AS n FROM volumes').get() as { n: number };
  await inlineWrites(catalog).insertOperation({ id: 'op-x', kind: 'clone', targetId: 'v0', totalBytes: 1, tenant: 't' });
  const replies = commitGroup(catalog, calls);
  t.same(replies.map((r) => r.id), [1, 2, 3, 4, 5], 'one reply per call, in order');
  t.ok('value' in replies[0]!);
  t.match(replies[1], { error: { code: 'SQLITE_CONSTRAINT_PRIMARYKEY' } });
  t.match(replies[2], { error: { name: 'IllegalTransitionError', transition: { id: 'v0', from: 'creating', to: 'deleting' } } });
  t.match(replies[3], { value: true });
  t.match(replies[4], { error: { name: 'TypeError' } });
  t.equal(catalog.db.inTransaction, false, 'the group is committed');
  t.equal(catalog.getVolume('v1')?.state, 'creating');
  t.equal(catalog.getVolume('v1-dup'), undefined, 'the failed call left nothing');
  t.equal(catalog.getVolume('v0')?.state, 'available');
  t.equal((catalog.db.prepare('SELECT count(*) AS n FROM volumes').get() as { n: number }).n, before.n + 1);
});

t.test('a group of deferred calls only commits without its fsync; one durable call makes the group durable', async (t) => {
  const catalog = Catalog.open(path.join(await tempDir(t), 'catalog.db'));
  t.teardown(() => catalog.close());
  const statements: string[] = [];
  const exec = catalog.db.exec.bind(catalog.db);
  catalog.db.exec = (sql: string) => {
    statements.push(sql);
    return exec(sql);
  };
  const call = (id: number, durability: WriteCall['durability']): WriteCall => ({ type: 'call', id, method: 'insertCreating', args: [volume(`v${id}`)], durability });
  const synchronous = (): unknown => catalog.db.pragma('synchronous', { simple: true });

  t.match(commitGroup(catalog, [call(1, 'deferred'), call(2, 'deferred')]), [{ value: { inserted: true } }, { value: { inserted: true } }]);
  t.same(statements.filter((s) => s.startsWith('PRAGMA') || s === 'BEGIN IMMEDIATE' || s === 'COMMIT'),
    ['PRAGMA synchronous = NORMAL', 'BEGIN IMMEDIATE', 'COMMIT', 'PRAGMA synchronous = FULL'], 'committed at NORMAL (no fsync of the WAL), then FULL again');
  t.equal(synchronous(), 2, 'the connection is back at FULL');
  t.equal(catalog.getVolume('v2')?.state, 'creating', 'and the rows are committed');

  statements.length = 0;
  t.match(commitGroup(catalog, [call(3, 'deferred'), call(4, 'durable')]), [{ value: { inserted: true } }, { value: { inserted: true } }]);
  t.notOk(statements.some((s) => s.startsWith('PRAGMA')), 'a group with a durable call commits at FULL: its fsync covers the deferred one');

  statements.length = 0;
  catalog.db.exec('BEGIN'); // a group whose BEGIN fails: FULL is restored all the same
  t.match(commitGroup(catalog, [call(5, 'deferred')]), [{ error: { message: /transaction/ } }]);
  t.equal(statements.at(-1), 'PRAGMA synchronous = FULL');
  t.equal(synchronous(), 2);
});

t.test('a deferred write resolves committed and visible, and a later close keeps it', async (t) => {
  const { file, reader, writer } = await openPair(t);
  await writer.writes.insertCreating(volume('v1'));
  t.equal(await writer.deferredWrites.transitionVolume('v1', 'creating', 'available', { cloneMethod: 'reflink' }), true);
  t.equal(reader.getVolume('v1')?.state, 'available', 'another connection sees it at once');
  await t.rejects(writer.deferredWrites.transitionVolume('v1', 'creating', 'deleting'), IllegalTransitionError, 'its errors cross the thread as durable ones do');
  await writer.close();
  const fresh = Catalog.open(file);
  t.teardown(() => fresh.close());
  t.match(fresh.getVolume('v1'), { state: 'available', cloneMethod: 'reflink' });
});

t.test('the writer thread prunes ended operations with its keepFinishedOperations', async (t) => {
  const file = path.join(await tempDir(t), 'catalog.db');
  const reader = Catalog.open(file);
  const writer = await CatalogWriter.start(file, { keepFinishedOperations: 2 });
  t.teardown(async () => {
    await writer.close();
    reader.close();
  });
  for (const id of ['a', 'b', 'c', 'd', 'e']) await writer.writes.insertOperation({ id, kind: 'clone', targetId: id, totalBytes: 1, tenant: 't' });
  // Ended one per commit, a few ms apart: end times (updated_at, millisecond ISO text) differ, so the order is theirs, not rowid's.
  for (const id of ['d', 'a', 'c', 'b']) {
    t.equal(await writer.writes.finishOperation(id, 'succeeded'), true);
    await new Promise((r) => setTimeout(r, 5));
  }
  t.same((reader.db.prepare('SELECT id, state FROM operations ORDER BY id').all()), [
    { id: 'b', state: 'succeeded' }, { id: 'c', state: 'succeeded' }, { id: 'e', state: 'running' },
  ], 'the running one and the 2 that ended last');
});
