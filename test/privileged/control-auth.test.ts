// Who may use the control socket: the agent reads each connection's peer
// credentials (SO_PEERCRED, SO_PEERGROUPS) and maps them through
// [control].allow before reading the request. Real clients run as other
// users with setpriv: curl refused as an unlisted uid, a reader's GET and
// PUT, an admin by supplementary group; the audit line of each change.
// The socket's group (4242 here) only lets them connect; the agent decides.
// Needs root (setpriv, chown).
import { chown, mkdir } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import type { AgentProcess } from '../helpers/agent.js';
import { startAgent } from '../helpers/agent.js';
import { curlAs } from '../helpers/curl-as.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { tempDir } from '../helpers/temp-dir.js';

const SOCKET_GROUP = 4242;
const READER_UID = 65533;
const ADMIN_GID = 4343;
const UNLISTED_UID = 65534;

if (!skipUnlessRoot(t)) {
  const dir = await tempDir(t, 'volagent-auth-');
  const poolPath = path.join(dir, 'pool');
  await mkdir(poolPath);
  const agent: AgentProcess = await startAgent(t, {
    dir, pools: [{ name: 'p', path: poolPath }],
    allow: [{ uid: 0, role: 'admin' }, { uid: READER_UID, role: 'reader' }, { gid: ADMIN_GID, role: 'admin' }],
  });
  // The directory and socket let group 4242 connect (as systemd's SocketGroup= would).
  await chown(dir, 0, SOCKET_GROUP);
  await chown(agent.socket, 0, SOCKET_GROUP);
  const { chmod } = await import('node:fs/promises');
  await chmod(dir, 0o750);

  /** Whether a log line matching `test` arrives within 5 s (the agent's log comes through a pipe). */
  const logged = async (test: (line: string) => boolean): Promise<boolean> => {
    for (let i = 0; i < 100; i++) {
      if (agent.logs.some(test)) return true;
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  };

  await t.test('an unlisted uid is refused before its request is read: 403, nothing changes', async (t) => {
    const refused = await curlAs(agent.socket, UNLISTED_UID, [SOCKET_GROUP], 'PUT', '/v1/volumes/intruder', { tenant: 't', sizeBytes: 1048576 });
    t.equal(refused.code, 0, refused.stderr);
    t.equal(refused.status, 403);
    t.match(refused.body, { error: { code: 'FORBIDDEN', message: /uid 65534 .*not in \[control\]\.allow/, details: { uid: UNLISTED_UID } } });
    t.equal((await agent.request('GET', '/v1/volumes/intruder')).status, 404, 'no volume was made');
    t.notOk(agent.logs.some((line) => /"route":"\/v1\/volumes\/:id"/.test(line) && /"uid":65534/.test(line)), 'the request never reached the router');
    t.ok(await logged((line) => /refused a control connection/.test(line) && /"uid":65534/.test(line)), 'the refusal is logged with the peer');
    const get = await curlAs(agent.socket, UNLISTED_UID, [SOCKET_GROUP], 'GET', '/v1/version');
    t.equal(get.status, 403, 'a GET too');
  });

  await t.test('a reader: GET answers, PUT and DELETE are 403 and change nothing', async (t) => {
    t.equal((await agent.request('PUT', '/v1/volumes/v1', { tenant: 't', sizeBytes: 1048576 })).status, 201, 'root (admin) makes a volume');
    const list = await curlAs(agent.socket, READER_UID, [SOCKET_GROUP], 'GET', '/v1/volumes');
    t.equal(list.status, 200, list.stderr);
    t.match(list.body, [{ id: 'v1' }]);
    const put = await curlAs(agent.socket, READER_UID, [SOCKET_GROUP], 'PUT', '/v1/volumes/v2', { tenant: 't', sizeBytes: 1048576 });
    t.equal(put.status, 403);
    t.match(put.body, { error: { code: 'FORBIDDEN', details: { uid: READER_UID, role: 'reader', method: 'PUT' } } });
    const del = await curlAs(agent.socket, READER_UID, [SOCKET_GROUP], 'DELETE', '/v1/volumes/v1');
    t.equal(del.status, 403);
    t.same((await agent.request('GET', '/v1/volumes')).body.map((v: { id: string }) => v.id), ['v1'], 'v1 is still there, v2 was not made');
  });

  await t.test('an admin by supplementary group: changes are made and each has an audit line with uid, gid and pid', async (t) => {
    const made = await curlAs(agent.socket, 65532, [SOCKET_GROUP, ADMIN_GID], 'PUT', '/v1/volumes/v3', { tenant: 't', sizeBytes: 1048576 });
    t.equal(made.status, 201, made.stderr);
    t.ok(await logged((line) => /"audit":true/.test(line) && /"volume":"v3"/.test(line)), 'the audit line arrived');
    const audit = agent.logs.map((line) => JSON.parse(line)).find((entry) => entry.audit === true && entry.method === 'PUT' && entry.volume === 'v3');
    t.match(audit, { route: '/v1/volumes/:id', status: 201, peer: { uid: 65532, gid: 65532, pid: Number } }, 'the audit line names the peer');
    t.ok(audit.peer.pid > 1);
    const read = agent.logs.map((line) => JSON.parse(line)).find((entry) => entry.method === 'GET' && entry.peer?.uid === READER_UID);
    t.notOk(read?.audit, 'reads are not audit lines');
    t.equal((await curlAs(agent.socket, 65532, [SOCKET_GROUP], 'PUT', '/v1/volumes/v4', { tenant: 't', sizeBytes: 1048576 })).status, 403, 'without the admin group: refused');
  });

  await t.test('an idle keep-alive connection does not hold up the stop', async (t) => {
    const { Agent: HttpAgent, request } = await import('node:http');
    const keepAlive = new HttpAgent({ keepAlive: true });
    const status = await new Promise<number>((resolve, reject) => {
      request({ socketPath: agent.socket, path: '/v1/version', agent: keepAlive }, (res) => {
        res.resume();
        res.once('end', () => resolve(res.statusCode ?? 0));
      }).once('error', reject).end();
    });
    t.equal(status, 200);
    const started = Date.now();
    t.equal(await agent.stop(), 0, 'SIGTERM: clean exit');
    t.ok(Date.now() - started < 5000, 'with the idle connection still open, the agent stopped at once');
    keepAlive.destroy();
  });
}
