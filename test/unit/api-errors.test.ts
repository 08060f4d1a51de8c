import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

import { DOMAIN_ERROR_CODES, DomainError } from '../../src/agent/errors.js';
import { ApiError, ERROR_CODES, HTTP_STATUS, toApiError, TRANSPORT_ERROR_CODES } from '../../src/api/errors.js';
import { parseRange } from '../../src/api/parse.js';
import { systemError } from '../../src/native/system-error.js';

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

t.test('the domain\'s codes and the transport\'s are apart, and each has one status', async (t) => {
  const domain = Object.keys(DOMAIN_ERROR_CODES);
  const transport = Object.keys(TRANSPORT_ERROR_CODES);
  t.same(domain.filter((code) => transport.includes(code)), [], 'no code is both');
  t.same(Object.keys(HTTP_STATUS).sort(), [...domain, ...transport].sort(), 'HTTP_STATUS gives a status to every code and no other');
  t.same(Object.keys(ERROR_CODES).sort(), Object.keys(HTTP_STATUS).sort());
  t.same(transport.sort(), ['METHOD_NOT_ALLOWED', 'RANGE_NOT_SATISFIABLE', 'ROUTE_NOT_FOUND', 'UNKNOWN_FIELD']);
});

t.test('the transport answers a DomainError with its code\'s status, the same body, and the headers it builds from details', async (t) => {
  const fault = toApiError(new DomainError('INSUFFICIENT_SPACE', 'ENOSPC: no space left on device', { volume: 'v1' }));
  t.ok(fault instanceof ApiError);
  t.match(fault, { code: 'INSUFFICIENT_SPACE', status: 507, headers: {}, isClientFault: false });
  t.same(fault.toBody(), { error: { code: 'INSUFFICIENT_SPACE', message: 'ENOSPC: no space left on device', details: { volume: 'v1' } } });
  t.match(toApiError(systemError('EBUSY', 'open', '/p/objects/v1.raw')), { code: 'VOLUME_BUSY', status: 409 }, 'what the domain has not decided is decided by its errno table');
  t.match(toApiError(new Error('a bug')), { code: 'INTERNAL', status: 500, message: 'a bug' });
  const own = new ApiError('ROUTE_NOT_FOUND', 'no route', { path: '/v2' });
  t.equal(toApiError(own), own, 'an ApiError is the answer as it is');
  let range: unknown;
  try {
    parseRange('bytes=4096-', 4096);
  } catch (error) {
    range = error;
  }
  t.match(toApiError(range), { code: 'RANGE_NOT_SATISFIABLE', status: 416, details: { range: 'bytes=4096-', sizeBytes: 4096 }, headers: { 'content-range': 'bytes */4096' } });
});
