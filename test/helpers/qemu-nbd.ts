// qemu-nbd as a reference NBD server for tests: started with --fork (its
// parent exits once the server listens, so the test never races the bind),
// its pid taken from --pid-file, and stopped by that pid at teardown (SIGTERM,
// then SIGKILL), even when the test failed. TLS as qemu documents it:
// tls-creds-psk (DIR/keys.psk, lines `identity:hexkey`) or tls-creds-x509
// (DIR/ca-cert.pem, server-cert.pem, server-key.pem).
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import type { Test } from 'tap';

import { outcome } from './run.js';

export type QemuNbdTls = { kind: 'psk'; dir: string } | { kind: 'x509'; dir: string; verifyPeer: boolean };

export interface QemuNbdOptions {
  file: string;
  exportName: string;
  /** A unix socket path; absent: TCP on 127.0.0.1 at a free port. */
  socket?: string;
  tls?: QemuNbdTls;
  readOnly?: boolean;
  /** Keep serving after the last client leaves (-t); false: qemu-nbd exits when its client disconnects. Default true. */
  persistent?: boolean;
  /** Where the pid file goes. */
  dir: string;
}

export interface QemuNbd {
  pid: number;
  /** The TCP port, when not on a unix socket. */
  port?: number;
  /** The process is gone (exited, or a zombie nobody reaped yet). */
  exited(): Promise<boolean>;
  stop(): Promise<void>;
}

/** A TCP port nothing listens on at the moment (the kernel's choice for port 0). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export async function processGone(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

let sequence = 0;

/** Starts qemu-nbd serving `file`; stopped at the test's teardown. */
export async function startQemuNbd(t: Test, options: QemuNbdOptions): Promise<QemuNbd> {
  for (let attempt = 1; ; attempt++) {
    const port = options.socket ? undefined : await freePort();
    const pidFile = path.join(options.dir, `qemu-nbd-${process.pid}-${++sequence}.pid`);
    const args = ['--fork', '--pid-file', pidFile, '-f', 'raw', '-x', options.exportName, '-e', '4'];
    if (options.persistent ?? true) args.push('-t');
    if (options.readOnly ?? true) args.push('-r');
    if (options.socket) args.push('-k', options.socket);
    else args.push('-b', '127.0.0.1', '-p', String(port));
    if (options.tls?.kind === 'psk') args.push('--object', `tls-creds-psk,id=tls0,endpoint=server,dir=${options.tls.dir}`, '--tls-creds', 'tls0');
    if (options.tls?.kind === 'x509') {
      args.push('--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${options.tls.dir},verify-peer=${options.tls.verifyPeer ? 'on' : 'off'}`, '--tls-creds', 'tls0');
    }
    args.push(options.file);
    const started = await outcome('qemu-nbd', args);
    if (started.code !== 0) {
      // Another process may take the free port between freePort() and qemu-nbd's bind.
      if (!options.socket && /Address already in use/.test(started.stderr) && attempt < 5) continue;
      throw new Error(`qemu-nbd ${args.join(' ')} failed (${started.code}): ${started.stderr}`);
    }
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    if (!Number.isInteger(pid) || pid <= 1) throw new Error(`qemu-nbd wrote no pid to ${pidFile}`);
    let stopped: Promise<void> | undefined;
    const stop = (): Promise<void> => {
      stopped ??= (async () => {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          return; // already gone
        }
        for (let waited = 0; waited < 5000; waited += 50) {
          if (await processGone(pid)) return;
          await sleep(50);
        }
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone meanwhile */ }
        for (let waited = 0; waited < 5000 && !(await processGone(pid)); waited += 50) await sleep(50);
      })();
      return stopped;
    };
    t.teardown(stop);
    return { pid, ...(port !== undefined ? { port } : {}), exited: () => processGone(pid), stop };
  }
}
