// A stand-in for systemd's notification socket: socat receives the agent's
// sd_notify datagrams on a unix datagram socket (a path, or an abstract name
// given as `@name`), and `-v` writes each one to stderr behind a header with
// its arrival time and length, so every datagram is seen on its own.
import type { ChildProcess } from 'node:child_process';
import { spawn } from 'node:child_process';
import { access } from 'node:fs/promises';

import type { Test } from 'tap';

export interface Notification {
  /** Arrival, in ms since the epoch (socat's clock). */
  at: number;
  text: string;
  /** VAR=value assignments of the datagram. */
  fields: Record<string, string>;
}

const HEADER = /^> (\d{4})\/(\d{2})\/(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d+) {2}length=(\d+) from=\d+ to=\d+\n/;

export class NotifyListener {
  readonly messages: Notification[] = [];
  private buffered = '';
  private waiters: Array<() => void> = [];

  private constructor(readonly address: string, private readonly child: ChildProcess) {
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      this.buffered += chunk;
      this.parse();
    });
  }

  /** Listens on `address` (`/path` or `@abstract`); stopped at the end of `t`. */
  static async start(t: Test, address: string): Promise<NotifyListener> {
    const socatAddress = address.startsWith('@') ? `ABSTRACT-RECV:${address.slice(1)}` : `UNIX-RECV:${address}`;
    const child = spawn('socat', ['-v', '-u', socatAddress, 'OPEN:/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'] });
    const listener = new NotifyListener(address, child);
    t.teardown(() => { child.kill('SIGKILL'); });
    if (!address.startsWith('@')) {
      for (let i = 0; i < 100; i++) {
        if (await access(address).then(() => true, () => false)) break;
        await new Promise((r) => setTimeout(r, 20));
      }
    } else {
      await new Promise((r) => setTimeout(r, 200)); // an abstract name has no file to wait for
    }
    return listener;
  }

  private parse(): void {
    for (;;) {
      const match = HEADER.exec(this.buffered);
      if (!match) return;
      const length = Number(match[8]);
      const body = this.buffered.slice(match[0].length);
      if (body.length < length) return;
      const [year, month, day, hour, minute, second, fraction] = match.slice(1, 8).map(String);
      const at = Date.UTC(+year!, +month! - 1, +day!, +hour!, +minute!, +second!) + Number(`0.${fraction}`) * 1000;
      const text = body.slice(0, length);
      const fields = Object.fromEntries(text.split('\n').filter(Boolean).map((line) => {
        const eq = line.indexOf('=');
        return [line.slice(0, eq), line.slice(eq + 1)];
      }));
      this.messages.push({ at, text, fields });
      this.buffered = body.slice(length).replace(/^\n/, '');
      for (const wake of this.waiters.splice(0)) wake();
    }
  }

  /** The first message (from `from` on) with field `name` (equal to `value` when given), waiting up to `timeoutMs`. */
  async next(name: string, value?: string, timeoutMs = 20_000, from = 0): Promise<Notification> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.messages.slice(from).find((m) => name in m.fields && (value === undefined || m.fields[name] === value));
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${name}${value ? `=${value}` : ''} notification within ${timeoutMs} ms; got ${JSON.stringify(this.messages.map((m) => m.text))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
  }

  with(name: string, value?: string): Notification[] {
    return this.messages.filter((m) => name in m.fields && (value === undefined || m.fields[name] === value));
  }
}
