// The benchmarks' verdicts and `npm run bench -- all`'s pure parts: its
// arguments, the JSON line taken from a bench's output, and the closing table.
import path from 'node:path';

import t from 'tap';

import type { Outcome } from '../../bench/all.js';
import { lastJsonObject, outcomeOf, parseAllArgs, report, verdictsOf } from '../../bench/all.js';
import { atLeast, atMost, below, goalNote, withUnit } from '../../bench/lib.js';

t.test('the verdict constructors write the goal and judge the bound inclusively or not', async (t) => {
  t.same(atMost('p50 agent/floor', 2, 'x', 2), { measure: 'p50 agent/floor', figure: 2, unit: 'x', goal: '<= 2x', met: true });
  t.equal(atMost('p50 agent/floor', 2.01, 'x', 2).met, false);
  t.same(atLeast('upload vs cp', 0.9, 'x', 0.9), { measure: 'upload vs cp', figure: 0.9, unit: 'x', goal: '>= 0.9x', met: true });
  t.equal(atLeast('upload vs cp', 0.89, 'x', 0.9).met, false);
  t.same(below('agent peak RSS', 119.9, 'MiB', 120), { measure: 'agent peak RSS', figure: 119.9, unit: 'MiB', goal: '< 120 MiB', met: true });
  t.equal(below('agent peak RSS', 120, 'MiB', 120).met, false, 'a strict bound is not met at the bound');
});

t.test('a figure not measured (NaN) meets no goal', async (t) => {
  t.equal(atMost('a', NaN, 'ms', 1).met, false);
  t.equal(atLeast('a', NaN, 'x', 1).met, false);
  t.equal(below('a', NaN, 'ms', 20).met, false);
});

t.test('figures print with their unit; goals with their outcome', async (t) => {
  t.equal(withUnit(1.7834, 'x'), '1.78x');
  t.equal(withUnit(146.66, 'MiB'), '146.7 MiB');
  t.equal(withUnit(NaN, 'ms'), '-');
  t.equal(withUnit(null, 'ms'), '-');
  t.equal(goalNote(atMost('a', 3, 'x', 2)), 'goal <= 2x: NOT met');
  t.equal(goalNote(below('a', 78, 'ms', 1000)), 'goal < 1000 ms: met');
});

t.test('arguments: --only and --skip choose benches in the fixed order; the rest goes to each bench', async (t) => {
  const options = parseAllArgs(['--quick', '--only=lvm,clone,api', '--skip=api', '--out=results', '--rounds=2']);
  t.same(options.benches, ['clone', 'lvm']);
  t.equal(options.outDir, path.resolve('results'));
  t.same(options.benchArgs, ['--quick', '--rounds=2']);
  t.same(parseAllArgs([]).benches, ['clone', 'api', 'images', 'nbd', 'remote', 'thin', 'lvm', 'openstack']);
  t.throws(() => parseAllArgs(['--only=clone,bogus']), RangeError);
});

t.test('the last JSON object line is taken, past human lines and a trailing one', async (t) => {
  const output = [
    'bench clone: making loop filesystems',
    '{"bench":"early"}',
    '{ not json: a human line }',
    '{"bench":"clone","verdicts":[]}',
    '[1,2]',
    'peak RSS 95 MiB',
    '',
  ].join('\n');
  t.same(lastJsonObject(output), { bench: 'clone', verdicts: [] });
  t.equal(lastJsonObject('no json here\n'), undefined);
});

t.test('verdicts from a JSON line: null figures back to NaN; malformed or missing ones are refused', async (t) => {
  const [v] = verdictsOf(JSON.parse(JSON.stringify({ verdicts: [below('loop delay', NaN, 'ms', 20)] })) as Record<string, unknown>)!;
  t.ok(Number.isNaN(v!.figure));
  t.equal(v!.goal, '< 20 ms');
  t.equal(verdictsOf({ bench: 'x' }), undefined);
  t.equal(verdictsOf({ verdicts: [{ measure: 'a', figure: 1, unit: 'x', goal: '<= 2x' }] }), undefined, 'no met');
  t.equal(verdictsOf({ verdicts: [null] }), undefined);
});

t.test('a run counts as ran only with exit 0 and a JSON line carrying verdicts', async (t) => {
  const line = JSON.stringify({ bench: 'clone', verdicts: [atMost('a', 1, 'x', 2)] });
  t.match(outcomeOf('clone', 0, `table\n${line}\n`, 'L'), { status: 'ran', verdicts: [{ measure: 'a', met: true }], log: 'L' });
  t.same(outcomeOf('clone', 1, `${line}\n`, 'L'), { bench: 'clone', status: 'failed', reason: 'exit 1', log: 'L' });
  t.same(outcomeOf('clone', 1, 'boom\n', 'L'), { bench: 'clone', status: 'failed', reason: 'exit 1, no JSON line', log: 'L' });
  t.same(outcomeOf('clone', 0, '{"bench":"clone"}\n', 'L'), { bench: 'clone', status: 'failed', reason: 'no verdicts in its JSON line', log: 'L' });
});

t.test('the report: one table of every verdict, then the benches not run and failed, then a count', async (t) => {
  const outcomes: Outcome[] = [
    { bench: 'clone', status: 'ran', log: 'clone.log', result: {}, verdicts: [atMost('reflink engine/floor', 1.1, 'x', 1.3), below('peak RSS', 151, 'MiB', 150)] },
    { bench: 'api', status: 'ran', log: 'api.log', result: {}, verdicts: [below('loop delay p99', NaN, 'ms', 20)] },
    { bench: 'nbd', status: 'not run', reason: 'not installed: nbdkit (Debian package nbdkit)' },
    { bench: 'images', status: 'failed', reason: 'exit 1, no JSON line', log: '/out/images.log' },
  ];
  t.equal(report(outcomes), [
    'bench  measure                  figure  goal       result',
    'clone  reflink engine/floor      1.10x  <= 1.3x    met',
    'clone  peak RSS              151.0 MiB  < 150 MiB  NOT met',
    'api    loop delay p99                -  < 20 ms    NOT met',
    'NOT RUN  nbd: not installed: nbdkit (Debian package nbdkit)',
    'FAILED   images: exit 1, no JSON line; log /out/images.log',
    '1 of 3 goals met; benches: 2 ran, 1 not run, 1 failed',
    '',
  ].join('\n'));
});
