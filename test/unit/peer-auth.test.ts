// [control].allow as a pure function of the kernel's peer credentials.
import t from 'tap';

import { isMutating, mayRequest, roleOf } from '../../src/api/peer-auth.js';

const peer = (uid: number, gid: number, groups: number[] = []) => ({ pid: 100, uid, gid, groups });

t.test('no rules: root only', async (t) => {
  t.equal(roleOf(peer(0, 0), []), 'admin');
  t.equal(roleOf(peer(1000, 1000), []), undefined);
  t.equal(roleOf(peer(1000, 0), []), undefined, 'group 0 is not root');
});

t.test('rules match a uid, the primary gid or a supplementary group; admin wins over reader', async (t) => {
  const rules = [{ uid: 1001, role: 'reader' as const }, { gid: 998, role: 'admin' as const }, { gid: 50, role: 'reader' as const }];
  t.equal(roleOf(peer(1001, 1001), rules), 'reader');
  t.equal(roleOf(peer(1002, 998), rules), 'admin', 'primary group');
  t.equal(roleOf(peer(1002, 1002, [7, 998]), rules), 'admin', 'supplementary group');
  t.equal(roleOf(peer(1001, 1001, [998]), rules), 'admin', 'a reader uid in an admin group is admin');
  t.equal(roleOf(peer(1003, 1003, [50]), rules), 'reader');
  t.equal(roleOf(peer(0, 0), rules), undefined, 'with rules, root needs one too');
  t.equal(roleOf(peer(1004, 1004, [51]), rules), undefined);
});

t.test('readers may GET and HEAD only; everything else is a change', async (t) => {
  t.ok(mayRequest('reader', 'GET'));
  t.ok(mayRequest('reader', 'HEAD'));
  for (const method of ['PUT', 'POST', 'DELETE', 'PATCH']) {
    t.notOk(mayRequest('reader', method), method);
    t.ok(mayRequest('admin', method), method);
    t.ok(isMutating(method), method);
  }
  t.notOk(isMutating('GET'));
});
