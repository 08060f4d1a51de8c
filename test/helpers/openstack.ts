// Debian 12's own OpenStack Block Storage and Image services, brought up as
// plain processes for the openstack lane and `npm run bench -- openstack`:
// RabbitMQ, glance-api, cinder-api, cinder-scheduler and cinder-volume with
// the volagent driver, over a real volagentd with an XFS (reflink) pool and
// an ext4 (copy) pool on loop filesystems. Configured as an operator would
// (docs/openstack.md), except for authentication: no Keystone. Cinder runs
// `auth_strategy = noauth` (the token is `user:project`); Glance runs a paste
// filter of the test's (test/openstack/glance) that does the same.
//
// Two storage hosts (issue 21): each agent runs in its own network namespace
// (test/helpers/netns.ts), serving NBD with TLS (one PSK) on its address of
// the veth pair between them; each host's cinder-volume (`host` A: this
// machine's name, backend `volagent`; `host` B: `volagent-b`, backend
// `volagent-b`) reaches its agent over the agent's unix control socket. The
// Cinder services themselves run in the root namespace: RabbitMQ, the APIs and
// the database are one deployment's, and a unix socket crosses namespaces.
//
// Every process is started in its own process group and stopped by its pid;
// what outlives its parent (os-brick's privsep-helper daemons) is found by
// the stack's directory in its command line. One stack per machine: the
// services listen on their fixed ports (8776, 9292, 5672, 4369).
import type { ChildProcess } from 'node:child_process';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { chown, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';

import type { Test } from 'tap';

import { REPO_ROOT, requestOn, VOLAGENTD } from './agent.js';
import { DRIVER_PATH, SYSTEM_PYTHON } from './driver-unittest.js';
import type { LoopFs } from './loop-fs.js';
import { makeLoopFs, TEST_ROOT } from './loop-fs.js';
import type { Host } from './netns.js';
import { makeHosts } from './netns.js';
import { run } from './run.js';

const GLANCE_FILTER_PATH = path.join(REPO_ROOT, 'test', 'openstack', 'glance');

/** Project ids are hex (Cinder's project_id_regex). */
export const PROJECTS = {
  admin: '0a0a0a0a0a0a4a0a8a0a0a0a0a0a0a0a',
  one: '3c3c3c3c3c3c4c3c8c3c3c3c3c3c3c3c',
  two: '4d4d4d4d4d4d4d4d8d4d4d4d4d4d4d4d',
  /** Cinder's internal tenant (cinder_internal_tenant_project_id): Image-Volumes of upload-to-image, cache entries. */
  internal: '1f1f1f1f1f1f4f1f8f1f1f1f1f1f1f1f',
} as const;
const INTERNAL_USER = '2e2e2e2e2e2e4e2e8e2e2e2e2e2e2e2e';
/** Cinder's and Glance's MariaDB user (and its password): the services run as other uids than the server's root. */
const DATABASE_USER = 'stack';

const GiB = 1024 ** 3;
/** The second storage host's cinder-volume `host` and backend. */
export const HOST_B = 'volagent-b';
export const BACKEND_B = 'volagent-b';
const NBD_PORT = 10809;

export interface StackOptions {
  /** Size of each pool's loop filesystem (sparse). */
  poolBytes: number;
  /** glance_store's default store for uploads: `file` (Glance's file store) or `cinder`. */
  glanceDefaultStore?: 'file' | 'cinder';
  /** Cinder's image-volume cache for the backend (`image_volume_cache_enabled`); default on. */
  imageVolumeCache?: boolean;
}

interface Service {
  name: string;
  child: ChildProcess;
  exited: Promise<void>;
}

export interface Table {
  [property: string]: string;
}

export class OpenStack {
  readonly dir: string;
  readonly agentSocket: string;
  /** The second host's agent (one pool, `xfs`). */
  readonly agentSocketB: string;
  pools: { xfs?: LoopFs; ext4?: LoopFs; b?: LoopFs } = {};
  /** The two hosts' namespaces: A holds the first agent, B the second. */
  hosts: Host[] = [];
  private netnsTeardown: (() => Promise<void>) | undefined;
  private readonly services: Service[] = [];
  private glanceDefaultStore: 'file' | 'cinder';

  constructor(readonly options: StackOptions) {
    this.dir = path.join(TEST_ROOT, `openstack-${process.pid}`);
    this.agentSocket = path.join(this.dir, 'agent', 'control.sock');
    this.agentSocketB = path.join(this.dir, 'agent-b', 'control.sock');
    this.glanceDefaultStore = options.glanceDefaultStore ?? 'file';
  }

  /** Brings everything up; on a failure, stops what started and rethrows. */
  async start(): Promise<void> {
    try {
      await this.startInner();
    } catch (error) {
      await this.stop();
      throw error;
    }
  }

  private async startInner(): Promise<void> {
    // A stack of an earlier run that was killed before its teardown holds the ports: its
    // processes name its directory (TEST_ROOT/openstack-<pid>) in their command lines.
    await killProcessesNaming(path.join(TEST_ROOT, 'openstack-'));
    await rm(this.dir, { recursive: true, force: true });
    for (const sub of ['agent', 'agent-b', 'etc', 'rabbit', 'mariadb/data', 'glance/images', 'glance/lock', 'glance/mnt', 'cinder/state', 'cinder/lock', 'cinder/log', 'cinder/conversion', 'home']) {
      await mkdir(path.join(this.dir, sub), { recursive: true });
    }
    this.pools.xfs = await makeLoopFs('xfs', this.options.poolBytes);
    this.pools.ext4 = await makeLoopFs('ext4', this.options.poolBytes);
    this.pools.b = await makeLoopFs('xfs', this.options.poolBytes);
    for (const pool of [this.pools.xfs, this.pools.ext4, this.pools.b]) await mkdir(path.join(pool.mountPoint, 'pool'));
    // makeHosts registers its teardown with a tap test; the stack keeps it and runs it in stop().
    const keeper = { comment: () => undefined, teardown: (fn: () => Promise<void>) => { this.netnsTeardown = fn; } } as unknown as Test;
    this.hosts = await makeHosts(keeper, 2);
    await writeFile(path.join(this.dir, 'agent', 'fleet.psk'), `fleet:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    await this.writeAgentConfig();
    await this.writeGlanceConfig();
    await this.writeCinderConfig();
    await this.actAs(PROJECTS.admin);

    for (const [name, host, dir] of [['volagentd', this.hosts[0]!, 'agent'], ['volagentd-b', this.hosts[1]!, 'agent-b']] as const) {
      this.spawn(name, 'nsenter', [`--net=/run/netns/${host.name}`, '--', process.execPath, VOLAGENTD, '--config', path.join(this.dir, dir, 'volagent.toml')]);
    }
    this.spawn('epmd', '/usr/bin/epmd', ['-address', '127.0.0.1']);
    await chown(path.join(this.dir, 'rabbit'), ...(await this.ids('rabbitmq')));
    this.spawn('rabbitmq', '/usr/bin/setpriv', ['--reuid=rabbitmq', '--regid=rabbitmq', '--init-groups', '/usr/lib/rabbitmq/bin/rabbitmq-server'], {
      HOME: path.join(this.dir, 'rabbit'),
      RABBITMQ_MNESIA_BASE: path.join(this.dir, 'rabbit', 'mnesia'),
      RABBITMQ_LOG_BASE: path.join(this.dir, 'rabbit', 'log'),
      RABBITMQ_NODENAME: 'rabbit@localhost',
      RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
      RABBITMQ_PID_FILE: path.join(this.dir, 'rabbit', 'pid'),
    });
    await this.startDatabase();
    await run('glance-manage', ['--config-file', this.etc('glance-api.conf'), 'db_sync'], { timeoutMs: 300_000 });
    await run('cinder-manage', ['--config-file', this.etc('cinder.conf'), 'db', 'sync'], { timeoutMs: 300_000 });
    await this.until('volagentd', 30_000, async () => (await requestOn(this.agentSocket, 'GET', '/v1/version')).status === 200);
    await this.until('volagentd-b', 30_000, async () => (await requestOn(this.agentSocketB, 'GET', '/v1/version')).status === 200);
    // Cinder's services run as the cinder user, as Debian's units run them. The control socket's
    // group is cinder's, as the socket unit's SocketGroup= makes it in production
    // (docs/openstack.md); the agent's allow rule lets that uid in as an admin.
    const [cinderUid, cinderGid] = await this.ids('cinder');
    await chown(this.agentSocket, 0, cinderGid);
    await chown(this.agentSocketB, 0, cinderGid);
    await run('chown', ['-R', `${cinderUid}:${cinderGid}`, path.join(this.dir, 'cinder')]);
    await this.until('rabbitmq', 60_000, () => connects(5672));
    this.startGlance();
    for (const name of ['api', 'scheduler', 'volume', 'volume-b']) {
      const binary = name === 'volume-b' ? 'volume' : name;
      const configs = ['--config-file', this.etc('cinder.conf'), ...(name === 'volume-b' ? ['--config-file', this.etc('cinder-b.conf')] : [])];
      this.spawn(`cinder-${name}`, '/usr/bin/setpriv', ['--reuid=cinder', '--regid=cinder', '--init-groups', SYSTEM_PYTHON, `/usr/bin/cinder-${binary}`, ...configs], {
        PYTHONPATH: DRIVER_PATH, HOME: path.join(this.dir, 'cinder', 'state'),
      });
    }
    await this.until('glance-api', 60_000, () => connects(9292));
    await this.until('cinder-volume', 120_000, async () => {
      const pools = await this.cinderRaw(PROJECTS.admin, ['get-pools']);
      return pools.code === 0 && pools.stdout.includes('#xfs') && pools.stdout.includes('#ext4') && pools.stdout.includes(`${HOST_B}@${BACKEND_B}#xfs`);
    });
    // One volume type per pool, so a test says where a volume goes.
    for (const pool of ['xfs', 'ext4']) {
      await this.cinder(PROJECTS.admin, ['type-create', pool]);
      await this.cinder(PROJECTS.admin, ['type-key', pool, 'set', 'volume_backend_name=volagent', `pool_name=${pool}`]);
    }
    // Types by host: `a-any` and `b-any` differ in the backend name alone, so Cinder lets a retype
    // between them move the data by the driver (its diff may hold nothing else); `plain` has no
    // extra specs, so every host passes the scheduler's filters for it (a migrate's destination).
    for (const [type, specs] of [['a-any', ['volume_backend_name=volagent']], ['b-any', [`volume_backend_name=${BACKEND_B}`]], ['plain', []]] as const) {
      await this.cinder(PROJECTS.admin, ['type-create', type]);
      if (specs.length > 0) await this.cinder(PROJECTS.admin, ['type-key', type, 'set', ...specs]);
    }
    // Cinder's internal tenant holds Image-Volumes and cache entries without quota limits; the
    // test's projects make more volumes than the default quota of 10.
    for (const project of [PROJECTS.internal, PROJECTS.one, PROJECTS.two]) {
      await this.cinder(PROJECTS.admin, ['quota-update', '--volumes', '-1', '--gigabytes', '-1', '--snapshots', '-1', project]);
    }
  }

  /**
   * MariaDB for Cinder's and Glance's databases, as deployments run them.
   * Not SQLite: oslo.db begins every SQLite transaction with a deferred
   * BEGIN, so a transaction that reads and then writes while another
   * process (four Cinder services, each with its heartbeat) has written
   * meanwhile fails at once with "database is locked", whatever the busy
   * timeout: a 500 to a client now and then. The server listens on a unix
   * socket in the stack's directory only.
   */
  private async startDatabase(): Promise<void> {
    const data = path.join(this.dir, 'mariadb', 'data');
    await run('/usr/bin/mariadb-install-db', ['--no-defaults', `--datadir=${data}`, '--user=root', '--auth-root-authentication-method=normal', '--skip-test-db'], { timeoutMs: 120_000 });
    this.spawn('mariadb', '/usr/sbin/mariadbd', ['--no-defaults', `--datadir=${data}`, '--user=root', `--socket=${this.databaseSocket}`,
      `--pid-file=${path.join(this.dir, 'mariadb', 'mariadbd.pid')}`, '--skip-networking', '--skip-log-bin',
      '--innodb-buffer-pool-size=64M', '--innodb-flush-log-at-trx-commit=2', '--max-connections=500']);
    await this.until('mariadb', 60_000, async () => (await this.sql('SELECT 1').catch(() => '')) === '1');
    await this.sql(`CREATE DATABASE cinder CHARACTER SET utf8mb4; CREATE DATABASE glance CHARACTER SET utf8mb4;
      CREATE USER '${DATABASE_USER}'@'localhost' IDENTIFIED BY '${DATABASE_USER}';
      GRANT ALL ON cinder.* TO '${DATABASE_USER}'@'localhost'; GRANT ALL ON glance.* TO '${DATABASE_USER}'@'localhost';`);
  }

  private get databaseSocket(): string {
    return path.join(this.dir, 'mariadb', 'mariadbd.sock');
  }

  /** oslo.db's URL of database `name` (PyMySQL over the server's socket). */
  private databaseUrl(name: 'cinder' | 'glance'): string {
    return `mysql+pymysql://${DATABASE_USER}:${DATABASE_USER}@localhost/${name}?unix_socket=${this.databaseSocket}&charset=utf8mb4`;
  }

  /** Runs SQL as MariaDB's root over its socket; the rows, tab-separated, without headers. */
  async sql(statements: string): Promise<string> {
    return (await run('/usr/bin/mariadb', ['--no-defaults', `--socket=${this.databaseSocket}`, '-u', 'root', '-N', '-B', '-e', statements])).trim();
  }

  /** Restarts glance-api with another default store (uploads go there). */
  async restartGlance(defaultStore: 'file' | 'cinder'): Promise<void> {
    await this.stopService('glance-api');
    this.glanceDefaultStore = defaultStore;
    await this.writeGlanceConfig();
    this.startGlance();
    await this.until('glance-api', 60_000, () => connects(9292));
  }

  private startGlance(): void {
    this.spawn('glance-api', SYSTEM_PYTHON, ['/usr/bin/glance-api', '--config-file', this.etc('glance-api.conf')], { PYTHONPATH: GLANCE_FILTER_PATH });
  }

  /** Stops every process by pid (SIGTERM, then SIGKILL), the privsep daemons too, and removes the pools' loop filesystems. */
  async stop(): Promise<void> {
    for (const service of [...this.services].reverse()) await this.stopService(service.name);
    await this.killStragglers();
    await this.netnsTeardown?.();
    this.netnsTeardown = undefined;
    for (const pool of [this.pools.xfs, this.pools.ext4, this.pools.b]) await pool?.cleanup();
    this.pools = {};
  }

  private async stopService(name: string): Promise<void> {
    const index = this.services.findIndex((s) => s.name === name);
    if (index < 0) return;
    const [service] = this.services.splice(index, 1);
    const pid = service!.child.pid!;
    signalGroup(pid, 'SIGTERM');
    const killed = await Promise.race([service!.exited.then(() => true), sleep(10_000).then(() => false)]);
    if (!killed) signalGroup(pid, 'SIGKILL');
    await service!.exited;
    signalGroup(pid, 'SIGKILL'); // the group's other members (beam's helpers, uwsgi workers)
  }

  /** Processes that outlive their parent and name the stack's directory: os-brick's privsep-helper daemons. */
  private async killStragglers(): Promise<void> {
    await killProcessesNaming(`${this.dir}/`);
  }

  private spawn(name: string, command: string, args: string[], env: NodeJS.ProcessEnv = {}): void {
    const log = createWriteStream(path.join(this.dir, `${name}.out`));
    const child = spawn(command, args, {
      cwd: this.dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    this.services.push({ name, child, exited });
  }

  private async until(what: string, timeoutMs: number, ready: () => Promise<boolean>): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ok = await ready().catch(() => false);
      if (ok) return;
      const service = this.services.find((s) => s.name === what);
      if (service && service.child.exitCode !== null) throw new Error(`${what} exited during start-up: ${await this.log(what)}`);
      if (Date.now() > deadline) throw new Error(`${what} was not up within ${timeoutMs / 1000} s: ${await this.log(what)}`);
      await sleep(250);
    }
  }

  /** The last lines a service wrote (its .out file). */
  async log(name: string, lines = 30): Promise<string> {
    const text = await readFile(path.join(this.dir, `${name}.out`), 'utf8').catch(() => '');
    return text.split('\n').slice(-lines).join('\n');
  }

  /** Cinder's own log of a service (`cinder-volume`), for asserting what a request did. */
  async cinderLog(name: string): Promise<string> {
    return readFile(path.join(this.dir, 'cinder', 'log', `${name}.log`), 'utf8');
  }

  async glanceLog(): Promise<string> {
    return readFile(path.join(this.dir, 'glance', 'glance-api.log'), 'utf8');
  }

  /**
   * What the services logged as errors, for a failed run to explain itself:
   * ERROR lines of Cinder's and Glance's logs, and the agents' records of
   * level error and fatal, the first `limit` of each file.
   */
  async errorsLogged(limit = 60): Promise<string> {
    const files = [
      ...['cinder-api', 'cinder-scheduler', 'cinder-volume', 'cinder-volume-b'].map((name) => path.join(this.dir, 'cinder', 'log', `${name}.log`)),
      path.join(this.dir, 'glance', 'glance-api.log'),
      path.join(this.dir, 'volagentd.out'), path.join(this.dir, 'volagentd-b.out'),
    ];
    const parts: string[] = [];
    for (const file of files) {
      const lines = (await readFile(file, 'utf8').catch(() => '')).split('\n')
        .filter((line) => /^\S+ \S+ \d+ ERROR /.test(line) || /"level":"(error|fatal)"/.test(line));
      if (lines.length > 0) parts.push(`${path.basename(file)} (${lines.length} error lines):\n${lines.slice(0, limit).join('\n')}`);
    }
    return parts.join('\n\n') || 'no service logged an error';
  }

  private etc(name: string): string {
    return path.join(this.dir, 'etc', name);
  }

  private async ids(user: string): Promise<[number, number]> {
    return [Number((await run('id', ['-u', user])).trim()), Number((await run('id', ['-g', user])).trim())];
  }

  // --- configuration ---

  private async writeAgentConfig(): Promise<void> {
    const cinder = await this.ids('cinder');
    const agent = (dir: string, host: Host, pools: Array<[string, LoopFs]>): string[] => [
      '[control]', `socket = ${JSON.stringify(path.join(this.dir, dir, 'control.sock'))}`,
      // Root (the test itself) and the cinder user (cinder-volume) act for all projects.
      `allow = [{ uid = 0, role = "admin" }, { uid = ${cinder[0]}, role = "admin" }]`, '',
      '[catalog]', `path = ${JSON.stringify(path.join(this.dir, dir, 'catalog.db'))}`, '',
      '[nbd]', `listen = [${JSON.stringify(`unix:${path.join(this.dir, dir, 'nbd.sock')}`)}, ${JSON.stringify(`tcp:${host.address}:${NBD_PORT}`)}]`,
      `tls = { psk_file = ${JSON.stringify(path.join(this.dir, 'agent', 'fleet.psk'))} }`, '',
      ...pools.flatMap(([name, fs]) => ['[[pools]]', `name = "${name}"`, 'backend = "file"', `path = ${JSON.stringify(path.join(fs.mountPoint, 'pool'))}`, '']),
    ];
    await writeFile(path.join(this.dir, 'agent', 'volagent.toml'), agent('agent', this.hosts[0]!, [['xfs', this.pools.xfs!], ['ext4', this.pools.ext4!]]).join('\n'));
    await writeFile(path.join(this.dir, 'agent-b', 'volagent.toml'), agent('agent-b', this.hosts[1]!, [['xfs', this.pools.b!]]).join('\n'));
  }

  private async writeGlanceConfig(): Promise<void> {
    const paste = [
      '[pipeline:glance-api]',
      'pipeline = cors healthcheck http_proxy_to_wsgi versionnegotiation volagent-noauth rootapp',
      '[composite:rootapp]', 'paste.composite_factory = glance.api:root_app_factory', '/: apiversions', '/v2: apiv2app',
      '[app:apiversions]', 'paste.app_factory = glance.api.versions:create_resource',
      '[app:apiv2app]', 'paste.app_factory = glance.api.v2.router:API.factory',
      '[filter:healthcheck]', 'paste.filter_factory = oslo_middleware:Healthcheck.factory', 'backends = disable_by_file',
      `disable_by_file_path = ${path.join(this.dir, 'glance', 'healthcheck_disable')}`,
      '[filter:versionnegotiation]', 'paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory',
      '[filter:volagent-noauth]', 'paste.filter_factory = volagent_test_glance_context:filter_factory',
      `admin_project = ${PROJECTS.admin}`, `acting_project_file = ${path.join(this.dir, 'acting-project')}`,
      '[filter:cors]', 'paste.filter_factory = oslo_middleware.cors:filter_factory', 'oslo_config_project = glance', 'oslo_config_program = glance-api',
      '[filter:http_proxy_to_wsgi]', 'paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory', '',
    ];
    await writeFile(this.etc('glance-api-paste.ini'), paste.join('\n'));
    const conf = [
      '[DEFAULT]', 'bind_host = 127.0.0.1', 'bind_port = 9292', 'workers = 1', 'debug = True',
      `log_file = ${path.join(this.dir, 'glance', 'glance-api.log')}`,
      'show_multiple_locations = True', 'show_image_direct_url = True', 'enabled_import_methods = []',
      '[database]', `connection = ${this.databaseUrl('glance')}`,
      '[paste_deploy]', `config_file = ${this.etc('glance-api-paste.ini')}`, 'flavor =',
      '[glance_store]', 'stores = file, http, cinder', `default_store = ${this.glanceDefaultStore}`,
      `filesystem_store_datadir = ${path.join(this.dir, 'glance', 'images')}`,
      'cinder_endpoint_template = http://127.0.0.1:8776/v3',
      `cinder_mount_point_base = ${path.join(this.dir, 'glance', 'mnt')}`,
      '[oslo_concurrency]', `lock_path = ${path.join(this.dir, 'glance', 'lock')}`, '',
    ];
    await writeFile(this.etc('glance-api.conf'), conf.join('\n'));
  }

  private async writeCinderConfig(): Promise<void> {
    const cinderDir = path.join(this.dir, 'cinder');
    const conf = [
      '[DEFAULT]', 'auth_strategy = noauth', 'transport_url = rabbit://guest:guest@127.0.0.1:5672/',
      `state_path = ${path.join(cinderDir, 'state')}`, `log_dir = ${path.join(cinderDir, 'log')}`, 'debug = True',
      'api_paste_config = /etc/cinder/api-paste.ini', 'osapi_volume_listen = 127.0.0.1', 'osapi_volume_listen_port = 8776',
      'osapi_volume_workers = 1', 'enabled_backends = volagent', 'glance_api_servers = http://127.0.0.1:9292',
      'allowed_direct_url_schemes = cinder', `image_conversion_dir = ${path.join(cinderDir, 'conversion')}`,
      `cinder_internal_tenant_project_id = ${PROJECTS.internal}`, `cinder_internal_tenant_user_id = ${INTERNAL_USER}`,
      'rootwrap_config = /etc/cinder/rootwrap.conf',
      // A volume made without a type (only Glance's cinder store makes one: every test names a
      // type) goes to host A's backend; `__DEFAULT__` fits either host. The type is made in
      // start(), before any volume. (glance_store's cinder_volume_type would need a service user
      // for the check it makes at start-up, and the per-project default types need Keystone.)
      'default_volume_type = a-any',
      '[database]', `connection = ${this.databaseUrl('cinder')}`,
      '[oslo_concurrency]', `lock_path = ${path.join(cinderDir, 'lock')}`,
      '[oslo_messaging_notifications]', 'driver = noop',
      '[volagent]', 'volume_driver = volagent_cinder.driver.VolagentDriver', 'volume_backend_name = volagent',
      `volagent_socket = ${this.agentSocket}`,
      'image_upload_use_cinder_backend = True', 'image_upload_use_internal_tenant = True',
      `image_volume_cache_enabled = ${this.options.imageVolumeCache ?? true ? 'True' : 'False'}`, '',
    ];
    await writeFile(this.etc('cinder.conf'), conf.join('\n'));
    // Host B's cinder-volume: read after cinder.conf, its keys win.
    const b = [
      '[DEFAULT]', `host = ${HOST_B}`, `enabled_backends = ${BACKEND_B}`, 'log_file = cinder-volume-b.log',
      `[${BACKEND_B}]`, 'volume_driver = volagent_cinder.driver.VolagentDriver', `volume_backend_name = ${BACKEND_B}`,
      `volagent_socket = ${this.agentSocketB}`,
      'image_upload_use_cinder_backend = True', 'image_upload_use_internal_tenant = True',
      `image_volume_cache_enabled = ${this.options.imageVolumeCache ?? true ? 'True' : 'False'}`, '',
    ];
    await writeFile(this.etc('cinder-b.conf'), b.join('\n'));
  }

  /** Cinder's requests to Glance carry no token: they act for this project (the Glance filter reads it). */
  async actAs(project: string): Promise<void> {
    // Glance reads this file on every request Cinder makes, at any moment: a rewrite in place
    // shows it an empty file (an unknown project, 404 for a private image) between the
    // truncate and the write. A rename replaces it whole.
    const file = path.join(this.dir, 'acting-project');
    await writeFile(`${file}.new`, project);
    await rename(`${file}.new`, file);
  }

  // --- clients ---

  private clientEnv(): NodeJS.ProcessEnv {
    return { HOME: path.join(this.dir, 'home') };
  }

  /** Runs the `cinder` CLI as `project` (noauth); rejects with its stderr on failure. */
  async cinder(project: string, args: string[], apiVersion?: string): Promise<string> {
    const result = await this.cinderRaw(project, args, apiVersion);
    if (result.code !== 0) throw new Error(`cinder ${args.join(' ')} failed (${result.code}): ${result.stderr.trim() || result.stdout.trim()}`);
    return result.stdout;
  }

  async cinderRaw(project: string, args: string[], apiVersion?: string): Promise<{ code: number; stdout: string; stderr: string }> {
    await this.actAs(project);
    return this.client('cinder', ['--os-auth-type', 'noauth', '--os-user-id', `user-${project}`, '--os-project-id', project,
      '--os-endpoint', 'http://127.0.0.1:8776/v3', ...(apiVersion ? ['--os-volume-api-version', apiVersion] : []), ...args]);
  }

  /** Runs the `glance` CLI as `project` (stdin closed: see client()). */
  async glance(project: string, args: string[]): Promise<string> {
    const result = await this.glanceRaw(project, args);
    if (result.code !== 0) throw new Error(`glance ${args.join(' ')} failed (${result.code}): ${result.stderr.trim() || result.stdout.trim()}`);
    return result.stdout;
  }

  async glanceRaw(project: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    await this.fixGlanceclientSchema();
    await this.actAs(project);
    return this.client('glance', ['--os-auth-token', `user-${project}:${project}`, '--os-image-url', 'http://127.0.0.1:9292', ...args]);
  }

  private schemaFixed = false;

  /**
   * python3-glanceclient 4.1.0 builds its `image-create` options from the
   * server's schema, whose `stores` property collides with its own
   * `--stores` option ("conflicting option string"); its cached schema
   * without that property avoids the collision.
   */
  private async fixGlanceclientSchema(): Promise<void> {
    if (this.schemaFixed) return;
    const schema = JSON.parse(await run('curl', ['-sf', '-H', `X-Auth-Token: u:${PROJECTS.admin}`, 'http://127.0.0.1:9292/v2/schemas/image'])) as { properties: Record<string, unknown> };
    delete schema.properties.stores;
    const cacheDir = path.join(this.dir, 'home', '.glanceclient');
    await mkdir(cacheDir, { recursive: true });
    await writeFile(path.join(cacheDir, 'image_schema.json'), JSON.stringify(schema));
    this.schemaFixed = true;
  }

  /**
   * Runs a client with its stdin closed, not /dev/null: `glance image-create`
   * uploads a readable stdin as the image's data (an empty one makes an
   * active image of 0 bytes); only a closed one means "no data".
   */
  private client(command: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn('/bin/sh', ['-c', 'exec "$0" "$@" <&-', command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...this.clientEnv() } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
      child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
      child.once('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
    });
  }

  /** The agent's answer to a GET (as root: an admin). */
  async agent(urlPath: string): Promise<any> {
    const reply = await requestOn(this.agentSocket, 'GET', urlPath);
    if (reply.status !== 200) throw new Error(`GET ${urlPath}: ${reply.status} ${reply.text}`);
    return reply.body;
  }

  async agentRequest(method: string, urlPath: string, body?: unknown): Promise<{ status: number; json: any }> {
    const reply = await requestOn(this.agentSocket, method, urlPath, body);
    return { status: reply.status, json: reply.body };
  }

  /** Host B's agent: its answer to a request (as root). */
  async agentB(method: string, urlPath: string, body?: unknown): Promise<{ status: number; json: any }> {
    const reply = await requestOn(this.agentSocketB, method, urlPath, body);
    return { status: reply.status, json: reply.body };
  }

  /** The file of an agent volume in host B's pool. */
  volumeFileB(agentId: string): string {
    return path.join(this.pools.b!.mountPoint, 'pool', 'objects', `${agentId}.raw`);
  }

  /** The file of an agent volume in a file pool. */
  volumeFile(pool: 'xfs' | 'ext4', agentId: string): string {
    return path.join(this.pools[pool]!.mountPoint, 'pool', 'objects', `${agentId}.raw`);
  }

  /** Polls `cinder show` until the volume's status is one of `states`; an `error` status fails at once. */
  async waitVolume(project: string, id: string, states: string[], timeoutMs = 120_000): Promise<Table> {
    return this.waitStatus(`volume ${id}`, () => this.cinder(project, ['show', id]), states, (s) => s.startsWith('error'), timeoutMs,
      () => this.errorMessages(project, id));
  }

  async waitSnapshot(project: string, id: string, states: string[], timeoutMs = 120_000): Promise<Table> {
    return this.waitStatus(`snapshot ${id}`, () => this.cinder(project, ['snapshot-show', id]), states, (s) => s.startsWith('error'), timeoutMs);
  }

  async waitImage(project: string, id: string, states: string[], timeoutMs = 120_000, why: () => Promise<string> = async () => ''): Promise<Table> {
    return this.waitStatus(`image ${id}`, () => this.glance(project, ['image-show', id]), states, (s) => s === 'killed', timeoutMs, why);
  }

  /**
   * `cinder upload-to-image` of `volume`, waited for until the image is
   * active. Cinder deletes the image of a failed upload (its status was
   * `queued`), so Glance's 404 alone says nothing: the error names Cinder's
   * user messages for the volume and cinder-volume's errors for the image.
   */
  async uploadToImage(project: string, volume: string, args: string[], timeoutMs = 120_000): Promise<{ imageId: string; image: Table }> {
    const imageId = propertyTable(await this.cinder(project, ['upload-to-image', ...args])).image_id!;
    const image = await this.waitImage(project, imageId, ['active'], timeoutMs, async () => {
      const logged = (await this.cinderLog('cinder-volume').catch(() => '')).split('\n').filter((line) => /^\S+ \S+ \d+ (ERROR|WARNING) /.test(line));
      // A traceback is logged a line at a time under the request's id: all of the request's lines.
      const requests = new Set(logged.filter((line) => line.includes(imageId)).map((line) => /\[(?:None )?(req-[0-9a-f-]+)/.exec(line)?.[1] ?? line));
      const errors = logged.filter((line) => [...requests].some((request) => line.includes(request))).slice(0, 80);
      return `(upload of volume ${volume}; Cinder's messages: ${await this.errorMessages(project, volume)}; cinder-volume: ${errors.join('\n') || 'no error logged'})`;
    });
    await this.waitVolume(project, volume, ['available']);
    return { imageId, image };
  }

  /** Polls `show` (a CLI's property table) every 500 ms until its status is one of `states`; a `failed` status throws at once. */
  private async waitStatus(what: string, show: () => Promise<string>, states: string[], failed: (status: string) => boolean, timeoutMs: number,
    why: () => Promise<string> = async () => ''): Promise<Table> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const shown = propertyTable(await show().catch(async (error: Error) => {
        throw new Error(`${error.message} ${await why()}`);
      }));
      const status = shown.status ?? '';
      if (states.includes(status)) return shown;
      if (failed(status)) throw new Error(`${what} is ${status} ${await why()}`);
      if (Date.now() > deadline) throw new Error(`${what} stayed ${status} (waiting for ${states.join('|')})`);
      await sleep(500);
    }
  }

  /** Polls until `cinder show` says the volume is gone. */
  async waitVolumeGone(project: string, id: string, timeoutMs = 120_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const shown = await this.cinderRaw(project, ['show', id]);
      if (shown.code !== 0 && /No volume with a name or ID/.test(shown.stderr)) return;
      const status = propertyTable(shown.stdout).status;
      if (status === 'error_deleting') throw new Error(`volume ${id} is error_deleting`);
      if (Date.now() > deadline) throw new Error(`volume ${id} was not deleted (${status})`);
      await sleep(500);
    }
  }

  /** User messages Cinder recorded for a resource (why an asynchronous request failed). */
  async errorMessages(project: string, resource: string): Promise<string> {
    const listed = await this.cinderRaw(project, ['message-list', '--resource_uuid', resource], '3.5');
    return listed.stdout.trim();
  }
}

/** A `| Property | Value |` table of the cinder and glance CLIs, as an object. */
export function propertyTable(text: string): Table {
  const table: Table = {};
  let key: string | undefined;
  for (const line of text.split('\n')) {
    const cells = /^\|\s(.*?)\s*\|\s(.*?)\s*\|$/.exec(line);
    if (!cells) continue;
    const [, property, value] = cells;
    if (property === 'Property' && value === 'Value') continue;
    if (property === '' && key) {
      table[key] += value!; // a wrapped value continues on the next row
      continue;
    }
    key = property!;
    table[key] = value!;
  }
  return table;
}

/** The rows of a list table of the cinder and glance CLIs, keyed by its header. */
export function listTable(text: string): Table[] {
  const rows = text.split('\n').filter((line) => line.startsWith('|'));
  if (rows.length === 0) return [];
  const split = (line: string): string[] => line.slice(1, -1).split('|').map((cell) => cell.trim());
  const header = split(rows[0]!);
  return rows.slice(1).map((line) => Object.fromEntries(split(line).map((cell, i) => [header[i]!, cell])));
}

export function gib(n: number): number {
  return n * GiB;
}

function connects(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

/** SIGKILLs every process (but this one) whose command line contains `text`. */
async function killProcessesNaming(text: string): Promise<void> {
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.includes(text)) continue;
    try {
      process.kill(Number(entry), 'SIGKILL');
    } catch {
      // gone already
    }
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // the group is gone
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether this machine can run the stack (root, the packages); the reason when not. */
export function stackMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root';
  for (const binary of ['/usr/bin/cinder-volume', '/usr/bin/glance-api', '/usr/lib/rabbitmq/bin/rabbitmq-server', '/usr/bin/cinder', '/usr/bin/glance', '/usr/sbin/mariadbd', '/usr/bin/mariadb-install-db']) {
    if (!existsSync(binary)) return `needs ${binary} (Debian's OpenStack packages)`;
  }
  return undefined;
}

