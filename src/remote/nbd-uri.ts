// NBD URIs (NetworkBlockDevice/nbd doc/uri.md, on RFC 3986): `nbd://` and
// `nbds://` name an export on a TCP host, `nbd+unix://` and `nbds+unix://`
// one behind a unix socket (`?socket=`). The `s` schemes require TLS: a
// client must fail rather than connect without it. The export name is the
// path without its leading `/`, percent-decoded. Query parameters this client
// does not understand are refused, as uri.md asks ("SHOULD be diagnosed").
import { isIPv4, isIPv6 } from 'node:net';

/** IANA's NBD port, the default of the TCP schemes. */
export const NBD_DEFAULT_PORT = 10809;

/** Strings of the protocol (export names) are at most 4096 bytes of UTF-8 without NUL. */
const MAX_STRING_BYTES = 4096;
/** sun_path holds 108 bytes with its terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

interface NbdUriCommon {
  /** `nbds` / `nbds+unix`: the connection must be TLS, never plaintext. */
  tls: boolean;
  /** The export's name as sent in NBD_OPT_GO ("" is the server's default export). */
  exportName: string;
  /** The userinfo of the authority (libnbd takes it as the TLS-PSK identity). */
  user?: string;
  /** `?tls-hostname=`: the name the server's certificate is checked against instead of the host. */
  tlsHostname?: string;
}

export interface NbdTcpUri extends NbdUriCommon {
  transport: 'tcp';
  /** A DNS name, an IPv4 address, or an IPv6 address without brackets (a zone as `%zone`, as node:net takes it). */
  host: string;
  port: number;
}

export interface NbdUnixUri extends NbdUriCommon {
  transport: 'unix';
  /** The socket's path (a leading NUL: Linux's abstract namespace). */
  socket: string;
}

export type NbdUri = NbdTcpUri | NbdUnixUri;

export class NbdUriError extends Error {
  override name = 'NbdUriError';
  readonly code = 'ERR_NBD_URI';
}

const SCHEMES: Record<string, { transport: 'tcp' | 'unix'; tls: boolean }> = {
  nbd: { transport: 'tcp', tls: false },
  nbds: { transport: 'tcp', tls: true },
  'nbd+unix': { transport: 'unix', tls: false },
  'nbds+unix': { transport: 'unix', tls: true },
};

/** RFC 3986 appendix B, with the authority required to be absent or `//…`. */
const URI_PARTS = /^([A-Za-z][A-Za-z0-9+.-]*):(?:\/\/([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$/s;
/** pchar (unreserved, pct-encoded, sub-delims, ':' '@') and '/'. */
const PATH_CHARS = /^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$/;
/** Query characters, less the '&' and '=' that separate parameters. */
const QUERY_VALUE_CHARS = /^(?:[A-Za-z0-9\-._~!$'()*+,;:@/?]|%[0-9A-Fa-f]{2})*$/;
const USERINFO_CHARS = /^(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*$/;
/** A host name: DNS labels (letters, digits, '-', '_'), dot-separated. */
const HOST_NAME = /^[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/;
/** RFC 6874 ZoneID: unreserved or pct-encoded. */
const ZONE_CHARS = /^(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})+$/;

function fail(uri: string, what: string): never {
  throw new NbdUriError(`invalid NBD URI ${JSON.stringify(uri)}: ${what}`);
}

function decode(uri: string, raw: string, part: string, allowed: RegExp): string {
  if (!allowed.test(raw)) fail(uri, `the ${part} has a character that must be percent-encoded`);
  try {
    return decodeURIComponent(raw);
  } catch {
    return fail(uri, `the ${part} is not valid percent-encoded UTF-8`);
  }
}

function parseHostPort(uri: string, hostport: string): { host: string; port: number } {
  let host: string;
  let rest: string;
  if (hostport.startsWith('[')) {
    const close = hostport.indexOf(']');
    if (close < 0) fail(uri, 'an IPv6 address opened with "[" is not closed with "]"');
    const literal = hostport.slice(1, close);
    rest = hostport.slice(close + 1);
    const zoneAt = literal.indexOf('%');
    const address = zoneAt < 0 ? literal : literal.slice(0, zoneAt);
    if (!isIPv6(address)) fail(uri, `${JSON.stringify(address)} in brackets is not an IPv6 address`);
    if (zoneAt < 0) host = address;
    else {
      // RFC 6874: the '%' before a zone is itself written "%25".
      if (!literal.startsWith('%25', zoneAt)) fail(uri, 'an IPv6 zone is written "%25" then the zone (RFC 6874), e.g. [fe80::1%25eth0]');
      const zone = literal.slice(zoneAt + 3);
      if (!ZONE_CHARS.test(zone)) fail(uri, `the IPv6 zone ${JSON.stringify(zone)} is empty or has a character that must be percent-encoded`);
      host = `${address}%${decode(uri, zone, 'IPv6 zone', ZONE_CHARS)}`;
    }
    if (rest !== '' && !rest.startsWith(':')) fail(uri, 'only ":port" may follow the bracketed IPv6 address');
  } else {
    if (hostport.indexOf(':') !== hostport.lastIndexOf(':')) fail(uri, `${JSON.stringify(hostport)}: an IPv6 address is written in brackets, e.g. nbd://[fe80::1%25eth0]:10809/EXPORT`);
    const colon = hostport.indexOf(':');
    host = colon < 0 ? hostport : hostport.slice(0, colon);
    rest = colon < 0 ? '' : hostport.slice(colon);
    if (host === '') fail(uri, 'a TCP URI needs a host (nbd://HOST[:PORT]/EXPORT)');
    if (/^[0-9.]+$/.test(host)) {
      if (!isIPv4(host)) fail(uri, `${JSON.stringify(host)} is not an IPv4 address`);
    } else if (!HOST_NAME.test(host)) {
      fail(uri, `${JSON.stringify(host)} is not a host name or IP address (an IPv6 address is written in brackets)`);
    }
  }
  let port = NBD_DEFAULT_PORT;
  // RFC 3986 3.2.3: an empty port (a bare ":") is the scheme's default.
  if (rest.length > 1) {
    const digits = rest.slice(1);
    if (!/^[0-9]+$/.test(digits)) fail(uri, `the port ${JSON.stringify(digits)} is not a number`);
    port = Number(digits);
    if (port < 1 || port > 65535) fail(uri, `the port ${digits} is outside 1-65535`);
  }
  return { host, port };
}

function checkProtocolString(uri: string, value: string, what: string): void {
  if (value.includes('\0')) fail(uri, `the ${what} contains NUL`);
  if (Buffer.byteLength(value) > MAX_STRING_BYTES) fail(uri, `the ${what} is longer than ${MAX_STRING_BYTES} bytes`);
}

/** Parses an NBD URI; a malformed one throws NbdUriError naming what is wrong. */
export function parseNbdUri(uri: string): NbdUri {
  const parts = URI_PARTS.exec(uri);
  if (!parts) fail(uri, 'not a URI (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)');
  const [, rawScheme, authority, rawPath, rawQuery, fragment] = parts;
  const scheme = rawScheme!.toLowerCase();
  const kind = SCHEMES[scheme];
  if (!kind) fail(uri, `the scheme ${JSON.stringify(rawScheme)} is not one of nbd, nbds, nbd+unix, nbds+unix`);
  if (fragment !== undefined) fail(uri, 'a fragment ("#...") has no meaning in an NBD URI');
  const path = rawPath!;
  if (path !== '' && !path.startsWith('/')) fail(uri, 'the path must start with "/"');
  const exportName = decode(uri, path.slice(1), 'export name', PATH_CHARS);
  checkProtocolString(uri, exportName, 'export name');

  let user: string | undefined;
  let hostport = authority ?? '';
  const at = hostport.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = hostport.slice(0, at);
    hostport = hostport.slice(at + 1);
    if (userinfo.includes(':')) fail(uri, 'a password in the URI is not supported (use the TLS options)');
    user = decode(uri, userinfo, 'user name', USERINFO_CHARS);
    if (user === '') fail(uri, 'the user name before "@" is empty');
  }

  const query = new Map<string, string>();
  if (rawQuery !== undefined && rawQuery !== '') {
    for (const pair of rawQuery.split('&')) {
      const eq = pair.indexOf('=');
      if (eq < 0) fail(uri, `the query parameter ${JSON.stringify(pair)} has no "=value"`);
      const key = decode(uri, pair.slice(0, eq), 'query', QUERY_VALUE_CHARS);
      const value = decode(uri, pair.slice(eq + 1), `query parameter ${key}`, QUERY_VALUE_CHARS);
      if (query.has(key)) fail(uri, `the query parameter ${JSON.stringify(key)} is given twice`);
      query.set(key, value);
    }
  }
  for (const key of query.keys()) {
    if (key === 'socket') {
      if (kind.transport !== 'unix') fail(uri, `"socket=" is for the nbd+unix and nbds+unix schemes, not ${scheme}`);
    } else if (key !== 'tls-hostname') {
      fail(uri, `the query parameter ${JSON.stringify(key)} is not supported (known: socket, tls-hostname)`);
    }
  }
  const tlsHostname = query.get('tls-hostname');
  if (tlsHostname !== undefined && !kind.tls) fail(uri, `"tls-hostname=" needs a TLS scheme (nbds, nbds+unix), not ${scheme}`);
  if (tlsHostname !== undefined && !HOST_NAME.test(tlsHostname) && !isIPv4(tlsHostname) && !isIPv6(tlsHostname)) {
    fail(uri, `the tls-hostname ${JSON.stringify(tlsHostname)} is not a host name or IP address`);
  }
  const common = {
    tls: kind.tls,
    exportName,
    ...(user !== undefined ? { user } : {}),
    ...(tlsHostname !== undefined ? { tlsHostname } : {}),
  };

  if (kind.transport === 'unix') {
    if (hostport !== '' || user !== undefined) fail(uri, `a ${scheme} URI has no host (write ${scheme}:///EXPORT?socket=PATH)`);
    const socket = query.get('socket');
    if (socket === undefined || socket === '') fail(uri, `a ${scheme} URI needs "?socket=PATH"`);
    if (socket.indexOf('\0', 1) >= 0) fail(uri, 'the socket path contains NUL (only a leading one, for the abstract namespace, is allowed)');
    if (Buffer.byteLength(socket) > MAX_SOCKET_PATH_BYTES) fail(uri, `the socket path is longer than ${MAX_SOCKET_PATH_BYTES} bytes`);
    return { transport: 'unix', socket, ...common };
  }
  if (authority === undefined) fail(uri, `a ${scheme} URI needs a host (${scheme}://HOST[:PORT]/EXPORT)`);
  return { transport: 'tcp', ...parseHostPort(uri, hostport), ...common };
}

/** encodeURIComponent, with what a path may hold bare kept bare. */
function encodePath(name: string): string {
  return encodeURIComponent(name).replace(/%2F/g, '/').replace(/%3A/g, ':').replace(/%40/g, '@');
}

/** The URI of `uri`: parseNbdUri(formatNbdUri(u)) gives `u` back. The default port is left out. */
export function formatNbdUri(uri: NbdUri): string {
  const scheme = uri.transport === 'unix' ? (uri.tls ? 'nbds+unix' : 'nbd+unix') : uri.tls ? 'nbds' : 'nbd';
  const query: string[] = [];
  let authority = '';
  if (uri.transport === 'unix') {
    query.push(`socket=${encodeURIComponent(uri.socket)}`);
  } else {
    const zoneAt = uri.host.indexOf('%');
    const address = zoneAt < 0 ? uri.host : uri.host.slice(0, zoneAt);
    let host = uri.host;
    if (isIPv6(address)) host = zoneAt < 0 ? `[${address}]` : `[${address}%25${encodeURIComponent(uri.host.slice(zoneAt + 1))}]`;
    authority = `${uri.user !== undefined ? `${encodeURIComponent(uri.user)}@` : ''}${host}${uri.port === NBD_DEFAULT_PORT ? '' : `:${uri.port}`}`;
  }
  if (uri.tlsHostname !== undefined) query.push(`tls-hostname=${encodeURIComponent(uri.tlsHostname)}`);
  return `${scheme}://${authority}/${encodePath(uri.exportName)}${query.length > 0 ? `?${query.join('&')}` : ''}`;
}
