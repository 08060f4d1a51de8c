// `volagentd [--config FILE]`: the daemon's entry. Without --config it runs
// the embedded default (docs/design.md "Processes, files, defaults"). Under
// systemd it reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $LISTEN_FDS (systemd.ts). SIGHUP reloads the config:
// pools it adds are opened; other changes need a restart (reload.ts). SIGTERM and SIGINT drain and exit 0; a
// start-up failure is one line on stderr (and the log) and exit 1; a bad
// command line or config exits 2.
import { parseArgs } from 'node:util';

import { ConfigError, loadConfig } from '../daemon/config.js';
import { startDaemon } from '../daemon/daemon.js';
import { createLogger } from '../daemon/logger.js';
import { listenedSockets, ServiceNotifier } from '../daemon/systemd.js';

const USAGE = 'usage: volagentd [--config FILE]';

export async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: { config: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true }));
  } catch (error) {
    process.stderr.write(`volagentd: ${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const logger = createLogger();
  let config;
  try {
    config = await loadConfig(values.config);
  } catch (error) {
    const message = error instanceof ConfigError ? error.message : `${values.config ?? 'config'}: ${(error as Error).message}`;
    logger.fatal({ err: error }, message);
    process.stderr.write(`volagentd: ${message}\n`);
    return 2;
  }
  const warned = new Set<string>();
  const notifier = ServiceNotifier.fromEnvironment({
    onError: (message, error) => {
      if (warned.has(message)) return;
      warned.add(message);
      logger.warn({ err: error, message }, 'a systemd notification could not be sent');
    },
  });
  const listened = listenedSockets();
  // systemctl reload (ExecReload=kill -HUP): pools added to the config are opened. Before
  // the agent serves, a SIGHUP is ignored (its default action would end the process).
  let reloadOnHangup = (): void => logger.info({}, 'SIGHUP during start-up ignored');
  process.on('SIGHUP', () => reloadOnHangup());
  let daemon;
  try {
    daemon = await startDaemon(config, logger, { notifier, listened });
  } catch (error) {
    logger.fatal({ err: error }, (error as Error).message);
    await notifier.status(`failed to start: ${(error as Error).message}`);
    process.stderr.write(`volagentd: ${(error as Error).message}\n`);
    return 1;
  }
  const running = daemon;
  return new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      running.stop(signal).then(() => resolve(0), (error: unknown) => {
        logger.error({ err: error }, 'stop failed');
        resolve(1);
      });
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    reloadOnHangup = () => {
      void running.reload().catch((error: unknown) => logger.error({ err: error }, 'reload failed'));
    };
  });
}
