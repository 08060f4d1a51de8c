// Where the agent's control socket is (docs/design.md "Processes, files,
// defaults"): --socket, then $VOLAGENT_SOCKET, then ./var/control.sock when it
// exists (the embedded default of `volagentd` run from a checkout), then the
// production path.
import { existsSync } from 'node:fs';
import path from 'node:path';

export const DEFAULT_SOCKET = '/run/volagent/control.sock';
/** Relative to the working directory. */
export const LOCAL_SOCKET = 'var/control.sock';

export type SocketSource = 'option' | 'environment' | 'working-directory' | 'default';

export interface ResolvedSocket {
  path: string;
  source: SocketSource;
}

export interface SocketLookup {
  /** The value of --socket, if given. */
  option?: string | undefined;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  exists?: (file: string) => boolean;
}

export function resolveSocket(lookup: SocketLookup = {}): ResolvedSocket {
  const env = lookup.env ?? process.env;
  const cwd = lookup.cwd ?? process.cwd();
  const exists = lookup.exists ?? existsSync;
  // Paths are kept as given, relative ones too: a socket address is limited
  // to 107 bytes (sun_path), and resolving against a deep cwd could exceed it.
  if (lookup.option) return { path: lookup.option, source: 'option' };
  if (env.VOLAGENT_SOCKET) return { path: env.VOLAGENT_SOCKET, source: 'environment' };
  if (exists(path.join(cwd, LOCAL_SOCKET))) return { path: LOCAL_SOCKET, source: 'working-directory' };
  return { path: DEFAULT_SOCKET, source: 'default' };
}

/** How the socket was found, for messages: "from --socket", "from $VOLAGENT_SOCKET", ... */
export function describeSource(source: SocketSource): string {
  switch (source) {
    case 'option': return 'from --socket';
    case 'environment': return 'from $VOLAGENT_SOCKET';
    case 'working-directory': return 'in the working directory';
    case 'default': return 'the default; set --socket or $VOLAGENT_SOCKET for another';
  }
}
