import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import t from 'tap';

import BetterSqlite3 from 'better-sqlite3';

import { Catalog, IllegalTransitionError } from '../../src/catalog/catalog.js';
import type { NewVolume } from '../../src/catalog/catalog.js';
import { MIGRATIONS, migrate, schemaVersion } from '../../src/catalog/migrations.js';
import { tempDir } from '../helpers/temp-dir.js';

const catalogModule = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'catalog', 'catalog.js')).href;

const volume = (id: string, extra: Partial<NewVolume> = {}): NewVolume => ({
  id, pool: 'default', tenant: 't1', kind: 'volume', sizeBytes: 1 << 20, requestKey: `key-${id}`, ...extra,
});

t.test('a new catalog is migrated, in WAL mode with synchronous=FULL', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'state', 'catalog.db');
  const catalog = Catalog.open(file);
  t.teardown(() => catalog.close());
  t.equal(schemaVersion(catalog.db), MIGRATIONS.length);
  t.equal(catalog.db.pragma('journal_mode', { simple: true }), 'wal');
  t.equal(catalog.db.pragma('synchronous', { simple: true }), 2, 'FULL');
  t.equal(catalog.db.pragma('foreign_keys', { simple: true }), 1);
});

t.test('migrations run once and refuse a newer schema', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'catalog.db');
  Catalog.open(file).close();
  const db = new BetterSqlite3(file);
  t.teardown(() => db.close());
  t.same(migrate(db), { from: MIGRATIONS.length, to: MIGRATIONS.length }, 'nothing to do the second time');
  db.pragma(`user_version = ${MIGRATIONS.length + 1}`);
  t.throws(() => migrate(db), /newer than this volagent understands/);
  t.throws(() => Catalog.open(file), /newer than this volagent understands/, 'open refuses too');
});

t.test('a failing migration leaves the previous version whole', async (t) => {
  const db = new BetterSqlite3(':memory:');
  t.teardown(() => db.close());
  t.throws(() => migrate(db, ['CREATE TABLE a (x INTEGER);', 'CREATE TABLE b (x INTEGER); CREATE TABLE a (y INTEGER);']));
  t.equal(schemaVersion(db), 1);
  t.same(db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`).all(), [{ name: 'a' }], 'no half of migration 2');
});

t.test('insertCreating records intent once and returns the existing row on a repeat', async (t) => {
  const catalog = Catalog.open(':memory:', { now: () => '2026-01-01T00:00:00.000Z' });
  t.teardown(() => catalog.close());
  const first = catalog.insertCreating(volume('v1', { source: { kind: 'image', id: 'img' } }));
  t.equal(first.inserted, true);
  t.match(first.row, { id: 'v1', state: 'creating', source: { kind: 'image', id: 'img' }, readOnly: false, requestKey: 'key-v1' });
  const again = catalog.insertCreating(volume('v1', { requestKey: 'other' }));
  t.equal(again.inserted, false);
  t.equal(again.row.requestKey, 'key-v1', 'the stored request, for the caller to compare');
  t.equal(catalog.listVolumes().length, 1);
});

t.test('transitions are compare-and-set and follow the state machine', async (t) => {
  const catalog = Catalog.open(':memory:');
  t.teardown(() => catalog.close());
  catalog.insertCreating(volume('v1'));
  t.equal(catalog.transitionVolume('v1', 'creating', 'available', { cloneMethod: 'reflink' }), true);
  t.equal(catalog.transitionVolume('v1', 'creating', 'available'), false, 'a second writer loses');
  t.match(catalog.getVolume('v1'), { state: 'available', cloneMethod: 'reflink' });
  t.throws(() => catalog.transitionVolume('v1', 'available', 'creating'), IllegalTransitionError);
  t.equal(catalog.removeVolume('v1'), false, 'only a deleting row can be removed');
  t.equal(catalog.transitionVolume('v1', 'available', 'deleting'), true);
  t.equal(catalog.removeVolume('v1'), true);
  t.equal(catalog.getVolume('v1'), undefined);
  t.equal(catalog.transitionVolume('absent', 'creating', 'error', { error: 'x' }), false);
  catalog.insertCreating(volume('v2'));
  catalog.transitionVolume('v2', 'creating', 'error', { error: 'ENOSPC: no space left on device' });
  t.match(catalog.getVolume('v2'), { state: 'error', error: 'ENOSPC: no space left on device' });
});

t.test('filters and the reconcile list', async (t) => {
  const catalog = Catalog.open(':memory:');
  t.teardown(() => catalog.close());
  catalog.insertCreating(volume('a'));
  catalog.insertCreating(volume('b', { tenant: 't2', kind: 'image', readOnly: true }));
  catalog.insertCreating(volume('c', { pool: 'fast' }));
  catalog.transitionVolume('b', 'creating', 'available');
  catalog.transitionVolume('c', 'creating', 'available');
  catalog.transitionVolume('c', 'available', 'deleting');
  t.same(catalog.listVolumes({ tenant: 't2' }).map((v) => v.id), ['b']);
  t.same(catalog.listVolumes({ kind: 'image' }).map((v) => [v.id, v.readOnly]), [['b', true]]);
  t.same(catalog.listVolumes({ pool: 'default', state: 'creating' }).map((v) => v.id), ['a']);
  t.same(catalog.transitionalVolumes().map((v) => [v.id, v.state]), [['a', 'creating'], ['c', 'deleting']]);
});

t.test('operations record progress and finish once', async (t) => {
  const catalog = Catalog.open(':memory:');
  t.teardown(() => catalog.close());
  catalog.insertOperation({ id: 'op1', kind: 'clone', targetId: 'v1', totalBytes: 100, tenant: 't' });
  catalog.recordProgress('op1', 40, 100);
  t.match(catalog.getOperation('op1'), { state: 'running', tenant: 't', doneBytes: 40, totalBytes: 100 });
  t.same(catalog.runningOperations().map((o) => o.id), ['op1']);
  t.equal(catalog.finishOperation('op1', 'cancelled', { code: 'CANCELLED', message: 'cancelled by client' }), true);
  t.equal(catalog.finishOperation('op1', 'succeeded'), false, 'a finished operation stays finished');
  catalog.recordProgress('op1', 90, 100);
  t.match(catalog.getOperation('op1'), { state: 'cancelled', doneBytes: 40, error: { code: 'CANCELLED', message: 'cancelled by client' } });
});

t.test('a committed row survives SIGKILL of the writer; an uncommitted one does not', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'catalog.db');
  const child = (body: string): ReturnType<typeof spawnSync> => spawnSync(process.execPath, ['--input-type=module', '-e', `
    const { Catalog } = await import(${JSON.stringify(catalogModule)});
    const catalog = Catalog.open(${JSON.stringify(file)});
    ${body}
    process.kill(process.pid, 'SIGKILL');
  `], { encoding: 'utf8' });
  const committed = child(`catalog.insertCreating({ id: 'kept', pool: 'p', tenant: 't', kind: 'volume', sizeBytes: 1, requestKey: 'k' });`);
  t.equal(committed.signal, 'SIGKILL', String(committed.stderr));
  const torn = child(`catalog.db.exec('BEGIN IMMEDIATE');
    catalog.db.prepare("INSERT INTO volumes (id, pool, tenant, kind, size_bytes, state, request_key, created_at, updated_at) VALUES ('lost', 'p', 't', 'volume', 1, 'creating', 'k', 'x', 'x')").run();`);
  t.equal(torn.signal, 'SIGKILL', String(torn.stderr));
  const catalog = Catalog.open(file);
  t.teardown(() => catalog.close());
  t.match(catalog.getVolume('kept'), { id: 'kept', state: 'creating' });
  t.equal(catalog.getVolume('lost'), undefined, 'the open transaction rolled back');
  t.equal(catalog.db.pragma('integrity_check', { simple: true }), 'ok');
});

t.test('snapshot ids are unique per agent; intent, outcome and discard are compare-and-set', async (t) => {
  const catalog = Catalog.open(':memory:');
  t.teardown(() => catalog.close());
  for (const id of ['v1', 'v2']) {
    catalog.insertCreating({ id, pool: 'p', tenant: 't', kind: 'volume', sizeBytes: 512, requestKey: id });
    catalog.transitionVolume(id, 'creating', 'available');
  }
  t.match(catalog.insertSnapshotCreating({ volumeId: 'v1', id: 's1', pool: 'p', sizeBytes: 512 }), { inserted: true, row: { volumeId: 'v1', id: 's1', state: 'creating' } });
  t.match(catalog.insertSnapshotCreating({ volumeId: 'v2', id: 's1', pool: 'p', sizeBytes: 512 }), { inserted: false, row: { volumeId: 'v1' } }, 'the id is taken on v1');
  t.throws(() => catalog.db.prepare(`INSERT INTO snapshots (volume_id, id, pool, size_bytes, state, created_at, updated_at) VALUES ('v2', 's1', 'p', 1, 'creating', 'x', 'x')`).run(),
    /UNIQUE/, 'the schema enforces it too');
  t.same(catalog.transitionalSnapshots().map((s) => s.id), ['s1']);
  t.equal(catalog.transitionSnapshot('v1', 's1', 'creating', 'available', { cloneMethod: 'reflink' }), true);
  t.equal(catalog.discardCreatingSnapshot('v1', 's1'), false, 'an available snapshot is not discarded');
  t.match(catalog.findSnapshot('s1'), { volumeId: 'v1', state: 'available', cloneMethod: 'reflink' });
  t.throws(() => catalog.db.prepare(`DELETE FROM volumes WHERE id = 'v1'`).run(), /FOREIGN KEY/, 'a volume row cannot go while it has snapshots');
  t.equal(catalog.removeSnapshot('v1', 's1'), false, 'only a deleting snapshot is removed');
  catalog.transitionSnapshot('v1', 's1', 'available', 'deleting');
  t.equal(catalog.removeSnapshot('v1', 's1'), true);
  t.same(catalog.listSnapshots(), []);
  catalog.insertCreating({ id: 'v3', pool: 'p', tenant: 't', kind: 'volume', sizeBytes: 512, requestKey: 'k' });
  t.equal(catalog.discardCreatingVolume('v3'), true);
  t.equal(catalog.discardCreatingVolume('v1'), false, 'an available volume is never discarded');
});

t.test('listOperations: running first by age, then the newest finished ones', async (t) => {
  let clock = 0;
  const catalog = Catalog.open(':memory:', { now: () => new Date(Date.UTC(2026, 0, 1, 0, 0, clock++)).toISOString() });
  t.teardown(() => catalog.close());
  for (const id of ['a', 'b', 'c']) catalog.insertOperation({ id, kind: 'clone', targetId: id, totalBytes: 1, tenant: 't' });
  catalog.finishOperation('a', 'failed', { code: 'INSUFFICIENT_SPACE', message: 'ENOSPC' });
  t.same(catalog.listOperations().map((o) => o.id), ['c', 'b', 'a']);
  t.same(catalog.listOperations(0).map((o) => o.id), ['c', 'b'], 'finished ones are capped');
  t.match(catalog.getOperation('a'), { state: 'failed', error: { code: 'INSUFFICIENT_SPACE', message: 'ENOSPC' } });
});

t.test('finishOperation prunes: every running operation stays, and the keepFinishedOperations that ended last (by end time, not start)', async (t) => {
  let clock = 0;
  const catalog = Catalog.open(':memory:', { now: () => new Date(Date.UTC(2026, 0, 1, 0, 0, clock++)).toISOString(), keepFinishedOperations: 3 });
  t.teardown(() => catalog.close());
  t.equal(catalog.keepFinishedOperations, 3);
  const ids = Array.from({ length: 10 }, (_, i) => `o${i}`);
  for (const id of ids) catalog.insertOperation({ id, kind: 'clone', targetId: id, totalBytes: 1, tenant: 't' });
  const rows = (): string[] => (catalog.db.prepare('SELECT id FROM operations ORDER BY id').all() as Array<{ id: string }>).map((r) => r.id);
  const ended: string[] = [];
  const states = ['succeeded', 'failed', 'cancelled'] as const;
  for (const [i, id] of ['o5', 'o1', 'o8', 'o0', 'o3', 'o7'].entries()) {
    t.equal(catalog.finishOperation(id, states[i % 3]!), true);
    ended.push(id);
    const running = ids.filter((o) => !ended.includes(o));
    t.same(rows(), [...running, ...ended.slice(-3)].sort(), `after ${id} ended: the running ones and the last 3 ended`);
  }
  t.same(rows(), ['o0', 'o2', 'o3', 'o4', 'o6', 'o7', 'o9'], 'o5, o1 and o8 ended first and are gone; o0 started first and ended late: kept');
  t.same(catalog.countOperationsByState(), { running: 4, succeeded: 1, failed: 1, cancelled: 1 });
  t.equal(catalog.finishOperation('o7', 'failed'), false, 'ending an ended operation changes nothing');
  t.same(rows(), ['o0', 'o2', 'o3', 'o4', 'o6', 'o7', 'o9']);
});

t.test('keepFinishedOperations 0 keeps only running operations; the default is 1000', async (t) => {
  const catalog = Catalog.open(':memory:', { keepFinishedOperations: 0 });
  t.teardown(() => catalog.close());
  for (const id of ['a', 'b']) catalog.insertOperation({ id, kind: 'clone', targetId: id, totalBytes: 1, tenant: 't' });
  catalog.finishOperation('a', 'succeeded');
  t.same(catalog.listOperations().map((o) => o.id), ['b']);
  t.equal(catalog.getOperation('a'), undefined);
  const byDefault = Catalog.open(':memory:');
  t.teardown(() => byDefault.close());
  t.equal(byDefault.keepFinishedOperations, 1000);
});
