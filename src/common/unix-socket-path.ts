// A unix socket's path made ready for listen(2), for the control socket and
// the NBD server's unix addresses alike: a stale socket from a crashed agent
// is removed, a live one (another agent answers) is refused, and anything
// that is not a socket is never deleted.
import { lstat, mkdir, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import path from 'node:path';

import { isSystemError } from '../native/system-error.js';

export class SocketInUseError extends Error {
  override name = 'SocketInUseError';
}

/** Connects to `socketPath`: true when something accepts, false on ECONNREFUSED (nobody listens). */
function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', (error) => {
      socket.destroy();
      if (isSystemError(error, 'ECONNREFUSED', 'ENOENT')) resolve(false);
      else reject(error);
    });
  });
}

/**
 * Makes `socketPath` ready for listen(2): creates its directory, removes a
 * stale socket. Returns whether a stale socket was removed.
 */
export async function prepareSocketPath(socketPath: string): Promise<{ removedStale: boolean }> {
  await mkdir(path.dirname(socketPath), { recursive: true });
  let stats;
  try {
    stats = await lstat(socketPath);
  } catch (error) {
    if (isSystemError(error, 'ENOENT')) return { removedStale: false };
    throw error;
  }
  if (!stats.isSocket()) throw new SocketInUseError(`${socketPath} exists and is not a socket; not removing it`);
  if (await answers(socketPath)) throw new SocketInUseError(`${socketPath}: another agent is listening there`);
  await unlink(socketPath);
  return { removedStale: true };
}
