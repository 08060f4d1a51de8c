// Who may use the control socket (docs/api.md "Access", `[control].allow`):
// the kernel's record of the connecting process (SO_PEERCRED,
// SO_PEERGROUPS), never anything the request says. A rule names a uid or a
// gid (the peer's primary group or any supplementary one) and a role:
// `admin` may do everything, `tenant` acts for the one tenant its rule names,
// `reader` only GET and HEAD. With no rules, only root gets in, as admin.
// Anyone else is refused before a byte of the request is read.
import type { Principal } from '../agent/access.js';
import type { PeerCredentials } from '../native/addon-types.js';

export type Role = 'admin' | 'reader' | 'tenant';

/** One `[control].allow` rule (src/daemon/config.ts reads them): exactly one of uid or gid. */
export interface AllowRule {
  uid?: number;
  gid?: number;
  role: Role;
  /** The one tenant a `tenant` rule binds its peer to. */
  tenant?: string;
}

export interface Peer extends PeerCredentials {
  principal: Principal;
}

/**
 * The principal `rules` make of `peer`: admin wins, then a tenant binding,
 * then reader. Undefined when no rule matches, or when the peer matches
 * tenant rules of two tenants (no rule says which it acts for).
 */
export function principalOf(peer: PeerCredentials, rules: readonly AllowRule[]): Principal | undefined {
  if (rules.length === 0) return peer.uid === 0 ? { role: 'admin' } : undefined;
  const groups = new Set([peer.gid, ...peer.groups]);
  const matching = rules.filter((rule) => (rule.uid !== undefined && rule.uid === peer.uid) || (rule.gid !== undefined && groups.has(rule.gid)));
  if (matching.some((rule) => rule.role === 'admin')) return { role: 'admin' };
  const tenants = new Set(matching.filter((rule) => rule.role === 'tenant').map((rule) => rule.tenant!));
  if (tenants.size > 1) return undefined;
  if (tenants.size === 1) return { role: 'tenant', tenant: [...tenants][0]! };
  return matching.length > 0 ? { role: 'reader' } : undefined;
}

/** The tenants of the tenant rules `peer` matches (to say why an ambiguous peer was refused). */
export function boundTenants(peer: PeerCredentials, rules: readonly AllowRule[]): string[] {
  const groups = new Set([peer.gid, ...peer.groups]);
  return [...new Set(rules.filter((rule) => rule.role === 'tenant' && ((rule.uid !== undefined && rule.uid === peer.uid) || (rule.gid !== undefined && groups.has(rule.gid))))
    .map((rule) => rule.tenant!))];
}

const READ_METHODS = new Set(['GET', 'HEAD']);

/** Whether `role` may make a request with `method` (what it may touch is the domain's to decide). */
export function mayRequest(role: Role, method: string): boolean {
  return role !== 'reader' || READ_METHODS.has(method);
}

/** Whether a request with `method` changes something (its log line is the audit record). */
export function isMutating(method: string): boolean {
  return !READ_METHODS.has(method);
}
