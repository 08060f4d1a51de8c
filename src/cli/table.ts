// Plain-text tables and "key: value" blocks for the CLI's human output.
// Columns are separated by two spaces; the last column is not padded, so no
// line ends in spaces. Widths count UTF-16 units (ids and sizes are ASCII).

export interface Column {
  header: string;
  /** Numbers read best right-aligned. */
  align?: 'left' | 'right';
}

const GAP = '  ';

/** The table as lines, each ending in "\n"; a table without rows is its header. */
export function formatTable(columns: ReadonlyArray<Column | string>, rows: ReadonlyArray<ReadonlyArray<string>>): string {
  const cols = columns.map((c) => (typeof c === 'string' ? { header: c } : c));
  for (const row of rows) {
    if (row.length !== cols.length) throw new RangeError(`table row has ${row.length} cells for ${cols.length} columns`);
  }
  const widths = cols.map((c, i) => Math.max(c.header.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: ReadonlyArray<string>): string => cells
    .map((cell, i) => {
      const last = i === cells.length - 1;
      if (cols[i]!.align === 'right') return cell.padStart(widths[i]!);
      return last ? cell : cell.padEnd(widths[i]!);
    })
    .join(GAP)
    .trimEnd();
  return [cols.map((c) => c.header), ...rows].map((r) => `${line(r)}\n`).join('');
}

/** "key: value" lines with the values aligned; undefined values are left out. */
export function formatFields(fields: ReadonlyArray<readonly [string, string | undefined]>): string {
  const shown = fields.filter((f): f is readonly [string, string] => f[1] !== undefined);
  const width = Math.max(0, ...shown.map(([key]) => key.length + 1));
  return shown.map(([key, value]) => `${`${key}:`.padEnd(width)} ${value}`.trimEnd() + '\n').join('');
}

/** Indents every line of `text` by `spaces`. */
export function indent(text: string, spaces = 2): string {
  const pad = ' '.repeat(spaces);
  return text.split('\n').map((l) => (l === '' ? l : pad + l)).join('\n');
}
