// planReload: what a SIGHUP may change (pools added) and what it refuses.
import t from 'tap';

import { parseConfig } from '../../src/daemon/config.js';
import { planReload } from '../../src/daemon/reload.js';

const config = (text: string) => parseConfig(text, '/etc/volagent/volagent.toml', '/etc/volagent');
const filePool = (name: string, dir = `/srv/${name}`) => `[[pools]]\nname = "${name}"\nbackend = "file"\npath = "${dir}"\n`;

t.test('added pools are applied; nothing else differs', async (t) => {
  const plan = planReload(config(filePool('a')), config(filePool('a') + filePool('b')));
  t.same(plan.added.map((p) => p.name), ['b']);
  t.same(plan.refused, []);
});

t.test('a changed or removed pool, and other sections, are refused with the reason', async (t) => {
  const before = config(`[nbd]\nlisten = ["unix:/run/volagent/nbd.sock"]\n${filePool('a')}${filePool('b')}`);
  const after = config(`[nbd]\nlisten = ["tcp:127.0.0.1:10809"]\nplaintext_tcp = true\n[agent]\nlock_wait_ms = 10\n${filePool('a', '/srv/other')}${filePool('c')}`);
  const plan = planReload(before, after);
  t.same(plan.added.map((p) => p.name), ['c']);
  t.same(plan.refused, [
    'pool a changed: changing a pool needs a restart; it is served as before',
    'pool b is no longer in the config: removing a pool needs a restart; it is still served',
    '[nbd] changed: it needs a restart; the running settings stay',
    '[agent] changed: it needs a restart; the running settings stay',
  ]);
});

t.test('the same config: nothing to do', async (t) => {
  const text = filePool('a');
  t.same(planReload(config(text), config(text)), { added: [], refused: [] });
});
