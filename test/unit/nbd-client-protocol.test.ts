// The NBD client (src/remote/nbd-client.ts) against a scripted server on a
// unix socket, for what real servers do not send on demand: chunks out of
// order, holes, error chunks, errno values the protocol lacks, replies that
// break the protocol (each ends the connection with an NbdProtocolError for
// every pending request), servers without structured replies, meta contexts
// or NBD_OPT_GO, ESHUTDOWN, a silent server (handshake timeout), aborts, and
// what the client sends: NBD_OPT_ABORT after a refusal, NBD_CMD_DISC on
// close, never more than maxInFlight requests.
import { setTimeout as sleep } from 'node:timers/promises';

import t from 'tap';
import type { Test } from 'tap';

import { Command, NbdErrno, Option, ReplyType, simpleReply } from '../../src/exports/nbd/protocol.js';
import type { Request } from '../../src/exports/nbd/protocol.js';
import { NbdClient } from '../../src/remote/nbd-client.js';
import { formatNbdUri, parseNbdUri } from '../../src/remote/nbd-uri.js';
import { FLAGS, Peer, scripted, SIZE } from '../helpers/nbd-scripted-server.js';

async function connect(t: Test, uri: string, options: Parameters<typeof NbdClient.connect>[1] = {}): Promise<NbdClient> {
  const client = await NbdClient.connect(parseNbdUri(uri), options);
  t.teardown(() => client.close());
  return client;
}

const pattern = (length: number, seed: number): Buffer => Buffer.from(Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff));

t.test('a read assembled from chunks in any order, holes as zeros; replies to two requests out of order', async (t) => {
  const { uri } = await scripted(t, async (peer) => {
    await peer.negotiate({ description: 'a scripted volume', blockSize: [512, 4096, 65536] });
    const first = await peer.request();
    const second = await peer.request();
    peer.data(second.cookie, 8192, pattern(4096, 2)); // the second request is answered first
    peer.hole(first.cookie, 2048, 2048, false);
    peer.data(first.cookie, 1024, pattern(1024, 1), false);
    peer.data(first.cookie, 0, pattern(1024, 0), false);
    peer.chunk(first.cookie, ReplyType.NONE, Buffer.alloc(0));
  });
  const client = await connect(t, uri);
  t.match(client, { sizeBytes: SIZE, readOnly: true, transmissionFlags: FLAGS, description: 'a scripted volume', allocation: true, structuredReplies: true, minBlockBytes: 512, preferredBlockBytes: 4096, maxPayloadBytes: 65536, tls: false });
  const [first, second] = await Promise.all([client.read(0, 4096), client.read(8192, 4096)]);
  t.ok(first.equals(Buffer.concat([pattern(1024, 0), pattern(1024, 1), Buffer.alloc(2048)])), 'data chunks in place, the hole zero');
  t.ok(second.equals(pattern(4096, 2)), 'one whole data chunk');
});

t.test('error chunks: a Node-shaped error with the errno name; an unknown errno is EINVAL; the connection stays usable', async (t) => {
  const { uri } = await scripted(t, async (peer) => {
    await peer.negotiate();
    let request = await peer.request();
    peer.error(request.cookie, NbdErrno.EIO, 'disk on fire');
    request = await peer.request();
    peer.data(request.cookie, 4096, pattern(512, 0), false);
    peer.error(request.cookie, NbdErrno.EIO, 'bad sector', false, 4608);
    peer.chunk(request.cookie, ReplyType.NONE, Buffer.alloc(0));
    request = await peer.request();
    peer.error(request.cookie, 99, '');
    request = await peer.request();
    peer.error(request.cookie, NbdErrno.ENOTSUP, 'no status here');
    request = await peer.request();
    peer.data(request.cookie, 0, pattern(512, 3));
  });
  const client = await connect(t, uri);
  await t.rejects(client.read(0, 4096), {
    code: 'EIO', errno: -5, syscall: 'NBD_CMD_READ', path: formatNbdUri(parseNbdUri(uri)),
    message: /^EIO: i\/o error, NBD_CMD_READ 'nbd\+unix:\/\/\/vol\?socket=.*' 0\+4096: disk on fire$/,
  });
  await t.rejects(client.read(4096, 1024), { code: 'EIO', errorOffset: 4608, message: /4096\+1024 \(failed at 4608\): bad sector$/ }, 'NBD_REPLY_TYPE_ERROR_OFFSET');
  await t.rejects(client.read(0, 512), { code: 'EINVAL', errno: -22, message: /\[the server sent errno 99\]$/ }, 'an errno the protocol does not define counts as EINVAL');
  await t.rejects(client.blockStatus(0, SIZE), { code: 'ENOTSUP', syscall: 'NBD_CMD_BLOCK_STATUS' });
  t.ok((await client.read(0, 512)).equals(pattern(512, 3)), 'a read after the errors');
});

t.test('block status: extents as sent, the last cut at the end of the request; one past the end is a protocol error', async (t) => {
  const { uri } = await scripted(t, async (peer) => {
    await peer.negotiate();
    let request = await peer.request();
    peer.status(request.cookie, [[4096, 3], [8192, 0], [65536, 3]]);
    request = await peer.request();
    peer.status(request.cookie, [[65536, 0], [4096, 3]]);
  });
  const client = await connect(t, uri);
  t.same(await client.blockStatus(0, 16384), [{ length: 4096, flags: 3 }, { length: 8192, flags: 0 }, { length: 4096, flags: 3 }]);
  await t.rejects(client.blockStatus(0, 65536), { name: 'NbdProtocolError', code: 'ERR_NBD_PROTOCOL', message: /block status extents after the end of the request/ });
  t.equal(client.destroyed, true, 'the connection was ended');
});

const violations: Array<[string, (peer: Peer, request: Request) => void, RegExp]> = [
  ['a reply for a cookie no request has', (peer, request) => peer.data(request.cookie + 1000n, 0, pattern(512, 0)), /for cookie \d+, which no request in flight has/],
  ['a bad magic', (peer) => peer.socket.write(Buffer.alloc(20, 0x41)), /bad magic 0x41414141/],
  ['data outside the request', (peer, request) => peer.data(request.cookie, 512, pattern(1024, 0)), /content at 512\+1024, outside the request/],
  ['data overlapping an earlier chunk', (peer, request) => { peer.data(request.cookie, 0, pattern(512, 0), false); peer.hole(request.cookie, 256, 256, false); }, /content at 256\+256 overlaps an earlier chunk/],
  ['a reply that ends short', (peer, request) => peer.data(request.cookie, 0, pattern(256, 0)), /the reply ended after 256 of 1024 bytes/],
  ['an unknown chunk type', (peer, request) => peer.chunk(request.cookie, 42, Buffer.alloc(0)), /an unexpected chunk type \(a chunk of type 42/],
  ['a simple reply to a structured read', (peer, request) => peer.socket.write(simpleReply(request.cookie, 0)), /a simple reply to a read, though structured replies were negotiated/],
  ['block status for a read', (peer, request) => peer.status(request.cookie, [[1024, 0]]), /an unexpected chunk type/],
];

for (const [what, misbehave, message] of violations) {
  t.test(`a protocol violation ends the connection for every pending request: ${what}`, async (t) => {
    const { uri, peers } = await scripted(t, async (peer) => {
      await peer.negotiate();
      const request = await peer.request();
      await peer.request(); // a second request, left pending
      misbehave(peer, request);
      await peer.closed;
    });
    const client = await connect(t, uri);
    const first = client.read(0, 1024);
    const second = client.read(4096, 512);
    const expected = { name: 'NbdProtocolError', code: 'ERR_NBD_PROTOCOL', message };
    await t.rejects(first, expected);
    await t.rejects(second, expected, 'the other pending request fails with the same error');
    t.equal(client.destroyed, true, 'the socket is destroyed');
    await peers[0]!.closed;
    await t.rejects(client.read(0, 512), { name: 'NbdConnectionClosedError', code: 'ERR_NBD_CLOSED', message: /the connection has ended/ });
  });
}

t.test('a server without structured replies: simple replies, no base:allocation, every range data', async (t) => {
  const { uri, peers } = await scripted(t, async (peer) => {
    await peer.negotiate({ structured: false });
    const request = await peer.request();
    peer.socket.write(Buffer.concat([simpleReply(request.cookie, 0), pattern(request.length, 5)]));
    const failed = await peer.request();
    peer.socket.write(simpleReply(failed.cookie, NbdErrno.EPERM));
    await peer.closed;
  });
  const client = await connect(t, uri);
  t.match(client, { structuredReplies: false, allocation: false });
  t.same(peers[0]!.options, [Option.STRUCTURED_REPLY, Option.GO], 'no SET_META_CONTEXT without structured replies');
  t.ok((await client.read(0, 2048)).equals(pattern(2048, 5)));
  await t.rejects(client.read(0, 512), { code: 'EPERM', errno: -1 });
  t.same(await client.blockStatus(4096, 8192), [{ length: 8192, flags: 0 }], 'block status answered by the client: all data');
});

t.test('a server that refuses SET_META_CONTEXT: allocation false, block status all data, reads structured', async (t) => {
  const { uri } = await scripted(t, async (peer) => {
    await peer.negotiate({ allocation: false });
    const request = await peer.request();
    peer.hole(request.cookie, 0, request.length);
    await peer.closed;
  });
  const client = await connect(t, uri);
  t.match(client, { structuredReplies: true, allocation: false });
  t.same(await client.blockStatus(0, SIZE), [{ length: SIZE, flags: 0 }]);
  t.ok((await client.read(0, 4096)).equals(Buffer.alloc(4096)), 'a hole reads as zeros');
});

t.test('a server without NBD_OPT_GO: NBD_OPT_EXPORT_NAME; a name it does not have ends the connection', async (t) => {
  const { uri } = await scripted(t, async (peer) => {
    if (!(await peer.negotiate({ go: 'unsup' }))) return;
    const request = await peer.request();
    peer.data(request.cookie, 0, pattern(512, 9));
    await peer.closed;
  });
  const client = await connect(t, uri);
  t.match(client, { sizeBytes: SIZE, transmissionFlags: FLAGS, minBlockBytes: 1, maxPayloadBytes: 32 * 1024 * 1024 });
  t.ok((await client.read(0, 512)).equals(pattern(512, 9)));
  await t.rejects(NbdClient.connect(parseNbdUri(uri.replace('///vol', '///other'))), {
    name: 'NbdExportNotFoundError', code: 'ERR_NBD_EXPORT_NOT_FOUND', message: /hung up at NBD_OPT_EXPORT_NAME \(no export named "other"/,
  });
});

t.test('an export the server does not have: NbdExportNotFoundError, and the client ends the haggling with NBD_OPT_ABORT', async (t) => {
  const { uri, peers } = await scripted(t, async (peer) => {
    await peer.negotiate({ exports: ['else'] });
  });
  await t.rejects(NbdClient.connect(parseNbdUri(uri)), { name: 'NbdExportNotFoundError', message: /NBD_OPT_GO with NBD_REP_ERR_UNKNOWN: no vol \(no export named "vol"\)/ });
  await peers[0]!.closed;
  t.same(peers[0]!.options, [Option.STRUCTURED_REPLY, Option.SET_META_CONTEXT, Option.GO, Option.ABORT], 'NBD_OPT_ABORT after the refusal');
});

t.test('close(): NBD_CMD_DISC after the requests in flight, which are still answered; idempotent', async (t) => {
  const seen: number[] = [];
  const { uri } = await scripted(t, async (peer) => {
    await peer.negotiate();
    const read = await peer.request();
    seen.push(read.type);
    const disc = await peer.request();
    seen.push(disc.type);
    peer.data(read.cookie, 0, pattern(512, 4)); // answered after DISC, as proto.md has the server do
    peer.socket.end();
  });
  const client = await connect(t, uri);
  const reading = client.read(0, 512);
  await sleep(20);
  const closing = client.close();
  await t.rejects(client.read(0, 512), { name: 'NbdConnectionClosedError', message: /the client was closed/ }, 'no new request once closing');
  t.ok((await reading).equals(pattern(512, 4)), 'the read in flight got its answer');
  await Promise.all([closing, client.close()]);
  t.same(seen, [Command.READ, Command.DISC]);
  t.equal(client.destroyed, true);
});

t.test('ESHUTDOWN: the request fails with it and the client disconnects softly (NBD_CMD_DISC)', async (t) => {
  let disc: Request | undefined;
  const { uri } = await scripted(t, async (peer) => {
    await peer.negotiate();
    const request = await peer.request();
    peer.error(request.cookie, NbdErrno.ESHUTDOWN, 'going down');
    disc = await peer.request();
    peer.socket.end();
  });
  const client = await connect(t, uri);
  await t.rejects(client.read(0, 512), { code: 'ESHUTDOWN', errno: -108, message: /^ESHUTDOWN: cannot send after transport endpoint shutdown/ });
  await client.close();
  t.equal(disc?.type, Command.DISC, 'the server got NBD_CMD_DISC');
});

t.test('a server that drops the connection mid-request: NbdConnectionClosedError for what was pending', async (t) => {
  const { uri } = await scripted(t, async (peer) => {
    await peer.negotiate();
    await peer.request();
    peer.socket.destroy();
  });
  const client = await connect(t, uri);
  await t.rejects(client.read(0, 512), { name: 'NbdConnectionClosedError', code: 'ERR_NBD_CLOSED', message: /the server ended the connection/ });
  t.equal(client.destroyed, true);
});

t.test('never more than maxInFlight requests at the server; a request whose signal aborts is dropped, its late reply too', async (t) => {
  const requests: Request[] = [];
  let answer!: () => void;
  const answered = new Promise<void>((resolve) => { answer = resolve; });
  const { uri } = await scripted(t, async (peer) => {
    await peer.negotiate();
    for (let i = 0; i < 2; i++) requests.push(await peer.request());
    await answered;
    for (const request of requests.splice(0)) peer.data(request.cookie, Number(request.offset), pattern(512, Number(request.offset) / 512));
    for (let i = 0; i < 2; i++) {
      const request = await peer.request();
      peer.data(request.cookie, Number(request.offset), pattern(512, Number(request.offset) / 512));
    }
  });
  const client = await connect(t, uri, { maxInFlight: 2 });
  const controller = new AbortController();
  const first = client.read(0, 512, { signal: controller.signal });
  const others = [512, 1024, 1536].map((offset) => client.read(offset, 512));
  await sleep(100);
  t.equal(requests.length, 2, 'two requests sent, two wait in the client');
  controller.abort();
  await t.rejects(first, { name: 'AbortError', code: 'ABORT_ERR' }, 'the aborted read rejects at once, its reply not yet come');
  answer();
  const results = await Promise.all(others);
  results.forEach((result, i) => t.ok(result.equals(pattern(512, i + 1)), `read ${i + 1}`));
  t.equal(client.destroyed, false, 'the connection stays up');
});

t.test('a server that never greets: NbdHandshakeTimeoutError, the socket closed', async (t) => {
  const { uri, peers } = await scripted(t, async (peer) => { await peer.closed; });
  const started = Date.now();
  await t.rejects(NbdClient.connect(parseNbdUri(uri), { handshakeTimeoutMs: 200 }), { name: 'NbdHandshakeTimeoutError', code: 'ERR_NBD_HANDSHAKE_TIMEOUT', message: /no NBD session within 200 ms/ });
  t.ok(Date.now() - started < 1000);
  await peers[0]!.closed;
  t.pass('the server saw the connection close');
});

t.test('an abort during the handshake rejects with an AbortError and closes the socket', async (t) => {
  const controller = new AbortController();
  const { uri, peers } = await scripted(t, async (peer) => {
    await peer.greet();
    await peer.option();
    controller.abort();
    await peer.closed;
  });
  await t.rejects(NbdClient.connect(parseNbdUri(uri), { signal: controller.signal }), { name: 'AbortError', code: 'ABORT_ERR' });
  await peers[0]!.closed;
  t.pass('the server saw the connection close');
  await t.rejects(NbdClient.connect(parseNbdUri(uri), { signal: AbortSignal.abort() }), { name: 'AbortError' }, 'an aborted signal: no connection at all');
  t.equal(peers.length, 1);
});

t.test('requests outside the export or its block sizes are refused in the client (ERR_OUT_OF_RANGE)', async (t) => {
  const { uri } = await scripted(t, async (peer) => {
    await peer.negotiate({ blockSize: [512, 4096, 65536] });
    await peer.closed;
  });
  const client = await connect(t, uri);
  const range = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };
  await t.rejects(client.read(SIZE - 512, 1024), { ...range, message: /ends past the export's 1048576 bytes/ });
  await t.rejects(client.read(100, 512), { ...range, message: /not aligned to the server's minimum block size 512/ });
  await t.rejects(client.read(0, 65536 + 512), { ...range, message: /longer than 65536 bytes/ });
  await t.rejects(client.read(0, 0), { ...range, message: /at least 1/ });
  await t.rejects(client.blockStatus(-512, 512), range);
});

t.test("a socket that is not there: Node's own error (ENOENT, connect)", async (t) => {
  await t.rejects(NbdClient.connect(parseNbdUri('nbd+unix:///vol?socket=/nonexistent/volagent-nbd.sock')), { code: 'ENOENT', syscall: 'connect' });
});
