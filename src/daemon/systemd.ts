// systemd's service protocol, as the daemon uses it:
// - sd_notify(3): READY=1 once the agent serves, STATUS= lines, STOPPING=1,
//   RELOADING=1 (with MONOTONIC_USEC, as Type=notify-reload wants) and
//   READY=1 again around a reload; datagrams to $NOTIFY_SOCKET (the addon
//   sends them).
// - sd_watchdog_enabled(3): with $WATCHDOG_USEC set (and $WATCHDOG_PID unset
//   or ours), WATCHDOG=1 every half period from a timer on the event loop, so
//   a loop that stops turning stops the pings and systemd restarts the agent.
// - sd_listen_fds(3): $LISTEN_PID (ours) and $LISTEN_FDS name sockets passed
//   from fd 3 on, with $LISTEN_FDNAMES naming each.
// The variables are removed from the environment once read, as sd_notify's
// unset_environment does, so nothing the agent runs inherits them.
import { native } from '../native/binding.js';

/** The first passed descriptor (SD_LISTEN_FDS_START). */
export const LISTEN_FDS_START = 3;

type Send = (socketPath: string, message: string) => Promise<void>;

export interface ServiceNotifierOptions {
  env?: NodeJS.ProcessEnv;
  pid?: number;
  send?: Send;
  /** A notification that could not be sent (logged once per kind by the caller). */
  onError?: (message: string, error: unknown) => void;
}

export class ServiceNotifier {
  private watchdogTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly socketPath: string | undefined,
    /** Microseconds; undefined when systemd watches nothing. */
    readonly watchdogUsec: number | undefined,
    private readonly send: Send,
    private readonly onError: (message: string, error: unknown) => void,
  ) {}

  static fromEnvironment(options: ServiceNotifierOptions = {}): ServiceNotifier {
    const env = options.env ?? process.env;
    const pid = options.pid ?? process.pid;
    const socketPath = env.NOTIFY_SOCKET || undefined;
    const watchdogPid = env.WATCHDOG_PID ? Number(env.WATCHDOG_PID) : undefined;
    const usec = env.WATCHDOG_USEC ? Number(env.WATCHDOG_USEC) : undefined;
    const watchdogUsec = usec !== undefined && Number.isSafeInteger(usec) && usec > 0 && (watchdogPid === undefined || watchdogPid === pid) ? usec : undefined;
    delete env.NOTIFY_SOCKET;
    delete env.WATCHDOG_USEC;
    delete env.WATCHDOG_PID;
    return new ServiceNotifier(socketPath, watchdogUsec, options.send ?? native.sdNotify, options.onError ?? (() => undefined));
  }

  /** Whether systemd listens ($NOTIFY_SOCKET was set). */
  get enabled(): boolean {
    return this.socketPath !== undefined;
  }

  ready(status: string): Promise<void> {
    return this.notify(`READY=1\nSTATUS=${oneLine(status)}`);
  }

  status(status: string): Promise<void> {
    return this.notify(`STATUS=${oneLine(status)}`);
  }

  reloading(): Promise<void> {
    const monotonicUsec = process.hrtime.bigint() / 1000n;
    return this.notify(`RELOADING=1\nMONOTONIC_USEC=${monotonicUsec}`);
  }

  stopping(status: string): Promise<void> {
    this.stopWatchdog();
    return this.notify(`STOPPING=1\nSTATUS=${oneLine(status)}`);
  }

  /** Pings every half watchdog period, from the event loop. No-op without a watchdog. */
  startWatchdog(): void {
    if (this.watchdogUsec === undefined || !this.enabled || this.watchdogTimer) return;
    const periodMs = Math.max(1, Math.floor(this.watchdogUsec / 2000));
    this.watchdogTimer = setInterval(() => void this.notify('WATCHDOG=1'), periodMs).unref();
  }

  stopWatchdog(): void {
    if (this.watchdogTimer) clearInterval(this.watchdogTimer);
    this.watchdogTimer = undefined;
  }

  private async notify(message: string): Promise<void> {
    if (!this.socketPath) return;
    try {
      await this.send(this.socketPath, message);
    } catch (error) {
      this.onError(message.split('\n')[0]!, error);
    }
  }
}

function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ');
}

export interface ListenedSocket {
  fd: number;
  /** $LISTEN_FDNAMES' name for it (FileDescriptorName= in the socket unit; the unit's name by default). */
  name: string;
}

/**
 * The sockets systemd passed (socket activation), when $LISTEN_PID is this
 * process; empty otherwise. The variables are removed once read.
 */
export function listenedSockets(env: NodeJS.ProcessEnv = process.env, pid = process.pid): ListenedSocket[] {
  const listenPid = Number(env.LISTEN_PID);
  const count = Number(env.LISTEN_FDS);
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (listenPid !== pid || !Number.isSafeInteger(count) || count <= 0) return [];
  return Array.from({ length: count }, (_, i) => ({ fd: LISTEN_FDS_START + i, name: names[i] || 'unknown' }));
}
