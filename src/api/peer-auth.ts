// Who may use the control socket (docs/design.md "Peer-credential authorization",
// `[control].allow`): the kernel's record of the connecting process
// (SO_PEERCRED, SO_PEERGROUPS), never anything the request says. A rule
// names a uid or a gid (the peer's primary group or any supplementary one)
// and a role: `admin` may do everything, `reader` only GET and HEAD. With no
// rules, only root gets in. Anyone else is refused before a byte of the
// request is read.
import type { AllowRule, Role } from '../daemon/config.js';
import type { PeerCredentials } from '../native/addon-types.js';

export type { Role };

export interface Peer extends PeerCredentials {
  role: Role;
}

/** The role `rules` give `peer`; undefined when none matches. Admin wins over reader. */
export function roleOf(peer: PeerCredentials, rules: readonly AllowRule[]): Role | undefined {
  if (rules.length === 0) return peer.uid === 0 ? 'admin' : undefined;
  const groups = new Set([peer.gid, ...peer.groups]);
  const matching = rules.filter((rule) => (rule.uid !== undefined && rule.uid === peer.uid) || (rule.gid !== undefined && groups.has(rule.gid)));
  if (matching.some((rule) => rule.role === 'admin')) return 'admin';
  return matching.length > 0 ? 'reader' : undefined;
}

const READ_METHODS = new Set(['GET', 'HEAD']);

/** Whether `role` may make a request with `method`. */
export function mayRequest(role: Role, method: string): boolean {
  return role === 'admin' || READ_METHODS.has(method);
}

/** Whether a request with `method` changes something (its log line is the audit record). */
export function isMutating(method: string): boolean {
  return !READ_METHODS.has(method);
}
