// The per-object lock table: shared readers, exclusive writers, FIFO waiters
// (a waiting delete is not starved by later clones), timed waits.
import t from 'tap';

import { LockBusyError, LockTable } from '../../src/agent/locks.js';

t.test('readers share; a writer waits for them and then runs alone', async (t) => {
  const locks = new LockTable();
  const r1 = await locks.acquire('v', 'shared', 'clone a', 0);
  const r2 = await locks.acquire('v', 'shared', 'clone b', 0);
  t.same(locks.holdersOf('v'), ['clone a', 'clone b']);
  let writerIn = false;
  const writer = locks.acquire('v', 'exclusive', 'delete v', 1000).then((release) => { writerIn = true; return release; });
  r1();
  await new Promise((r) => setImmediate(r));
  t.equal(writerIn, false, 'one reader still holds it');
  r2();
  const release = await writer;
  t.equal(writerIn, true);
  t.same(locks.holdersOf('v'), ['delete v']);
  release();
  t.equal(locks.isHeld('v'), false);
  t.same(locks.keys(), [], 'a free lock leaves no entry behind');
});

t.test('a reader arriving after a waiting writer queues behind it (no starvation)', async (t) => {
  const locks = new LockTable();
  const r1 = await locks.acquire('v', 'shared', 'clone a', 0);
  const order: string[] = [];
  const writer = locks.acquire('v', 'exclusive', 'delete v', 1000).then((release) => { order.push('delete'); return release; });
  const late = locks.acquire('v', 'shared', 'clone late', 1000).then((release) => { order.push('late clone'); return release; });
  r1();
  (await writer)();
  (await late)();
  t.same(order, ['delete', 'late clone']);
});

t.test('a wait that runs out is LockBusyError naming the holders, and leaves the queue clean', async (t) => {
  const locks = new LockTable();
  const r1 = await locks.acquire('v', 'shared', 'clone a', 0);
  const error = await locks.acquire('v', 'exclusive', 'delete v', 20).catch((e: unknown) => e);
  t.type(error, LockBusyError);
  t.same((error as LockBusyError).holders, ['clone a']);
  t.equal((error as LockBusyError).key, 'v');
  const r2 = await locks.acquire('v', 'shared', 'clone b', 0);
  t.pass('a reader gets in at once after the writer gave up');
  r1();
  r2();
  t.same(locks.keys(), []);
});

t.test('writers exclude writers; releasing twice is harmless', async (t) => {
  const locks = new LockTable();
  const w1 = await locks.acquire('v', 'exclusive', 'resize v', 0);
  await t.rejects(locks.acquire('v', 'exclusive', 'delete v', 0), LockBusyError);
  await t.rejects(locks.acquire('v', 'shared', 'clone x', 0), LockBusyError);
  w1();
  w1();
  const w2 = await locks.acquire('v', 'exclusive', 'delete v', 0);
  t.same(locks.holdersOf('v'), ['delete v']);
  w2();
  t.same(await Promise.all([locks.acquire('a', 'exclusive', 'x', 0), locks.acquire('b', 'exclusive', 'y', 0)]).then((rs) => rs.length), 2, 'keys are independent');
});
