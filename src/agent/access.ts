// Who may see and change what (docs/api.md "Access"). The principal comes from
// the peer's credentials (SO_PEERCRED through `[control].allow`), never from a
// field the caller writes; the request only adds a scope (`?tenant=X`).
//
//   admin   the control plane (cinder-volume acting for all its projects):
//           acts for any tenant, is the only one that acts as the internal
//           tenant, names the owner of what it creates, and uses any tenant's
//           volume, snapshot or image as a source. With a scope, an object
//           that is not the scope's (or a public image, for reads of images)
//           is absent (its kind's _NOT_FOUND): a cheap ownership check.
//   tenant  bound to one tenant by its allow rule: sees and changes only that
//           tenant's objects, reads and clones public images; naming another
//           tenant (body or query) is TENANT_FORBIDDEN, another tenant's
//           object is absent.
//   reader  reads the metadata of everything; image data of public images only.
import { DomainError } from './errors.js';

export type Principal =
  | { role: 'admin' }
  | { role: 'reader' }
  | { role: 'tenant'; tenant: string };

/** What an owned object says about itself for the access decision. */
export interface Owned {
  tenant: string;
}

/** An image: owned, and maybe public. */
export interface Shared extends Owned {
  visibility: 'public' | 'private';
}

export class Access {
  private constructor(
    readonly principal: Principal,
    /** `?tenant=X`: act for X only. A tenant-bound peer's scope is its tenant. */
    readonly scope: string | undefined,
    private readonly internalTenant: string,
  ) {}

  /**
   * The access of a request by `principal`, scoped by its `?tenant` (when
   * given). A tenant-bound peer naming another tenant, or anyone but an admin
   * naming the internal tenant as a tenant-bound peer would, is TENANT_FORBIDDEN.
   */
  static of(principal: Principal, internalTenant: string, scope?: string): Access {
    if (principal.role === 'tenant') {
      if (scope !== undefined && scope !== principal.tenant) throw forbiddenTenant(principal.tenant, scope, 'tenant');
      return new Access(principal, principal.tenant, internalTenant);
    }
    return new Access(principal, scope, internalTenant);
  }

  /** The agent itself (start-up, internal work): sees everything. */
  static system(internalTenant: string): Access {
    return new Access({ role: 'admin' }, undefined, internalTenant);
  }

  get role(): Principal['role'] {
    return this.principal.role;
  }

  /** Whether the metadata of an object owned by `object.tenant` is visible (else it is answered as absent). */
  sees(object: Owned): boolean {
    return this.scope === undefined || object.tenant === this.scope;
  }

  /** Whether an image's metadata is visible: the scope's own, or public. */
  seesImage(image: Shared): boolean {
    return image.visibility === 'public' || this.sees(image);
  }

  /**
   * Whether an image's bytes may be read, once `seesImage` holds: a reader
   * reads public images' data only (FORBIDDEN otherwise, thrown here).
   */
  checkImageData(image: Shared & { id: string }): void {
    if (this.principal.role === 'reader' && image.visibility !== 'public') {
      throw new DomainError('FORBIDDEN', `image ${image.id} is private: a reader reads the data of public images only`, { image: image.id, role: 'reader' });
    }
  }

  /** Whether `source` (a volume or snapshot owned by `source.tenant`) may be cloned from: an admin's any, a tenant's own. */
  usesSource(source: Owned): boolean {
    return this.principal.role === 'admin' || source.tenant === this.scope;
  }

  /** Whether an image may be cloned from or registered from: an admin's any; else own or public. */
  usesImage(image: Shared): boolean {
    return this.principal.role === 'admin' || this.seesImage(image);
  }

  /**
   * The owner of an object this request creates: an admin names it (`named`
   * is required); a tenant-bound peer's own tenant, which it may name or omit.
   */
  owner(named: string | undefined, field = 'tenant'): string {
    if (this.principal.role === 'tenant') {
      if (named !== undefined && named !== this.principal.tenant) throw forbiddenTenant(this.principal.tenant, named, field);
      return this.principal.tenant;
    }
    if (named === undefined) throw new DomainError('BAD_REQUEST', `${field} is required`, { field });
    return named;
  }

  /** Acting as the internal tenant (internal Image-Volumes, cache entries) is the admin's alone. */
  checkInternal(what: string): void {
    if (this.principal.role !== 'admin') {
      throw new DomainError('TENANT_FORBIDDEN', `${what} puts it in the internal tenant (${this.internalTenant}): only an admin acts as the internal tenant`, {
        role: this.principal.role, tenant: this.internalTenant,
      });
    }
  }

  /** Routes that change who owns what (a volume transfer) are the admin's alone: FORBIDDEN to anyone else. */
  checkAdmin(route: string): void {
    if (this.principal.role !== 'admin') {
      throw new DomainError('FORBIDDEN', `${route} is the admin's alone`, { role: this.principal.role, route });
    }
  }

  /** A tenant that may be given an object by a transfer: not the internal one (TENANT_FORBIDDEN). */
  checkTransferTarget(tenant: string): void {
    if (tenant === this.internalTenant) {
      throw new DomainError('TENANT_FORBIDDEN', `a volume is not transferred to the internal tenant (${this.internalTenant})`, { tenant, named: tenant, field: 'tenant' });
    }
  }

  /** The agent-wide routes (check, repair, metrics) are not a tenant's. */
  checkAgentWide(route: string): void {
    if (this.principal.role === 'tenant') {
      throw new DomainError('FORBIDDEN', `${route} is about the whole agent: a tenant-bound peer may not use it`, { role: 'tenant', route });
    }
  }
}

function forbiddenTenant(bound: string, named: string, field: string): DomainError {
  return new DomainError('TENANT_FORBIDDEN', `this peer is bound to tenant ${bound}; it may not name tenant ${named}`, { tenant: bound, named, field });
}
