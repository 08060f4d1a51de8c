import t from 'tap';

import { SharedFsync } from '../../src/pools/shared-fsync.js';

/** An fsync whose every call waits until the test ends it. */
function controlledFsync(): { fsync: () => Promise<void>; calls: Array<{ end: (error?: Error) => void }> } {
  const calls: Array<{ end: (error?: Error) => void }> = [];
  const fsync = (): Promise<void> => new Promise((resolve, reject) => {
    calls.push({ end: (error) => (error ? reject(error) : resolve()) });
  });
  return { fsync, calls };
}

const settled = (p: Promise<unknown>): Promise<string> => Promise.race([
  p.then(() => 'resolved', (e: Error) => `rejected: ${e.message}`),
  new Promise<string>((r) => setImmediate(() => r('pending'))),
]);

t.test('a caller alone gets an fsync of its own', async (t) => {
  const { fsync, calls } = controlledFsync();
  const shared = new SharedFsync(fsync);
  const first = shared.request();
  t.equal(calls.length, 1);
  calls[0]!.end();
  t.equal(await settled(first), 'resolved');
  const second = shared.request();
  t.equal(calls.length, 2, 'a later caller, nothing running: a new fsync');
  calls[1]!.end();
  t.equal(await settled(second), 'resolved');
});

t.test('callers during a running fsync share the next one, which starts after it ends', async (t) => {
  const { fsync, calls } = controlledFsync();
  const shared = new SharedFsync(fsync);
  const first = shared.request();
  const waiting = [shared.request(), shared.request(), shared.request()];
  t.equal(calls.length, 1, 'no second fsync while the first runs');
  t.same(await Promise.all(waiting.map(settled)), ['pending', 'pending', 'pending']);
  calls[0]!.end();
  t.equal(await settled(first), 'resolved');
  t.same(await Promise.all(waiting.map(settled)), ['pending', 'pending', 'pending'], 'the first one does not serve them: it started before they asked');
  t.equal(calls.length, 2, 'one next fsync for the three');
  const late = shared.request();
  t.equal(calls.length, 2, 'a caller during the second waits for a third');
  calls[1]!.end();
  t.same(await Promise.all(waiting.map(settled)), ['resolved', 'resolved', 'resolved']);
  t.equal(await settled(late), 'pending');
  t.equal(calls.length, 3);
  calls[2]!.end();
  t.equal(await settled(late), 'resolved');
});

t.test('an fsync that fails fails exactly the callers it served', async (t) => {
  const { fsync, calls } = controlledFsync();
  const shared = new SharedFsync(fsync);
  const first = shared.request();
  const waiting = shared.request();
  calls[0]!.end(new Error('EIO'));
  t.equal(await settled(first), 'rejected: EIO');
  t.equal(calls.length, 2, 'the waiting caller still gets its own fsync');
  calls[1]!.end();
  t.equal(await settled(waiting), 'resolved');
});
