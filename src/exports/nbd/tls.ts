// TLS for NBD over TCP (doc/proto.md "TLS support"): the credentials of
// `[nbd] tls`, read once at start-up, and the upgrade of a connection after
// NBD_OPT_STARTTLS. Two kinds, as qemu-nbd's tls-creds-psk and
// tls-creds-x509 and nbdkit's --tls-psk / --tls-certificates:
// - PSK: a file of `identity:hexkey` lines (psktool's format, the one qemu,
//   nbdkit and libnbd read). A client that knows any listed identity and its
//   key gets in. TLS 1.3 (a PSK with (EC)DHE: forward secrecy) or 1.2.
//   Node's pskCallback is OpenSSL's legacy PSK callback, whose key OpenSSL
//   binds to SHA-256: in TLS 1.3 only the SHA-256 suites can use it (a
//   server that offers TLS_AES_256_GCM_SHA384 picks it for a client that
//   offers it, and fails: no signature algorithm without a certificate).
//   AES-128-GCM comes first and the server's order wins: with AES-NI it
//   costs a fraction of ChaCha20-Poly1305's CPU, which GnuTLS (qemu, libnbd)
//   would otherwise choose. TLS 1.2 takes the PSK suites below, AES-GCM
//   with DHE first.
// - X.509: the server's certificate and key, and a CA; every client must
//   present a certificate that the CA signed (mutual TLS), TLS 1.2 or 1.3.
import { readFile, stat } from 'node:fs/promises';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { createSecureContext, createServer } from 'node:tls';

export type NbdTlsConfig =
  | { kind: 'psk'; pskFile: string }
  | { kind: 'x509'; certFile: string; keyFile: string; caFile: string };

/** The PSK suites in the server's order of preference: TLS 1.3's SHA-256 suites, then TLS 1.2's with forward secrecy first. */
export const PSK_CIPHERS = [
  'TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256',
  'DHE-PSK-AES128-GCM-SHA256', 'DHE-PSK-AES256-GCM-SHA384', 'ECDHE-PSK-CHACHA20-POLY1305', 'DHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES128-CBC-SHA256', 'PSK-AES128-GCM-SHA256', 'PSK-AES256-GCM-SHA384',
].join(':');

/** A key shorter than this is refused: 128 bits, half of psktool's default. */
export const MIN_PSK_BYTES = 16;
const IDENTITY = /^[^\s:]{1,128}$/;

export class TlsCredentialsError extends Error {
  override name = 'TlsCredentialsError';
}

/** Keys by identity from a psktool-format file; every problem names the file and the line. */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    const where = `${file}:${i + 1}`;
    const colon = line.indexOf(':');
    const identity = colon < 0 ? '' : line.slice(0, colon);
    const hex = colon < 0 ? '' : line.slice(colon + 1);
    if (!IDENTITY.test(identity)) throw new TlsCredentialsError(`${where}: must be "identity:hexkey" (identity 1 to 128 characters, no spaces or colons)`);
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw new TlsCredentialsError(`${where}: the key of "${identity}" must be an even number of hex digits`);
    if (hex.length / 2 < MIN_PSK_BYTES) throw new TlsCredentialsError(`${where}: the key of "${identity}" is ${hex.length / 2} bytes; at least ${MIN_PSK_BYTES} are required`);
    if (keys.has(identity)) throw new TlsCredentialsError(`${where}: identity "${identity}" is listed twice`);
    keys.set(identity, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new TlsCredentialsError(`${file}: no keys (lines "identity:hexkey")`);
  return keys;
}

/** A secret another user can read is refused, as ssh does: the key would not authenticate this host's peers alone. */
async function readSecret(file: string): Promise<string> {
  let info;
  try {
    info = await stat(file);
  } catch (error) {
    throw new TlsCredentialsError(`${file}: ${(error as Error).message}`);
  }
  if (!info.isFile()) throw new TlsCredentialsError(`${file}: not a regular file`);
  if ((info.mode & 0o007) !== 0) throw new TlsCredentialsError(`${file}: readable or writable by others (mode ${(info.mode & 0o777).toString(8)}); make it 0600 or 0640`);
  return readFile(file, 'utf8');
}

async function readPublic(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    throw new TlsCredentialsError(`${file}: ${(error as Error).message}`);
  }
}

export class NbdTls {
  private constructor(
    readonly kind: NbdTlsConfig['kind'],
    private readonly keys: ReadonlyMap<string, Buffer>,
    private readonly x509: { cert: string; key: string; ca: string } | undefined,
  ) {}

  /** Reads and checks the credentials; TlsCredentialsError names the file and what is wrong. */
  static async load(config: NbdTlsConfig): Promise<NbdTls> {
    if (config.kind === 'psk') return new NbdTls('psk', parsePskFile(await readSecret(config.pskFile), config.pskFile), undefined);
    const [cert, key, ca] = await Promise.all([readPublic(config.certFile), readSecret(config.keyFile), readPublic(config.caFile)]);
    try {
      createSecureContext({ cert, key, ca }); // a key that does not match the certificate, or PEM that is not, fails here
    } catch (error) {
      throw new TlsCredentialsError(`${config.certFile}, ${config.keyFile}, ${config.caFile}: ${(error as Error).message}`);
    }
    return new NbdTls('x509', new Map(), { cert, key, ca });
  }

  /**
   * The same credentials for this agent as a client of a peer's export: the
   * PSK file's first identity and its key, or the certificate and key, with
   * the CA the peer's certificate must chain to.
   */
  clientCredentials(): { psk: { identity: string; key: Buffer } } | { ca: string; cert: string; key: string } {
    if (this.kind === 'x509') return { ...this.x509! };
    const [identity, key] = [...this.keys][0]!;
    return { psk: { identity, key } };
  }

  /** Identities a PSK client may use. */
  identities(): string[] {
    return [...this.keys.keys()];
  }

  /**
   * Starts the server side of the TLS handshake on `socket` (after the
   * STARTTLS ACK). Resolves with the secured socket once the handshake is
   * done; rejects when it fails (wrong key, a certificate the CA did not
   * sign, no certificate), leaving the socket destroyed.
   */
  secureServer(socket: Socket): Promise<TLSSocket> {
    // A tls.Server that never listens is handed the socket, as net.Server
    // hands it its connections: Node's own server path then checks the
    // client's certificate (a TLSSocket made by hand only records it).
    const server = this.kind === 'psk'
      ? createServer({
        ciphers: PSK_CIPHERS, honorCipherOrder: true, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.3', dhparam: 'auto',
        pskCallback: (_socket: TLSSocket, identity: string) => this.keys.get(identity) ?? null,
      })
      : createServer({ ...this.x509!, minVersion: 'TLSv1.2', requestCert: true, rejectUnauthorized: true });
    return new Promise((resolve, reject) => {
      const fail = (error: Error): void => {
        socket.off('close', closed);
        socket.destroy();
        reject(error);
      };
      const closed = (): void => fail(new Error('the connection closed during the TLS handshake'));
      socket.once('close', closed);
      server.once('tlsClientError', (error) => fail(error));
      server.once('secureConnection', (secure: TLSSocket) => {
        socket.off('close', closed);
        resolve(secure);
      });
      server.emit('connection', socket);
    });
  }
}
