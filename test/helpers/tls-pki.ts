// Keys and certificates for TLS tests, made with openssl in a test's
// directory: a CA with a server certificate (for 127.0.0.1 and localhost) and
// a client certificate, and a second, unrelated CA with its own client
// certificate (one the first CA's servers must refuse). EC P-256 keys: quick
// to make, and GnuTLS and OpenSSL both take them. `serverDir` is laid out as
// qemu's tls-creds-x509 wants it.
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { run } from './run.js';

export interface Pem {
  cert: Buffer;
  key: Buffer;
}

export interface TestPki {
  caCert: Buffer;
  server: Pem;
  client: Pem;
  otherCaCert: Buffer;
  /** A client certificate signed by the other CA. */
  rogueClient: Pem;
  /** ca-cert.pem, server-cert.pem, server-key.pem. */
  serverDir: string;
}

async function makeCa(dir: string, name: string): Promise<void> {
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${name}`,
    '-keyout', path.join(dir, `${name}-key.pem`), '-out', path.join(dir, `${name}-cert.pem`),
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

async function makeCert(dir: string, name: string, ca: string, extensions: string[]): Promise<Pem> {
  const key = path.join(dir, `${name}-key.pem`);
  const csr = path.join(dir, `${name}.csr`);
  const ext = path.join(dir, `${name}.ext`);
  const cert = path.join(dir, `${name}-cert.pem`);
  await run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${name}`, '-keyout', key, '-out', csr]);
  await writeFile(ext, `${extensions.join('\n')}\n`);
  await run('openssl', [
    'x509', '-req', '-in', csr, '-CA', path.join(dir, `${ca}-cert.pem`), '-CAkey', path.join(dir, `${ca}-key.pem`),
    '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', cert,
  ]);
  return { cert: await readFile(cert), key: await readFile(key) };
}

export async function makeTestPki(dir: string): Promise<TestPki> {
  await mkdir(dir, { recursive: true });
  await makeCa(dir, 'ca');
  await makeCa(dir, 'other-ca');
  const client = ['keyUsage=critical,digitalSignature', 'extendedKeyUsage=clientAuth'];
  const server = await makeCert(dir, 'server', 'ca', ['keyUsage=critical,digitalSignature', 'extendedKeyUsage=serverAuth', 'subjectAltName=IP:127.0.0.1,DNS:localhost']);
  const serverDir = path.join(dir, 'qemu-server');
  await mkdir(serverDir);
  await copyFile(path.join(dir, 'ca-cert.pem'), path.join(serverDir, 'ca-cert.pem'));
  await writeFile(path.join(serverDir, 'server-cert.pem'), server.cert);
  await writeFile(path.join(serverDir, 'server-key.pem'), server.key, { mode: 0o600 });
  return {
    caCert: await readFile(path.join(dir, 'ca-cert.pem')),
    server,
    client: await makeCert(dir, 'client', 'ca', client),
    otherCaCert: await readFile(path.join(dir, 'other-ca-cert.pem')),
    rogueClient: await makeCert(dir, 'rogue-client', 'other-ca', client),
    serverDir,
  };
}
