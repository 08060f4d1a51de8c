import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

import { ApiError, ERROR_CODES } from '../../src/api/errors.js';

const docs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'docs', 'api.md');

t.test('every error code is documented in docs/api.md with its status', async (t) => {
  const text = await readFile(docs, 'utf8');
  for (const [code, { status }] of Object.entries(ERROR_CODES)) {
    t.match(text, new RegExp(`^\\| \`${code}\` \\| ${status} \\|`, 'm'), `${code} (${status}) documented`);
  }
  const documented = [...text.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]);
  t.same(documented.filter((c) => !(c! in ERROR_CODES)), [], 'no documented code is missing from the registry');
});

t.test('statuses are the ones docs/design.md "Control API" assigns (and 416, HTTP\'s answer to a Range past the end; 503, a pool whose kernel side refuses changes; 502, a peer agent\'s export that fails)', async (t) => {
  for (const [code, { status }] of Object.entries(ERROR_CODES)) t.ok([400, 403, 404, 405, 409, 413, 416, 422, 500, 502, 503, 507].includes(status), code);
  t.same(Object.entries(ERROR_CODES).filter(([, { status }]) => status === 502).map(([code]) => code), ['REMOTE_FAILED'], '502 only for a remote source');
  t.same(Object.entries(ERROR_CODES).filter(([, { status }]) => status === 416).map(([code]) => code), ['RANGE_NOT_SATISFIABLE'], 'only for ranges');
  const e = new ApiError('VOLUME_NOT_FOUND', 'volume v1 does not exist', { volume: 'v1' });
  t.equal(e.status, 404);
  t.equal(e.isClientFault, true);
  t.same(e.toBody(), { error: { code: 'VOLUME_NOT_FOUND', message: 'volume v1 does not exist', details: { volume: 'v1' } } });
  t.equal(new ApiError('INTERNAL', 'x').isClientFault, false);
});
