// [control].allow as a pure function of the kernel's peer credentials.
import t from 'tap';

import { boundTenants, isMutating, mayRequest, principalOf } from '../../src/api/peer-auth.js';

const peer = (uid: number, gid: number, groups: number[] = []) => ({ pid: 100, uid, gid, groups });

t.test('no rules: root only', async (t) => {
  t.same(principalOf(peer(0, 0), []), { role: 'admin' });
  t.equal(principalOf(peer(1000, 1000), []), undefined);
  t.equal(principalOf(peer(1000, 0), []), undefined, 'group 0 is not root');
});

t.test('rules match a uid, the primary gid or a supplementary group; admin wins over reader', async (t) => {
  const rules = [{ uid: 1001, role: 'reader' as const }, { gid: 998, role: 'admin' as const }, { gid: 50, role: 'reader' as const }];
  t.same(principalOf(peer(1001, 1001), rules), { role: 'reader' });
  t.same(principalOf(peer(1002, 998), rules), { role: 'admin' }, 'primary group');
  t.same(principalOf(peer(1002, 1002, [7, 998]), rules), { role: 'admin' }, 'supplementary group');
  t.same(principalOf(peer(1001, 1001, [998]), rules), { role: 'admin' }, 'a reader uid in an admin group is admin');
  t.same(principalOf(peer(1003, 1003, [50]), rules), { role: 'reader' });
  t.equal(principalOf(peer(0, 0), rules), undefined, 'with rules, root needs one too');
  t.equal(principalOf(peer(1004, 1004, [51]), rules), undefined);
});

t.test('a tenant rule binds its peer to its tenant; admin wins over it, it wins over reader; two tenants is no principal', async (t) => {
  const rules = [
    { uid: 1001, role: 'tenant' as const, tenant: 't1' }, { gid: 60, role: 'tenant' as const, tenant: 't2' },
    { gid: 61, role: 'tenant' as const, tenant: 't1' }, { gid: 998, role: 'admin' as const }, { gid: 50, role: 'reader' as const },
  ];
  t.same(principalOf(peer(1001, 1001), rules), { role: 'tenant', tenant: 't1' });
  t.same(principalOf(peer(1005, 1005, [60]), rules), { role: 'tenant', tenant: 't2' }, 'by group');
  t.same(principalOf(peer(1001, 1001, [61]), rules), { role: 'tenant', tenant: 't1' }, 'two rules of one tenant');
  t.same(principalOf(peer(1001, 1001, [50]), rules), { role: 'tenant', tenant: 't1' }, 'a tenant binding wins over reader');
  t.same(principalOf(peer(1001, 1001, [998]), rules), { role: 'admin' }, 'admin wins over a tenant binding');
  t.equal(principalOf(peer(1001, 1001, [60]), rules), undefined, 'bound to t1 and t2: refused');
  t.same(boundTenants(peer(1001, 1001, [60]), rules).sort(), ['t1', 't2']);
});

t.test('readers may GET and HEAD only; admins and tenant-bound peers any method (the domain decides what they touch)', async (t) => {
  t.ok(mayRequest('reader', 'GET'));
  t.ok(mayRequest('reader', 'HEAD'));
  for (const method of ['PUT', 'POST', 'DELETE', 'PATCH']) {
    t.notOk(mayRequest('reader', method), method);
    t.ok(mayRequest('admin', method), method);
    t.ok(mayRequest('tenant', method), method);
    t.ok(isMutating(method), method);
  }
  t.notOk(isMutating('GET'));
});
