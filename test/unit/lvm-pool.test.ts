// The lvm backend's pure parts: its config keys (through the daemon's reader),
// the LV names it gives objects and temporaries, and lvm2's JSON reports.
import t from 'tap';

import { poolsDropIn } from '../../src/cli/commands/install-service.js';
import { parseConfig } from '../../src/daemon/config.js';
import { bytesOf, parseReport } from '../../src/pools/lvm/lvm-command.js';
import { lvDmName } from '../../src/pools/lvm/lvm-devices.js';
import { decodeObjectName, encodeObjectName, fitsLvm, lvNameOf, parseLvName, poolTag } from '../../src/pools/lvm/lvm-names.js';

const LVM = '[[pools]]\nname = "l0"\nbackend = "lvm"\nvg = "vg0"\nthin_pool = "tp"\n';

t.test('lvm pool config: vg and thin_pool, low_water and min_free with their defaults, the keys every pool has', async (t) => {
  t.same(parseConfig(LVM, 'f.toml', '/').pools[0], { name: 'l0', backend: 'lvm', vg: 'vg0', thinPool: 'tp', lowWaterPercent: 10, minFreePercent: 5 });
  t.same(parseConfig(`${LVM}low_water = "20%"\nmin_free = "0%"\nmax_image_bytes = "1GiB"\nimage_cache = { max_count = 3 }\n`, 'f.toml', '/').pools[0], {
    name: 'l0', backend: 'lvm', vg: 'vg0', thinPool: 'tp', lowWaterPercent: 20, minFreePercent: 0, maxImageBytes: 2 ** 30, imageCache: { maxCount: 3 },
  });
  const cases: Array<[string, string]> = [
    ['[[pools]]\nname = "l0"\nbackend = "lvm"\nthin_pool = "tp"\n', 'f.toml: pools[0].vg: is required'],
    ['[[pools]]\nname = "l0"\nbackend = "lvm"\nvg = "vg0"\n', 'f.toml: pools[0].thin_pool: is required'],
    [LVM.replace('"vg0"', '"-vg"'), 'f.toml: pools[0].vg: must be an LVM volume group name ([A-Za-z0-9+_.-], not starting with "-")'],
    [LVM.replace('"tp"', '"a/b"'), 'f.toml: pools[0].thin_pool: must be an LVM logical volume name ([A-Za-z0-9+_.-], not starting with "-")'],
    [`${LVM}min_free = "x"\n`, 'f.toml: pools[0].min_free: must be a percentage like "10%"'],
    [`${LVM}data_device = "/dev/a"\n`, 'f.toml: pools[0].data_device: unknown key'],
  ];
  for (const [text, message] of cases) t.throws(() => parseConfig(text, 'f.toml', '/', () => undefined), { name: 'ConfigError', message }, message);
});

t.test("LV names: objects under va.<pool>., '@' and '_' encoded so no reserved word can appear; temporaries under vt.<pool>.", async (t) => {
  t.equal(lvNameOf('p', 'object', 'volume-1@snap_2'), 'va.p.volume-1+asnap+u2');
  t.equal(lvNameOf('p', 'revert-new', 'a_tdata'), 'vr.p.a+utdata', 'no "_tdata" left in the name');
  t.equal(lvNameOf('p', 'temporary', '0123456789ab'), 'vt.p.0123456789ab');
  for (const name of ['v1', 'volume-1@snap_2', 'a.b_c-d', 'x@y']) t.equal(decodeObjectName(encodeObjectName(name)), name, name);
  t.same(parseLvName('p', 'va.p.volume-1+asnap+u2'), { role: 'object', name: 'volume-1@snap_2' });
  t.same(parseLvName('p', 'vo.p.v1'), { role: 'revert-old', name: 'v1' });
  t.same(parseLvName('p', 'vt.p.0123456789ab'), { role: 'temporary', name: '0123456789ab' });
  t.equal(parseLvName('p', 'vt.p.nothex'), undefined, 'a temporary name is 12 hex digits');
  t.equal(parseLvName('p', 'va.q.v1'), undefined, "another pool's");
  t.equal(parseLvName('p', 'other'), undefined, 'no prefix');
  t.equal(parseLvName('p', 'va.p.a_b'), undefined, "a raw '_' is no encoding of ours");
  t.equal(parseLvName('p', 'va.p.+x'), undefined, 'an unknown escape');
  t.equal(poolTag('p'), 'volagent.pool.p');
  t.ok(fitsLvm('vg', 'a'.repeat(124)));
  t.notOk(fitsLvm('vg', 'a'.repeat(128)), 'past 127 characters');
  t.ok(fitsLvm('vg', '-'.repeat(62)), "the device-mapper name doubles each '-': vg- and 62 of them are 127 characters");
  t.notOk(fitsLvm('vg', '-'.repeat(63)), 'and 63 are 129');
});

t.test("device-mapper names of LVs: vg-lv, each '-' within a name doubled, a layer after another '-'", async (t) => {
  t.equal(lvDmName('vgtest', 'va.lvm0.v1'), 'vgtest-va.lvm0.v1');
  t.equal(lvDmName('vg-a', 'va.p.volume-1+asnap'), 'vg--a-va.p.volume--1+asnap');
  t.equal(lvDmName('vgtest', 'tp', 'tpool'), 'vgtest-tp-tpool');
  t.equal(lvDmName('vg-a', 'thin-pool', 'tpool'), 'vg--a-thin--pool-tpool');
  t.equal(lvDmName('vgtest', 'tp_tmeta'), 'vgtest-tp_tmeta', "hidden LVs keep their '_'");
});

t.test("lvm2's JSON reports: rows of the section, sizes as bytes, and not a report when stdout is not one", async (t) => {
  const stdout = '  {\n      "report": [\n          {\n              "lv": [\n                  {"lv_name":"a", "lv_size":"12582912"},\n                  {"lv_name":"b", "lv_size":""}\n              ]\n          }\n      ]\n  }\n';
  const rows = parseReport(stdout, 'lv')!;
  t.same(rows, [{ lv_name: 'a', lv_size: '12582912' }, { lv_name: 'b', lv_size: '' }]);
  t.equal(bytesOf(rows[0]!.lv_size), 12582912);
  t.ok(Number.isNaN(bytesOf(rows[1]!.lv_size)), 'an empty column is NaN, never 0');
  t.equal(parseReport('', 'lv'), undefined);
  t.equal(parseReport('{"x":1}', 'lv'), undefined);
  t.same(parseReport('{"report":[{"vg":[]}]}', 'lv'), []);
});

t.test("install-service's drop-in for an lvm pool: lvm2's state under /etc/lvm and /run, block devices by group, once for two pools", async (t) => {
  const config = parseConfig(`${LVM}${LVM.replace('"l0"', '"l1"')}`, 'f.toml', '/');
  t.equal(poolsDropIn(config), [
    '# Written by `volagent install-service` from the config; run it again after changing pools.', '[Service]',
    'ReadWritePaths=-/etc/lvm', 'ReadWritePaths=-/run/lvm', 'ReadWritePaths=-/run/lock/lvm', 'DeviceAllow=block-* rw', '',
  ].join('\n'));
});
