// The catalog as a thin pool's ledger: thin ids allocated once, one pending
// change at a time, commit applies the change and the transaction id together.
import path from 'node:path';

import t from 'tap';
import type { Test } from 'tap';

import { Catalog, ThinLedgerError } from '../../src/catalog/catalog.js';
import { CatalogPoolLedger } from '../../src/catalog/pool-ledger.js';
import { tempDir } from '../helpers/temp-dir.js';

async function openLedger(t: Test): Promise<{ catalog: Catalog; ledger: CatalogPoolLedger }> {
  const dir = await tempDir(t);
  const catalog = Catalog.open(path.join(dir, 'catalog.db'));
  t.teardown(() => catalog.close());
  const ledger = new CatalogPoolLedger(catalog);
  await ledger.recordPool({ pool: 'p', dataDevice: '/dev/vda', metadataDevice: '/dev/vdb', blockSectors: 128 });
  return { catalog, ledger };
}

t.test('a recorded pool starts formatting at transaction 0, and becomes ready', async (t) => {
  const { ledger } = await openLedger(t);
  t.same(ledger.pool('p'), { pool: 'p', dataDevice: '/dev/vda', metadataDevice: '/dev/vdb', blockSectors: 128, phase: 'formatting', transactionId: 0, nextThinId: 0 });
  await ledger.markPoolReady('p');
  t.equal(ledger.pool('p')!.phase, 'ready');
  await t.rejects(ledger.recordPool({ pool: 'p', dataDevice: '/dev/x', metadataDevice: '/dev/y', blockSectors: 128 }), /UNIQUE constraint failed/, 'recorded once');
  t.equal(ledger.pool('other'), undefined);
});

t.test('begin, commit: a create allocates the next id, commit inserts the device and advances the transaction id', async (t) => {
  const { ledger } = await openLedger(t);
  const pending = await ledger.begin('p', { op: 'create', name: 'v1', sizeBytes: 1 << 20, readOnly: false });
  t.same(pending, { op: 'create', name: 'v1', sizeBytes: 1 << 20, readOnly: false, thinId: 0, fromTransactionId: 0, toTransactionId: 1 });
  t.same(ledger.pool('p')!.pending, pending, 'recorded durably as pending');
  t.equal(ledger.pool('p')!.nextThinId, 1, 'the id is taken at once');
  t.same(ledger.devices('p'), [], 'no device before the commit');
  await t.rejects(ledger.begin('p', { op: 'create', name: 'v2', sizeBytes: 1 << 20, readOnly: false }), { name: 'ThinLedgerError', message: /a change is pending \(create of v1\)/ });
  await ledger.commit('p');
  t.match(ledger.pool('p'), { transactionId: 1, nextThinId: 1 });
  t.equal(ledger.pool('p')!.pending, undefined);
  t.same(ledger.device('p', 'v1'), { pool: 'p', name: 'v1', thinId: 0, sizeBytes: 1 << 20, readOnly: false });

  const snap = await ledger.begin('p', { op: 'snapshot', name: 'v1@s', sizeBytes: 1 << 20, readOnly: true, originThinId: 0 });
  t.match(snap, { thinId: 1, fromTransactionId: 1, toTransactionId: 2, originThinId: 0 });
  await ledger.commit('p');
  t.same(ledger.devices('p').map((d) => [d.name, d.thinId, d.readOnly]), [['v1', 0, false], ['v1@s', 1, true]]);

  const del = await ledger.begin('p', { op: 'delete', name: 'v1', thinId: 0 });
  t.match(del, { thinId: 0, fromTransactionId: 2, toTransactionId: 3 });
  t.equal(ledger.pool('p')!.nextThinId, 2, 'a delete allocates nothing');
  await ledger.commit('p');
  t.same(ledger.devices('p').map((d) => d.name), ['v1@s']);
  t.equal(ledger.pool('p')!.transactionId, 3);
});

t.test('abandon forgets the change; its id is never handed out again', async (t) => {
  const { ledger } = await openLedger(t);
  await ledger.begin('p', { op: 'create', name: 'v1', sizeBytes: 65536, readOnly: false });
  await ledger.abandon('p');
  t.match(ledger.pool('p'), { transactionId: 0, nextThinId: 1 });
  t.equal(ledger.pool('p')!.pending, undefined);
  t.same(ledger.devices('p'), []);
  t.equal((await ledger.begin('p', { op: 'create', name: 'v1', sizeBytes: 65536, readOnly: false })).thinId, 1);
});

t.test('refusals change nothing: unknown pool, commit without a change, the 24-bit id space used up', async (t) => {
  const { catalog, ledger } = await openLedger(t);
  await t.rejects(ledger.begin('nope', { op: 'create', name: 'v', sizeBytes: 65536, readOnly: false }), { name: 'ThinLedgerError', message: /thin pool nope is not recorded/ });
  await t.rejects(ledger.commit('p'), { name: 'ThinLedgerError', message: /no change is pending/ });
  catalog.db.prepare('UPDATE thin_pools SET next_thin_id = ? WHERE pool = ?').run(2 ** 24, 'p');
  await t.rejects(ledger.begin('p', { op: 'create', name: 'v', sizeBytes: 65536, readOnly: false }), { message: /every thin id \(24 bits\) has been used/ });
  t.equal(ledger.pool('p')!.pending, undefined);
  t.type(new ThinLedgerError('x'), Error);
});

t.test('updateDevice changes size and read-only flag of one device', async (t) => {
  const { ledger } = await openLedger(t);
  await ledger.begin('p', { op: 'create', name: 'v1', sizeBytes: 65536, readOnly: false });
  await ledger.commit('p');
  await ledger.updateDevice('p', 'v1', { sizeBytes: 131072 });
  t.match(ledger.device('p', 'v1'), { sizeBytes: 131072, readOnly: false });
  await ledger.updateDevice('p', 'v1', { readOnly: true });
  t.match(ledger.device('p', 'v1'), { sizeBytes: 131072, readOnly: true });
});

t.test('a replace (revert) gives the name to a new thin id in one commit; the old id stays retired until its delete', async (t) => {
  const { ledger } = await openLedger(t);
  await ledger.begin('p', { op: 'create', name: 'v1', sizeBytes: 1 << 20, readOnly: false });
  await ledger.commit('p');
  await ledger.begin('p', { op: 'snapshot', name: 'v1@s', sizeBytes: 1 << 20, readOnly: true, originThinId: 0 });
  await ledger.commit('p');
  await ledger.updateDevice('p', 'v1', { sizeBytes: 2 << 20 });
  const pending = await ledger.begin('p', { op: 'replace', name: 'v1', sizeBytes: 2 << 20, readOnly: false, originThinId: 1, replacedThinId: 0 });
  t.match(pending, { thinId: 2, fromTransactionId: 2, toTransactionId: 3 });
  t.same(ledger.device('p', 'v1'), { pool: 'p', name: 'v1', thinId: 0, sizeBytes: 2 << 20, readOnly: false }, 'before the commit: the old id');
  await ledger.commit('p');
  t.same(ledger.device('p', 'v1'), { pool: 'p', name: 'v1', thinId: 2, sizeBytes: 2 << 20, readOnly: false }, 'after: the new id, the volume\'s size');
  t.same(ledger.devices('p').map((d) => [d.name, d.thinId]).sort(), [['v1', 2], ['v1@s', 1], ['~retired-0', 0]]);
  await ledger.begin('p', { op: 'delete', name: '~retired-0', thinId: 0 });
  await ledger.commit('p');
  t.same(ledger.devices('p').map((d) => [d.name, d.thinId]).sort(), [['v1', 2], ['v1@s', 1]]);
  t.equal(ledger.pool('p')!.transactionId, 4);
});
