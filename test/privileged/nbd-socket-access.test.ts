// Who may open the NBD unix socket: `[nbd] socket_mode` and `socket_group`
// are set on the socket the agent binds, before it answers. A hypervisor's
// uid in that group reads an export with nbdinfo and nbdcopy (run with
// setpriv, as that uid); a uid outside it gets EACCES from connect(2); a mode
// without the group's write bit shuts the group out too; an unknown group
// name stops start-up with a config error. Needs root (setpriv, chown).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, open, stat } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { outcomeOf, spawnAgent, startAgent, writeAgentConfig } from '../helpers/agent.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { run } from '../helpers/run.js';
import { tempDir } from '../helpers/temp-dir.js';

const MiB = 1024 * 1024;
const HYPERVISOR_GROUP = 4242;
const HYPERVISOR_UID = 64233;
const OUTSIDER_UID = 64234;

interface Ran {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs `command` as `uid` (primary gid = uid) with exactly the supplementary `groups` (none: cleared). */
function runAs(uid: number, groups: number[], command: string[]): Promise<Ran> {
  const ids = [`--reuid=${uid}`, `--regid=${uid}`, ...(groups.length ? [`--groups=${groups.join(',')}`] : ['--clear-groups'])];
  const child = spawn('setpriv', [...ids, '--', ...command], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => out.push(d));
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr })));
}

/** connect(2) to a unix socket as `uid`: "connected", or the error's code. */
async function connectAs(uid: number, groups: number[], socketPath: string): Promise<string> {
  const script = `require('net').connect(${JSON.stringify(socketPath)}).on('connect', function () { console.log('connected'); this.destroy(); }).on('error', (e) => console.log(e.code))`;
  const ran = await runAs(uid, groups, [process.execPath, '-e', script]);
  return ran.stdout.toString().trim() || `exit ${ran.code}: ${ran.stderr}`;
}

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

if (!skipUnlessRoot(t)) {
  const dir = await tempDir(t, 'volagent-nbd-access-');
  // Other uids may pass through the directory; the sockets' own modes decide.
  await chmod(dir, 0o755);
  const poolPath = path.join(dir, 'pool');
  await mkdir(poolPath);

  await t.test('socket_group = 4242, socket_mode = "0660": the group reads an export with nbdinfo and nbdcopy, others get EACCES', async (t) => {
    const agentDir = path.join(dir, 'a1');
    await mkdir(agentDir, { mode: 0o755 });
    const agent = await startAgent(t, { dir: agentDir, pools: [{ name: 'p', path: poolPath }], nbdSocket: { mode: '0660', group: HYPERVISOR_GROUP } });
    const nbdSocket = path.join(agentDir, 'nbd.sock');
    const stats = await stat(nbdSocket);
    t.ok(stats.isSocket());
    t.equal(stats.mode & 0o7777, 0o660, 'mode 0660');
    t.equal(stats.uid, 0, 'owner root');
    t.equal(stats.gid, HYPERVISOR_GROUP, 'group 4242');

    t.equal((await agent.request('PUT', '/v1/volumes/v1', { tenant: 't', sizeBytes: 8 * MiB })).status, 201);
    const content = Buffer.alloc(8 * MiB);
    for (let i = 0; i < 8; i++) content.fill(0x41 + i, i * MiB, i * MiB + 4096);
    const handle = await open(path.join(poolPath, 'objects', 'v1.raw'), 'r+');
    await handle.write(content, 0, content.length, 0);
    await handle.close();
    const exported = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'nbd', readOnly: true });
    t.equal(exported.status, 201, exported.text);
    const uri = exported.body.uri as string;
    t.match(uri, `?socket=${nbdSocket}`);

    const info = await runAs(HYPERVISOR_UID, [HYPERVISOR_GROUP], ['nbdinfo', '--size', uri]);
    t.equal(info.code, 0, info.stderr);
    t.equal(info.stdout.toString().trim(), String(8 * MiB), 'nbdinfo as a member of the group');
    const copied = await runAs(HYPERVISOR_UID, [HYPERVISOR_GROUP], ['nbdcopy', uri, '-']);
    t.equal(copied.code, 0, copied.stderr);
    t.equal(copied.stdout.length, 8 * MiB);
    t.equal(sha256(copied.stdout), sha256(content), 'nbdcopy as a member of the group reads the volume');

    t.equal(await connectAs(HYPERVISOR_UID, [HYPERVISOR_GROUP], nbdSocket), 'connected');
    t.equal(await connectAs(OUTSIDER_UID, [], nbdSocket), 'EACCES', 'a uid outside the group: EACCES');
    t.equal(await connectAs(HYPERVISOR_UID, [], nbdSocket), 'EACCES', 'the same uid without the group: EACCES');
    const refused = await runAs(OUTSIDER_UID, [], ['nbdinfo', '--size', uri]);
    t.equal(refused.code, 1);
    t.match(refused.stderr, /Permission denied/, 'nbdinfo outside the group says why');
    t.equal(await agent.stop(), 0);
  });

  await t.test('socket_group by name (getent), socket_mode = "0640": set as given, and without the write bit the group cannot connect', async (t) => {
    const nogroup = Number((await run('getent', ['group', 'nogroup'])).split(':')[2]);
    const agentDir = path.join(dir, 'a2');
    await mkdir(agentDir, { mode: 0o755 });
    const agent = await startAgent(t, { dir: agentDir, pools: [{ name: 'p', path: poolPath }], nbdSocket: { mode: '0640', group: 'nogroup' } });
    const nbdSocket = path.join(agentDir, 'nbd.sock');
    const stats = await stat(nbdSocket);
    t.equal(stats.mode & 0o7777, 0o640);
    t.equal(stats.gid, nogroup, `the group named nogroup (gid ${nogroup})`);
    t.equal(await connectAs(HYPERVISOR_UID, [nogroup], nbdSocket), 'EACCES', 'read permission alone does not let a member connect');
    t.equal(await connectAs(0, [], nbdSocket), 'connected', 'root still does');
    t.equal(await agent.stop(), 0);
  });

  await t.test('neither key: the socket is 0660 and the agent\'s own group, as before', async (t) => {
    const agentDir = path.join(dir, 'a3');
    await mkdir(agentDir, { mode: 0o755 });
    const agent = await startAgent(t, { dir: agentDir, pools: [{ name: 'p', path: poolPath }] });
    const stats = await stat(path.join(agentDir, 'nbd.sock'));
    t.equal(stats.mode & 0o7777, 0o660);
    t.equal(stats.gid, 0);
    t.equal(await agent.stop(), 0);
  });

  await t.test('an unknown group name: start-up refused with a config error (exit 2), no socket made', async (t) => {
    const agentDir = path.join(dir, 'a4');
    await mkdir(agentDir);
    const configFile = await writeAgentConfig({ dir: agentDir, pools: [{ name: 'p', path: poolPath }], nbdSocket: { group: 'volagent-no-such-group' } });
    const result = await outcomeOf(spawnAgent(['--config', configFile]));
    t.equal(result.code, 2);
    t.equal(result.stderr, `volagentd: ${configFile}: nbd.socket_group: no group named "volagent-no-such-group" on this host\n`);
    await t.rejects(stat(path.join(agentDir, 'nbd.sock')), { code: 'ENOENT' });
    await t.rejects(stat(path.join(agentDir, 'control.sock')), { code: 'ENOENT' });
  });
}
