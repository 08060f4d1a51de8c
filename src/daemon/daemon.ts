// Wiring and lifecycle of volagentd (docs/design.md "House style" 11): check
// every pool and fail fast, open the catalog and reconcile, remove a stale
// socket, then listen. stop() drains: no new connections, running operations
// cancelled (each cleans up its partial object), in-flight requests answered,
// catalog closed.
import { chmod, mkdir, unlink } from 'node:fs/promises';

import { Agent } from '../agent/agent.js';
import { createApiServer } from '../api/server.js';
import { Catalog } from '../catalog/catalog.js';
import { CatalogPoolLedger } from '../catalog/pool-ledger.js';
import { NbdServer } from '../exports/nbd/server.js';
import { NbdTls } from '../exports/nbd/tls.js';
import type { PoolContext } from '../pools/index.js';
import { backendOf, createPool } from '../pools/index.js';
import type { Pool } from '../pools/pool.js';
import type { PoolImagePolicy } from '../agent/images.js';
import type { PoolConfig } from '../pools/pool-config.js';
import type { AgentConfig } from './config.js';
import { EMBEDDED_DEFAULT_SOURCE, loadConfig } from './config.js';
import { planReload } from './reload.js';
import type { ActivatedSockets } from './activation.js';
import { assignListened } from './activation.js';
import { prepareSocketPath } from '../common/unix-socket-path.js';
import type { Logger } from './logger.js';
import type { ListenedSocket } from './systemd.js';
import { ServiceNotifier } from './systemd.js';

/** docs/design.md "Peer-credential authorization": the socket is a filesystem path, mode 0660. */
const SOCKET_MODE = 0o660;
/** listen(2) backlog of the control socket; the kernel caps it at net.core.somaxconn. */
const CONTROL_BACKLOG = 4096;

export class StartupError extends Error {
  override name = 'StartupError';
}

export interface DaemonOptions {
  /** sd_notify: READY=1 once the control socket serves, STATUS=, watchdog pings, STOPPING=1. */
  notifier?: ServiceNotifier;
  /** Sockets passed by systemd (socket activation): `control` for the control API, `nbd` for [nbd].listen entries (activation.ts). */
  listened?: ListenedSocket[];
}

export interface RunningDaemon {
  agent: Agent;
  /** The control socket's path; under socket activation, the path the config names (systemd made the socket). */
  socketPath: string;
  /** Drains and stops; resolves when everything is closed. Safe to call twice. */
  stop(reason: string): Promise<void>;
  /**
   * Reads the config file again (SIGHUP) and opens the pools it adds;
   * everything else it changes is refused with a log line (reload.ts).
   * RELOADING=1 before, READY=1 after. Reloads run one at a time.
   */
  reload(): Promise<void>;
}

async function openPools(config: AgentConfig, logger: Logger, context: PoolContext): Promise<Pool[]> {
  const pools: Pool[] = [];
  for (const poolConfig of config.pools) {
    // The embedded default is the developer's `npm start`: its pool directory
    // under ./var is made on first start. A configured pool must exist.
    const backend = backendOf(poolConfig);
    if (config.source === EMBEDDED_DEFAULT_SOURCE) await backend.prepareDevelopment?.(poolConfig);
    const pool = createPool(poolConfig, context);
    try {
      await pool.open();
    } catch (error) {
      await Promise.all(pools.map((opened) => opened.close()));
      await pool.close().catch(() => undefined);
      const where = backend.location ? ` at ${backend.location(poolConfig)}` : '';
      throw new StartupError(`pool ${poolConfig.name}${where}: ${(error as Error).message}`, { cause: error });
    }
    logger.info({ pool: pool.name, backend: pool.backend, capabilities: pool.capabilities() }, 'pool opened');
    pools.push(pool);
  }
  return pools;
}

export async function startDaemon(config: AgentConfig, logger: Logger, options: DaemonOptions = {}): Promise<RunningDaemon> {
  const notifier = options.notifier ?? ServiceNotifier.fromEnvironment({ env: {} });
  let passed: ActivatedSockets;
  try {
    passed = assignListened(options.listened ?? [], config.nbd.listen);
  } catch (error) {
    throw new StartupError((error as Error).message, { cause: error });
  }
  const activated = passed.control;
  let nbdTls: NbdTls | undefined;
  try {
    nbdTls = config.nbd.tls ? await NbdTls.load(config.nbd.tls) : undefined;
  } catch (error) {
    throw new StartupError(`nbd tls: ${(error as Error).message}`, { cause: error });
  }
  // A backend that keeps state in the catalog (PoolBackend.usesLedger)
  // needs it open first. Otherwise a pool that fails start-up leaves no catalog behind.
  const catalog = config.pools.some((pool) => backendOf(pool).usesLedger) ? Catalog.open(config.catalog.path, { keepFinishedOperations: config.keepFinishedOperations }) : undefined;
  let ledger = catalog ? new CatalogPoolLedger(catalog) : undefined;
  const warn = (fields: Record<string, unknown>, message: string): void => logger.warn(fields, message);
  let pools: Pool[];
  try {
    pools = await openPools(config, logger, { ...(ledger ? { ledger } : {}), warn });
  } catch (error) {
    catalog?.close();
    throw error;
  }
  const imagePolicies = new Map(config.pools.map((pool) => [pool.name, imagePolicyOf(pool)]));
  const boundPorts = new Map<number, number>();
  const { agent, startup } = await Agent.open({
    catalogPath: config.catalog.path, ...(catalog ? { catalog } : {}), pools, lockWaitMs: config.lockWaitMs, keepFinishedOperations: config.keepFinishedOperations, internalTenant: config.internalTenant, imagePolicies,
    nbdListen: config.nbd.listen, boundPorts, ...(nbdTls ? { nbdTls: true } : {}),
    remote: { plaintextTcp: config.nbd.plaintextTcp, ...(nbdTls ? { tls: nbdTls.clientCredentials() } : {}) },
  });
  ledger?.writeThrough(agent.writes);
  await agent.exports.restore((row, error) => logger.error({ export: row.id, volume: row.volumeId, protocol: row.protocol, err: (error as Error).message }, 'an export could not be restored'));
  const nbd = new NbdServer({
    lookup: (name) => agent.exports.lookup(name), exportNames: () => agent.exports.nbdExportNames(), allowList: config.nbd.allowList,
  });
  try {
    const bound = await nbd.listen(config.nbd.listen, {
      ...(config.nbd.socketMode !== undefined ? { socketMode: config.nbd.socketMode } : {}),
      ...(config.nbd.socketGroup !== undefined ? { socketGroup: config.nbd.socketGroup } : {}),
      passed: passed.nbd,
      ...(nbdTls ? { tls: nbdTls } : {}),
    });
    for (const b of bound.filter((b) => b.passed)) logger.info({ nbd: b.address.kind === 'unix' ? b.address.path : `${b.address.host}:${b.address.port}` }, 'nbd: serving a socket passed by systemd');
    bound.forEach((b, i) => { if (b.port !== undefined) boundPorts.set(i, b.port); });
  } catch (error) {
    await agent.close();
    throw new StartupError(`nbd listen: ${(error as Error).message}`, { cause: error });
  }
  for (const difference of startup.differences) {
    const level = difference.action ? 'info' : 'warn';
    logger[level]({ ...difference }, difference.action ? 'start-up reconcile settled a difference' : 'start-up reconcile found a difference; `volagent check --repair` settles it');
  }
  const socketPath = config.control.socket;
  const where = activated ? `fd ${activated.fd} (${activated.name}, passed by systemd)` : socketPath;
  const api = createApiServer(agent, logger, { allow: config.control.allow });
  try {
    if (!activated) {
      const { removedStale } = await prepareSocketPath(socketPath);
      if (removedStale) logger.info({ socket: socketPath }, 'removed a stale control socket');
    }
    await new Promise<void>((resolve, reject) => {
      api.listener.once('error', reject);
      const listening = (): void => {
        api.listener.off('error', reject);
        resolve();
      };
      // A passed socket is already bound and listening, with systemd's mode and group (SocketMode=, SocketGroup=).
      if (activated) api.listener.listen({ fd: activated.fd }, listening);
      // A deep accept queue (as systemd's Backlog= default, SOMAXCONN): a burst of
      // clients waits in it instead of getting EAGAIN from connect(2) while
      // the agent admits the ones before them.
      else api.listener.listen({ path: socketPath, backlog: CONTROL_BACKLOG }, listening);
    });
    if (!activated) await chmod(socketPath, SOCKET_MODE);
  } catch (error) {
    await nbd.close();
    await agent.close();
    throw new StartupError(`control socket ${where}: ${(error as Error).message}`, { cause: error });
  }
  logger.info({ socket: where, catalog: config.catalog.path, pools: pools.map((p) => p.name), config: config.source }, 'volagentd listening');
  await notifier.ready(statusLine(agent));
  notifier.startWatchdog();
  if (notifier.watchdogUsec !== undefined) logger.info({ watchdogUsec: notifier.watchdogUsec }, 'systemd watchdog: pinging every half period');

  let running = config;
  let reloading: Promise<void> = Promise.resolve();
  const reloadOnce = async (): Promise<void> => {
    await notifier.reloading();
    try {
      if (running.source === EMBEDDED_DEFAULT_SOURCE) {
        logger.warn({}, 'reload: the agent runs the embedded default config; there is no file to read again');
        return;
      }
      let next: AgentConfig;
      try {
        next = await loadConfig(running.source);
      } catch (error) {
        logger.error({ config: running.source, err: (error as Error).message }, 'reload refused: the config is not valid; the running one stays');
        return;
      }
      const plan = planReload(running, next);
      for (const reason of plan.refused) logger.warn({ config: running.source }, `reload: ${reason}`);
      const added: PoolConfig[] = [];
      for (const poolConfig of plan.added) {
        if (backendOf(poolConfig).usesLedger && !ledger) {
          ledger = new CatalogPoolLedger(agent.catalog);
          ledger.writeThrough(agent.writes);
        }
        const pool = createPool(poolConfig, { ...(ledger ? { ledger } : {}), warn });
        try {
          await pool.open();
          agent.addPool(pool, imagePolicyOf(poolConfig));
        } catch (error) {
          await pool.close().catch(() => undefined);
          logger.error({ pool: poolConfig.name, err: (error as Error).message }, 'reload: the new pool could not be opened; not added');
          continue;
        }
        added.push(poolConfig);
        logger.info({ pool: pool.name, backend: pool.backend, capabilities: pool.capabilities() }, 'reload: pool added');
      }
      running = { ...running, pools: [...running.pools, ...added] };
    } finally {
      await notifier.ready(statusLine(agent));
    }
  };
  const reload = (): Promise<void> => {
    reloading = reloading.then(reloadOnce, reloadOnce);
    return reloading;
  };

  let stopping: Promise<void> | undefined;
  const stop = (reason: string): Promise<void> => {
    stopping ??= (async () => {
      await notifier.stopping(`stopping (${reason})`);
      logger.info({ reason, inFlight: api.inFlight() }, 'volagentd stopping');
      const closed = api.close();
      api.server.closeIdleConnections();
      await agent.operations.cancelAll(`the agent is stopping (${reason})`);
      const broken = api.abortTransfers();
      if (broken > 0) logger.info({ transfers: broken }, 'broke off uploads and downloads in progress; uploads leave nothing behind');
      await api.drained();
      api.server.closeAllConnections();
      await closed;
      await nbd.close();
      await agent.close();
      // A passed socket belongs to systemd: it keeps it for the next start.
      if (!activated) await unlink(socketPath).catch(() => undefined);
      logger.info({ reason }, 'volagentd stopped');
    })();
    return stopping;
  };
  return { agent, socketPath, stop, reload };
}

function imagePolicyOf(pool: PoolConfig): PoolImagePolicy {
  return {
    ...(pool.maxImageBytes !== undefined ? { maxImageBytes: pool.maxImageBytes } : {}),
    ...(pool.imageCache ? { imageCache: pool.imageCache } : {}),
  };
}

/** STATUS= for systemctl status: what the agent serves. */
function statusLine(agent: Agent): string {
  const volumes = agent.catalog.listVolumes().length;
  const exports = agent.exports.list(agent.system).length;
  return `serving ${agent.pools.size} pool(s), ${volumes} volume(s), ${exports} export(s)`;
}
