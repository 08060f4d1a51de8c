// The CLI's human tables and "key: value" blocks.
import t from 'tap';

import { formatFields, formatTable, indent } from '../../src/cli/table.js';

t.test('columns are aligned, two spaces apart, numbers right-aligned, no trailing spaces', async (t) => {
  const text = formatTable(['ID', { header: 'SIZE', align: 'right' }, 'STATE'], [
    ['v1', '10.0 GiB', 'available'],
    ['a-longer-id', '512 B', 'creating'],
  ]);
  t.equal(text, [
    'ID               SIZE  STATE',
    'v1           10.0 GiB  available',
    'a-longer-id     512 B  creating',
    '',
  ].join('\n'));
  for (const line of text.split('\n')) t.notMatch(line, / $/, 'no trailing space');
});

t.test('a right-aligned last column is padded on the left; an empty cell leaves no trailing space', async (t) => {
  t.equal(formatTable(['NAME', { header: 'FREE', align: 'right' }], [['a', '1 B'], ['bb', '10.0 GiB']]),
    'NAME      FREE\na          1 B\nbb    10.0 GiB\n');
  t.equal(formatTable(['ID', 'ERROR'], [['op-1', ''], ['op-2', 'INTERNAL']]), 'ID    ERROR\nop-1\nop-2  INTERNAL\n');
});

t.test('a table without rows is its header', async (t) => {
  t.equal(formatTable(['ID', 'POOL'], []), 'ID  POOL\n');
});

t.test('a row with the wrong number of cells is refused', async (t) => {
  t.throws(() => formatTable(['A', 'B'], [['1']]), RangeError);
});

t.test('fields: keys padded to one column, undefined values left out', async (t) => {
  t.equal(formatFields([['id', 'v1'], ['allocated', '0 B'], ['error', undefined], ['method', '-']]),
    'id:        v1\nallocated: 0 B\nmethod:    -\n');
  t.equal(formatFields([]), '');
});

t.test('indent pads non-empty lines', async (t) => {
  t.equal(indent('a\n\nb\n'), '  a\n\n  b\n');
});
