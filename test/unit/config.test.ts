import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { ConfigError, EMBEDDED_DEFAULT_SOURCE, loadConfig, parseConfig } from '../../src/daemon/config.js';
import type { FilePoolConfig } from '../../src/pools/index.js';
import { backendNames } from '../../src/pools/index.js';
import { tempDir } from '../helpers/temp-dir.js';

// The example of docs/design.md "Processes, files, defaults", verbatim.
const DESIGN_EXAMPLE = `
[control]
socket = "/run/volagent/control.sock"   # ignored under systemd socket activation
allow = [{ uid = 0, role = "admin" }, { gid = 998, role = "admin" }, { uid = 1001, role = "reader" }, { gid = 1500, role = "tenant", tenant = "t1" }]

[catalog]
path = "/var/lib/volagent/catalog.db"

[nbd]
listen = ["unix:/run/volagent/nbd.sock", "tcp:127.0.0.1:10809"]
tls = { psk_file = "/etc/volagent/nbd.psk" }

[[pools]]
name = "fast"
backend = "file"                 # reflink when the filesystem can, else copy_file_range
path = "/srv/volagent/fast"
image_cache = { max_bytes = "200GiB", max_count = 50 }

[[pools]]
name = "thin0"
backend = "thin"                 # agent-owned dm-thin pool
data_device = "/dev/vdb"
metadata_device = "/dev/vdc"
block_size = "64KiB"
low_water = "10%"
`;

t.test('the embedded default runs under the working directory', async (t) => {
  const config = await loadConfig();
  t.same(config, {
    source: EMBEDDED_DEFAULT_SOURCE,
    control: { socket: path.resolve('var/control.sock'), allow: [] },
    catalog: { path: path.resolve('var/catalog.db') },
    nbd: { listen: [{ kind: 'unix', path: path.resolve('var/nbd.sock') }], allowList: false, plaintextTcp: false },
    pools: [{ name: 'default', backend: 'file', path: path.resolve('var/pools/default') }],
    internalTenant: 'volagent-internal',
    lockWaitMs: 2000,
    keepFinishedOperations: 1000,
  });
});

t.test("docs/design.md's example reads as documented", async (t) => {
  const config = parseConfig(DESIGN_EXAMPLE, '/etc/volagent/volagent.toml', '/etc/volagent');
  t.same(config.control.allow, [{ uid: 0, role: 'admin' }, { gid: 998, role: 'admin' }, { uid: 1001, role: 'reader' }, { gid: 1500, role: 'tenant', tenant: 't1' }]);
  t.same(config.nbd.listen, [{ kind: 'unix', path: '/run/volagent/nbd.sock' }, { kind: 'tcp', host: '127.0.0.1', port: 10809 }]);
  t.same(config.pools, [
    { name: 'fast', backend: 'file', path: '/srv/volagent/fast', imageCache: { maxBytes: 200 * 2 ** 30, maxCount: 50 } },
    {
      name: 'thin0', backend: 'thin', dataDevice: '/dev/vdb', metadataDevice: '/dev/vdc', blockSizeBytes: 65536, lowWaterPercent: 10,
      minFreePercent: 5, errorIfNoSpace: true, deviceDir: '/dev/volagent',
    },
  ]);
});

t.test('relative paths resolve against the config file directory', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'volagent.toml');
  await writeFile(file, '[catalog]\npath = "state/catalog.db"\n[[pools]]\nname = "p"\nbackend = "file"\npath = "pools/p"\n');
  const config = await loadConfig(file);
  t.equal(config.catalog.path, path.join(dir, 'state/catalog.db'));
  t.equal((config.pools[0] as FilePoolConfig).path, path.join(dir, 'pools/p'));
  t.equal(config.control.socket, '/run/volagent/control.sock', 'production default socket');
});

t.test('every error names the file and the key', async (t) => {
  const pool = '[[pools]]\nname = "p"\nbackend = "file"\npath = "/srv/p"\n';
  const cases: Array<[string, string]> = [
    ['[control]\nsocket = 5\n' + pool, 'f.toml: control.socket: must be a non-empty string'],
    ['[control]\nsockett = "/x"\n' + pool, 'f.toml: control.sockett: unknown key'],
    ['[control]\nallow = [{ uid = 0, role = "root" }]\n' + pool, 'f.toml: control.allow[0].role: must be "admin", "reader" or "tenant"'],
    ['[control]\nallow = [{ uid = 1001, role = "tenant" }]\n' + pool, 'f.toml: control.allow[0].tenant: is required for role "tenant" (the tenant the peer is bound to)'],
    ['[control]\nallow = [{ uid = 1001, role = "reader", tenant = "t1" }]\n' + pool, 'f.toml: control.allow[0].tenant: is only for role "tenant"'],
    ['[control]\nallow = [{ uid = 1001, role = "tenant", tenant = "../t" }]\n' + pool, 'f.toml: control.allow[0].tenant: must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'],
    ['[control]\nallow = [{ uid = 1001, role = "tenant", tenant = "volagent-internal" }]\n' + pool,
      'f.toml: control.allow[0].tenant: is the internal tenant (volagent-internal): only an admin acts as the internal tenant'],
    ['[control]\nallow = [{ gid = 7, role = "tenant", tenant = "ops" }]\n[agent]\ninternal_tenant = "ops"\n' + pool,
      'f.toml: control.allow[0].tenant: is the internal tenant (ops): only an admin acts as the internal tenant'],
    ['[control]\nallow = [{ uid = 0, gid = 0, role = "admin" }]\n' + pool, 'f.toml: control.allow[0]: needs exactly one of uid or gid'],
    ['[control]\nallow = [{ uid = -1, role = "admin" }]\n' + pool, 'f.toml: control.allow[0].uid: must be an integer from 0 to 4294967294'],
    ['[nbd]\nlisten = ["unix:@abstract"]\n' + pool, 'f.toml: nbd.listen[0]: "unix:@abstract": a unix address is a filesystem path (never abstract)'],
    ['[nbd]\nsocket_mode = 660\n' + pool, 'f.toml: nbd.socket_mode: must be a non-empty string'],
    ['[nbd]\nsocket_mode = "0668"\n' + pool, 'f.toml: nbd.socket_mode: must be an octal string of permission bits like "0660" (got "0668")'],
    ['[nbd]\nsocket_mode = "04770"\n' + pool, 'f.toml: nbd.socket_mode: must be an octal string of permission bits like "0660" (got "04770")'],
    ['[nbd]\nsocket_group = "no-such-group"\n' + pool, 'f.toml: nbd.socket_group: no group named "no-such-group" on this host'],
    ['[nbd]\nsocket_group = -1\n' + pool, 'f.toml: nbd.socket_group: must be an integer from 0 to 4294967294'],
    ['[nbd]\nsocket_group = "4294967295"\n' + pool, 'f.toml: nbd.socket_group: must be a group name or a gid from 0 to 4294967294'],
    ['[agent]\nkeep_finished_operations = -5\n' + pool, 'f.toml: agent.keep_finished_operations: must be an integer from 0 to 10000000'],
    ['[nbd]\nlisten = ["tcp:127.0.0.1:99999"]\n' + pool, 'f.toml: nbd.listen[0]: "tcp:127.0.0.1:99999": must be "unix:/path" or "tcp:host:port"'],
    ['', 'f.toml: pools: at least one pool is required'],
    [pool.replace('"file"', '"zfs"'), `f.toml: pools[0].backend: must be one of ${backendNames().map((name) => `"${name}"`).join(', ')} (got "zfs")`],
    [pool.replace('name = "p"', 'name = "../p"'), 'f.toml: pools[0].name: must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'],
    [pool + pool, 'f.toml: pools[1].name: duplicate pool name "p"'],
    [pool + 'max_image_bytes = "huge"\n', 'f.toml: pools[0].max_image_bytes: not a size: "huge" (use bytes or a unit like 64KiB, 10GiB)'],
    [pool + 'image_cache = { max_bytes = "lots" }\n', 'f.toml: pools[0].image_cache.max_bytes: not a size: "lots" (use bytes or a unit like 64KiB, 10GiB)'],
    ['[[pools]]\nname = "t"\nbackend = "thin"\ndata_device = "/dev/a"\nmetadata_device = "/dev/b"\nblock_size = "96KiB"\n',
      'f.toml: pools[0].block_size: must be a multiple of 64KiB from 64KiB to 1GiB (dm-thin data block size)'],
    ['[[pools]]\nname = "t"\nbackend = "thin"\ndata_device = "/dev/a"\nmetadata_device = "/dev/b"\nlow_water = "ten"\n',
      'f.toml: pools[0].low_water: must be a percentage like "10%"'],
    ['[[pools]]\nname = "t"\nbackend = "thin"\nmetadata_device = "/dev/b"\n', 'f.toml: pools[0].data_device: is required'],
    ['[[pools]]\nname = "t"\nbackend = "thin"\ndata_device = "/dev/a"\nmetadata_device = "/dev/b"\nerror_if_no_space = "yes"\n',
      'f.toml: pools[0].error_if_no_space: must be true or false'],
    ['[[pools]]\nname = "t"\nbackend = "thin"\ndata_device = "/dev/a"\nmetadata_device = "/dev/b"\nmin_free = "120%"\n',
      'f.toml: pools[0].min_free: must be a percentage like "10%"'],
    [pool + 'colour = "blue"\n', 'f.toml: pools[0].colour: unknown key'],
    ['surprise = 1\n' + pool, 'f.toml: surprise: unknown key'],
  ];
  for (const [text, message] of cases) {
    t.throws(() => parseConfig(text, 'f.toml', '/', () => undefined), { name: 'ConfigError', message }, message);
  }
  t.type(new ConfigError('f', 'k', 'p'), Error);
});

t.test('syntax errors and unreadable files are ConfigErrors naming the file', async (t) => {
  t.throws(() => parseConfig('[control\n', 'bad.toml', '/'), { name: 'ConfigError', message: /^bad\.toml: not valid TOML: / });
  await t.rejects(loadConfig('/nonexistent/volagent.toml'), { name: 'ConfigError', message: /^\/nonexistent\/volagent\.toml: cannot read: ENOENT/ });
});

t.test('thin pool settings: min_free, error_if_no_space and device_dir, with their defaults', async (t) => {
  const thin = '[[pools]]\nname = "t"\nbackend = "thin"\ndata_device = "d.img"\nmetadata_device = "/dev/b"\n';
  t.match(parseConfig(thin, '/etc/v/f.toml', '/etc/v').pools[0], {
    dataDevice: '/etc/v/d.img', minFreePercent: 5, errorIfNoSpace: true, deviceDir: '/dev/volagent', lowWaterPercent: 10,
  }, 'defaults; a relative device path resolves against the config directory');
  t.match(parseConfig(`${thin}min_free = "0%"\nerror_if_no_space = false\ndevice_dir = "/run/v/dev"\n`, 'f.toml', '/').pools[0], {
    minFreePercent: 0, errorIfNoSpace: false, deviceDir: '/run/v/dev',
  });
});

t.test('[nbd]: listen addresses (port 0 lets the kernel choose) and allow_list', async (t) => {
  const pool = '[[pools]]\nname = "p"\nbackend = "file"\npath = "/p"\n';
  const config = parseConfig(`[nbd]\nlisten = ["tcp:127.0.0.1:0", "tcp:[::1]:10809", "tcp:[fe80::1%veth0]:10809"]\nallow_list = true\nplaintext_tcp = true\n${pool}`, 'f.toml', '/');
  t.same(config.nbd, {
    listen: [{ kind: 'tcp', host: '127.0.0.1', port: 0 }, { kind: 'tcp', host: '::1', port: 10809 }, { kind: 'tcp', host: 'fe80::1%veth0', port: 10809 }],
    allowList: true, plaintextTcp: true,
  });
});

t.test('[nbd] tls: PSK or X.509 (paths resolved against the file\'s directory); TCP without TLS needs plaintext_tcp', async (t) => {
  const pool = '[[pools]]\nname = "p"\nbackend = "file"\npath = "/p"\n';
  const listen = 'listen = ["unix:/run/n.sock", "tcp:[::1]:10809"]\n';
  t.same(parseConfig(`[nbd]\n${listen}tls = { psk_file = "keys.psk" }\n${pool}`, '/etc/v/f.toml', '/etc/v').nbd.tls, { kind: 'psk', pskFile: '/etc/v/keys.psk' });
  t.same(parseConfig(`[nbd]\n${listen}tls = { cert_file = "c.pem", key_file = "/k/k.pem", ca_file = "ca.pem" }\n${pool}`, '/etc/v/f.toml', '/etc/v').nbd.tls,
    { kind: 'x509', certFile: '/etc/v/c.pem', keyFile: '/k/k.pem', caFile: '/etc/v/ca.pem' });
  t.same(parseConfig(`[nbd]\nlisten = ["unix:/run/n.sock"]\n${pool}`, 'f.toml', '/').nbd, { listen: [{ kind: 'unix', path: '/run/n.sock' }], allowList: false, plaintextTcp: false });
  const refused: Array<[string, string]> = [
    [`[nbd]\n${listen}${pool}`, 'f.toml: nbd.listen[1]: a TCP address needs [nbd] tls (psk_file, or cert_file, key_file and ca_file), or plaintext_tcp = true to serve exports unencrypted (one-host development)'],
    [`[nbd]\n${listen}tls = { psk_file = "k", cert_file = "c" }\n${pool}`, 'f.toml: nbd.tls.cert_file: cannot be combined with psk_file: TLS is either PSK or X.509'],
    [`[nbd]\n${listen}tls = { cert_file = "c", ca_file = "a" }\n${pool}`, 'f.toml: nbd.tls.key_file: is required'],
    [`[nbd]\n${listen}tls = {}\n${pool}`, 'f.toml: nbd.tls.psk_file: is required, or cert_file, key_file and ca_file (X.509)'],
    [`[nbd]\n${listen}tls = { psk_file = "k", verify = false }\n${pool}`, 'f.toml: nbd.tls.verify: unknown key'],
    [`[nbd]\n${listen}tls = { psk_file = "k" }\nplaintext_tcp = true\n${pool}`, 'f.toml: nbd.plaintext_tcp: contradicts [nbd] tls: with tls set, every TCP address requires TLS'],
  ];
  for (const [text, message] of refused) t.throws(() => parseConfig(text, 'f.toml', '/'), { message }, message);
});

t.test('[nbd] socket_mode and socket_group: an octal string; a gid, or a name resolved at start-up (getent)', async (t) => {
  const pool = '[[pools]]\nname = "p"\nbackend = "file"\npath = "/p"\n';
  const asked: string[] = [];
  const resolve = (name: string): number | undefined => {
    asked.push(name);
    return name === 'kvm' ? 104 : undefined;
  };
  t.same(parseConfig(`[nbd]\nsocket_mode = "0640"\nsocket_group = "kvm"\n${pool}`, 'f.toml', '/', resolve).nbd, { listen: [], allowList: false, plaintextTcp: false, socketMode: 0o640, socketGroup: 104 });
  t.same(asked, ['kvm'], 'the name is resolved once');
  t.same(parseConfig(`[nbd]\nsocket_mode = "660"\nsocket_group = 4242\n${pool}`, 'f.toml', '/', resolve).nbd, { listen: [], allowList: false, plaintextTcp: false, socketMode: 0o660, socketGroup: 4242 });
  t.equal(parseConfig(`[nbd]\nsocket_group = "4243"\n${pool}`, 'f.toml', '/', resolve).nbd.socketGroup, 4243, 'a numeric string is a gid, not looked up');
  t.same(asked, ['kvm']);
  t.same(parseConfig(pool, 'f.toml', '/', resolve).nbd, { listen: [], allowList: false, plaintextTcp: false }, 'neither set: absent (the agent binds with 0660 and its own group)');
  t.equal(parseConfig(`[nbd]\nsocket_group = "root"\n${pool}`, 'f.toml', '/').nbd.socketGroup, 0, 'the default resolver asks getent');
});

t.test('[agent] keep_finished_operations: 1000 by default', async (t) => {
  const pool = '[[pools]]\nname = "p"\nbackend = "file"\npath = "/p"\n';
  t.equal(parseConfig(pool, 'f.toml', '/').keepFinishedOperations, 1000);
  t.equal(parseConfig(`[agent]\nkeep_finished_operations = 0\n${pool}`, 'f.toml', '/').keepFinishedOperations, 0);
});

t.test('max_image_bytes is a size per pool', async (t) => {
  const config = parseConfig('[[pools]]\nname = "p"\nbackend = "file"\npath = "/p"\nmax_image_bytes = "64GiB"\n', 'f.toml', '/');
  t.equal(config.pools[0]!.maxImageBytes, 64 * 2 ** 30);
  t.equal(parseConfig('[[pools]]\nname = "p"\nbackend = "file"\npath = "/p"\n', 'f.toml', '/').pools[0]!.maxImageBytes, undefined, 'no limit when absent');
});
