// Exit statuses: each agent error status, each client-side failure, and the
// table in docs/cli.md.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

import { ERROR_CODES } from '../../src/api/errors.js';
import { AgentError, AgentUnreachableError } from '../../src/cli/agent-client.js';
import { ExitCode, exitCodeForStatus, UsageError } from '../../src/cli/exit-codes.js';
import { OperationEndedError, StoppedWaitingError } from '../../src/cli/operation-wait.js';
import { describeError, exitCodeFor } from '../../src/cli/volagent.js';
import { systemError } from '../../src/native/system-error.js';

const docs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'docs', 'cli.md');

t.test('the values scripts rely on', async (t) => {
  t.same(ExitCode, { ok: 0, failed: 1, usage: 2, notFound: 3, conflict: 4, unreachable: 5, denied: 6 });
});

t.test('agent statuses: invalid request 2, absent 3, conflict 4, denied 6, agent fault 1', async (t) => {
  const expected: Record<number, ExitCode> = { 400: 2, 403: 6, 404: 3, 405: 2, 409: 4, 413: 2, 416: 2, 422: 2, 500: 1, 502: 1, 503: 1, 507: 1 };
  for (const [status, code] of Object.entries(expected)) t.equal(exitCodeForStatus(Number(status)), code, `status ${status}`);
  for (const [name, { status }] of Object.entries(ERROR_CODES)) {
    t.equal(exitCodeFor(new AgentError(status, name, 'x')), expected[status], `${name} (${status}) has a decided exit status`);
  }
  t.equal(exitCodeFor(new AgentError(200, 'BAD_RESPONSE', 'not JSON')), ExitCode.failed, 'an unreadable answer is a fault');
});

t.test('client-side failures', async (t) => {
  const socket = { path: '/x.sock', source: 'option' as const };
  t.equal(exitCodeFor(new UsageError('usage: x')), ExitCode.usage);
  t.equal(exitCodeFor(new AgentUnreachableError(socket, 'missing', 'ENOENT')), ExitCode.unreachable);
  t.equal(exitCodeFor(new AgentUnreachableError(socket, 'refused', 'ECONNREFUSED')), ExitCode.unreachable);
  t.equal(exitCodeFor(new AgentUnreachableError(socket, 'denied', 'EACCES')), ExitCode.denied);
  const op = { id: 'op-1', kind: 'clone', target: 'v2', state: 'failed' as const, doneBytes: 0, totalBytes: 1, createdAt: '', updatedAt: '', error: { code: 'INSUFFICIENT_SPACE', message: 'full' } };
  t.equal(exitCodeFor(new OperationEndedError(op, 'clone failed')), ExitCode.failed);
  t.equal(exitCodeFor(new StoppedWaitingError('op-1')), ExitCode.failed);
  t.equal(exitCodeFor(systemError('ENOENT', 'open', '/a')), ExitCode.notFound, 'copy: a missing file');
  t.equal(exitCodeFor(systemError('EEXIST', 'open', '/a')), ExitCode.conflict, 'copy: an existing file');
  t.equal(exitCodeFor(new Error('?')), ExitCode.failed);
});

t.test('one line per error: CODE: message, and the body --json prints', async (t) => {
  const e = new AgentError(404, 'VOLUME_NOT_FOUND', 'volume v1 does not exist', { volume: 'v1' });
  t.same(describeError(e), { line: 'VOLUME_NOT_FOUND: volume v1 does not exist', body: { error: { code: 'VOLUME_NOT_FOUND', message: 'volume v1 does not exist', details: { volume: 'v1' } } } });
  const u = describeError(new AgentUnreachableError({ path: '/nope/c.sock', source: 'option' }, 'missing', 'ENOENT'));
  t.equal(u.line, 'AGENT_UNREACHABLE: no agent socket at /nope/c.sock (from --socket): the agent is not running, or listens elsewhere');
  t.same(u.body, { error: { code: 'AGENT_UNREACHABLE', message: u.line.slice('AGENT_UNREACHABLE: '.length), details: { socket: '/nope/c.sock', errno: 'ENOENT' } } });
  t.match(describeError(new AgentUnreachableError({ path: '/c.sock', source: 'default' }, 'denied', 'EACCES')).line,
    /^SOCKET_ACCESS_DENIED: permission denied on \/c\.sock .*the agent may be running/);
  const op = { id: 'op-1', kind: 'clone', target: 'v2', state: 'cancelled' as const, doneBytes: 0, totalBytes: 1, createdAt: '', updatedAt: '' };
  t.same(describeError(new OperationEndedError(op, 'clone of volume v1 to v2 cancelled; nothing was left behind')),
    { line: 'OPERATION_CANCELLED: clone of volume v1 to v2 cancelled; nothing was left behind', body: op });
  for (const error of [e, new UsageError('usage: x'), new Error('boom')]) t.notMatch(describeError(error).line, /\n/, 'one line');
});

t.test('docs/cli.md has the exit-status table', async (t) => {
  const text = await readFile(docs, 'utf8');
  for (const [name, code] of Object.entries(ExitCode)) t.match(text, new RegExp(`^\\| ${code} \\| \`${name}\` \\|`, 'm'), `${code} ${name} documented`);
});
