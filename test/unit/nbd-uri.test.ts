// NBD URIs (NetworkBlockDevice/nbd doc/uri.md): the four schemes, hosts
// (names, IPv4, bracketed IPv6 with an RFC 6874 zone), ports, export names
// percent-decoded, the unix socket parameter; every malformed URI refused
// with an NbdUriError that names the fault; and formatNbdUri as the inverse
// of parseNbdUri (fast-check, seeded).
import { isDeepStrictEqual } from 'node:util';

import fc from 'fast-check';
import t from 'tap';

import { formatNbdUri, NbdUriError, parseNbdUri } from '../../src/remote/nbd-uri.js';
import type { NbdUri } from '../../src/remote/nbd-uri.js';

const SEED = Number(process.env.VOLAGENT_FUZZ_SEED ?? 20261207);

t.test('good URIs: transport, TLS, host, port, export name as uri.md tabulates them', async (t) => {
  const cases: Array<[string, NbdUri]> = [
    ['nbd://example.com/disk', { transport: 'tcp', tls: false, host: 'example.com', port: 10809, exportName: 'disk' }],
    ['nbd://example.com/', { transport: 'tcp', tls: false, host: 'example.com', port: 10809, exportName: '' }],
    ['nbd://example.com', { transport: 'tcp', tls: false, host: 'example.com', port: 10809, exportName: '' }],
    ['nbd://example.com//disk', { transport: 'tcp', tls: false, host: 'example.com', port: 10809, exportName: '/disk' }],
    ['nbd://example.com/hello%20world', { transport: 'tcp', tls: false, host: 'example.com', port: 10809, exportName: 'hello world' }],
    ['nbds://10.1.2.3:10900/vol-1', { transport: 'tcp', tls: true, host: '10.1.2.3', port: 10900, exportName: 'vol-1' }],
    ['NBDS://Host-1.example:1/x', { transport: 'tcp', tls: true, host: 'Host-1.example', port: 1, exportName: 'x' }],
    ['nbd://127.0.0.1:/x', { transport: 'tcp', tls: false, host: '127.0.0.1', port: 10809, exportName: 'x' }],
    ['nbd://[::1]:65535/x', { transport: 'tcp', tls: false, host: '::1', port: 65535, exportName: 'x' }],
    ['nbds://[fe80::1%25eth0]/x', { transport: 'tcp', tls: true, host: 'fe80::1%eth0', port: 10809, exportName: 'x' }],
    ['nbds://[fe80::a:b%25veth%2D0]:10810/x', { transport: 'tcp', tls: true, host: 'fe80::a:b%veth-0', port: 10810, exportName: 'x' }],
    ['nbds://alice@h/x', { transport: 'tcp', tls: true, host: 'h', port: 10809, exportName: 'x', user: 'alice' }],
    ['nbds://h/x?tls-hostname=storage-1.example', { transport: 'tcp', tls: true, host: 'h', port: 10809, exportName: 'x', tlsHostname: 'storage-1.example' }],
    ['nbd://h/%E2%82%AC%2Fv%3Fq', { transport: 'tcp', tls: false, host: 'h', port: 10809, exportName: '€/v?q' }],
    ['nbd+unix:///disk?socket=nbd.sock', { transport: 'unix', tls: false, socket: 'nbd.sock', exportName: 'disk' }],
    ['nbd+unix:///?socket=/run/volagent/nbd.sock', { transport: 'unix', tls: false, socket: '/run/volagent/nbd.sock', exportName: '' }],
    ['nbds+unix:///vol?socket=%2Ftmp%2Fa%20b.sock', { transport: 'unix', tls: true, socket: '/tmp/a b.sock', exportName: 'vol' }],
    ['nbd+unix:///?socket=%00/abstract', { transport: 'unix', tls: false, socket: '\0/abstract', exportName: '' }],
  ];
  for (const [uri, expected] of cases) t.same(parseNbdUri(uri), expected, uri);
});

t.test('bad URIs: NbdUriError (code ERR_NBD_URI) with a message that names the fault', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['', /not a URI/],
    ['example.com/disk', /not a URI/],
    ['http://example.com/disk', /scheme "http" is not one of nbd, nbds, nbd\+unix, nbds\+unix/],
    ['nbd:///disk', /a TCP URI needs a host/],
    ['nbd:/disk', /a nbd URI needs a host/],
    ['nbd:disk', /the path must start with "\/"/],
    ['nbd://example.com:0/x', /port 0 is outside 1-65535/],
    ['nbd://example.com:65536/x', /port 65536 is outside 1-65535/],
    ['nbd://example.com:http/x', /port "http" is not a number/],
    ['nbd://999.1.2.3/x', /"999.1.2.3" is not an IPv4 address/],
    ['nbd://1.2.3/x', /"1.2.3" is not an IPv4 address/],
    ['nbd://exa mple/x', /is not a host name or IP address/],
    ['nbd://fe80::1/x', /"fe80::1": an IPv6 address is written in brackets/],
    ['nbd://[fe80::1/x', /opened with "\[" is not closed/],
    ['nbd://[not-v6]/x', /"not-v6" in brackets is not an IPv6 address/],
    ['nbd://[fe80::1%eth0]/x', /zone is written "%25"/],
    ['nbd://[fe80::1%25]/x', /IPv6 zone "" is empty/],
    ['nbd://[::1]x/x', /only ":port" may follow/],
    ['nbd://h/a b', /export name has a character that must be percent-encoded/],
    ['nbd://h/%zz', /export name has a character that must be percent-encoded/],
    ['nbd://h/%C3', /export name is not valid percent-encoded UTF-8/],
    ['nbd://h/a%00b', /export name contains NUL/],
    [`nbd://h/${'a'.repeat(4097)}`, /export name is longer than 4096 bytes/],
    ['nbd://h/x#frag', /fragment/],
    ['nbd://u:pw@h/x', /password in the URI is not supported/],
    ['nbd://@h/x', /user name before "@" is empty/],
    ['nbd://h/x?socket=/s', /"socket=" is for the nbd\+unix and nbds\+unix schemes, not nbd/],
    ['nbd://h/x?tls-hostname=h', /"tls-hostname=" needs a TLS scheme/],
    ['nbds://h/x?tls-hostname=bad%20name', /tls-hostname "bad name" is not a host name/],
    ['nbd://h/x?tls-verify-peer=0', /query parameter "tls-verify-peer" is not supported \(known: socket, tls-hostname\)/],
    ['nbd://h/x?flag', /query parameter "flag" has no "=value"/],
    ['nbd+unix:///x?socket=a&socket=b', /query parameter "socket" is given twice/],
    ['nbd+unix:///x', /a nbd\+unix URI needs "\?socket=PATH"/],
    ['nbds+unix:///x?socket=', /a nbds\+unix URI needs "\?socket=PATH"/],
    ['nbd+unix://host/x?socket=/s', /a nbd\+unix URI has no host/],
    ['nbd+unix:///x?socket=/a%00b', /socket path contains NUL/],
    [`nbd+unix:///x?socket=/${'s'.repeat(107)}`, /socket path is longer than 107 bytes/],
  ];
  for (const [uri, message] of cases) {
    t.throws(() => parseNbdUri(uri), { name: 'NbdUriError', code: 'ERR_NBD_URI', message }, JSON.stringify(uri.slice(0, 60)));
    try {
      parseNbdUri(uri);
    } catch (error) {
      t.ok(error instanceof NbdUriError && error.message.startsWith(`invalid NBD URI ${JSON.stringify(uri)}: `), 'the message quotes the URI');
    }
  }
});

t.test('formatNbdUri: canonical forms (default port left out, IPv6 bracketed with %25 before the zone)', async (t) => {
  t.equal(formatNbdUri({ transport: 'tcp', tls: false, host: 'h', port: 10809, exportName: 'disk' }), 'nbd://h/disk');
  t.equal(formatNbdUri({ transport: 'tcp', tls: true, host: 'fe80::1%eth0', port: 10900, exportName: 'a b/c' }), 'nbds://[fe80::1%25eth0]:10900/a%20b/c');
  t.equal(formatNbdUri({ transport: 'tcp', tls: true, host: '::1', port: 10809, exportName: '', user: 'alice', tlsHostname: 'x.example' }), 'nbds://alice@[::1]/?tls-hostname=x.example');
  t.equal(formatNbdUri({ transport: 'unix', tls: false, socket: '/run/a b.sock', exportName: 'v?1' }), 'nbd+unix:///v%3F1?socket=%2Frun%2Fa%20b.sock');
  t.equal(formatNbdUri({ transport: 'unix', tls: true, socket: '\0abs', exportName: 'x' }), 'nbds+unix:///x?socket=%00abs');
});

t.test(`parseNbdUri(formatNbdUri(u)) is u (fast-check, seed ${SEED})`, async (t) => {
  const exportName = fc.fullUnicodeString({ maxLength: 40 }).filter((s) => !s.includes('\0'));
  const label = fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?$/);
  const host = fc.oneof(
    fc.array(label, { minLength: 1, maxLength: 3 }).map((labels) => labels.join('.')).filter((h) => !/^[0-9.]+$/.test(h)),
    fc.ipV4(),
    fc.ipV6(),
    fc.tuple(fc.constantFrom('fe80::1', 'fe80::abcd:1'), fc.stringMatching(/^[A-Za-z0-9._~-]{1,8}$/)).map(([a, zone]) => `${a}%${zone}`),
  );
  const tcp = fc.record({
    transport: fc.constant('tcp' as const), tls: fc.boolean(), host, port: fc.integer({ min: 1, max: 65535 }), exportName,
  });
  const unix = fc.record({
    transport: fc.constant('unix' as const), tls: fc.boolean(),
    socket: fc.fullUnicodeString({ minLength: 1, maxLength: 30 }).filter((s) => !s.includes('\0') && Buffer.byteLength(s) <= 107), exportName,
  });
  let runs = 0;
  fc.assert(fc.property(fc.oneof(tcp, unix), (uri) => {
    runs++;
    const text = formatNbdUri(uri);
    const back = parseNbdUri(text);
    // fast-check's IPv6 addresses come in forms node:net accepts; the round trip keeps them as written.
    if (!isDeepStrictEqual(back, uri)) throw new Error(`${text} parsed as ${JSON.stringify(back)}, not ${JSON.stringify(uri)}`);
  }), { seed: SEED, numRuns: 2000 });
  t.equal(runs, 2000, '2000 URIs made and parsed back');
});
