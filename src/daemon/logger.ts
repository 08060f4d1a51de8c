// JSON lines on stdout (journald keeps them as they are). The level comes
// from $VOLAGENT_LOG_LEVEL (default info).
import { pino } from 'pino';
import type { Logger } from 'pino';

export type { Logger } from 'pino';

export function createLogger(level = process.env.VOLAGENT_LOG_LEVEL ?? 'info'): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}
