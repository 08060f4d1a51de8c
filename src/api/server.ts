// HTTP/1.1 + JSON on the control socket: routing, bodies, the one fault
// shape, and one log line per request (docs/design.md "House style" 12:
// client faults at info, agent faults at error, structured fields only).
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { Server as NetServer, Socket } from 'node:net';
import { createServer as createNetServer } from 'node:net';

import type { Logger } from 'pino';

import type { Agent } from '../agent/agent.js';
import { DomainError } from '../agent/errors.js';
import { native } from '../native/binding.js';
import { checkDeclaredLength, parseJsonObject, readBody } from './body.js';
import { ApiError, toApiError } from './errors.js';
import type { AllowRule, Peer } from './peer-auth.js';
import { boundTenants, isMutating, mayRequest, principalOf } from './peer-auth.js';
import type { Reply, UploadBody } from './routes.js';
import { matchRoute } from './routes.js';

export interface ApiServerOptions {
  /** `[control].allow`: empty lets only root in. */
  allow: readonly AllowRule[];
}

export interface ApiServer {
  /**
   * What listens (on the control socket's path, or a passed fd): each
   * connection's peer is checked before its first byte is read, then handed
   * to `server`.
   */
  listener: NetServer;
  /** The HTTP server the admitted connections are served by. */
  server: Server;
  /** Stops listening; resolves once every admitted connection has closed. */
  close(): Promise<void>;
  /** Requests being handled now. */
  inFlight(): number;
  /** Resolves when no request is being handled. */
  drained(): Promise<void>;
  /**
   * Breaks off the uploads and downloads in progress (agent shutdown): each
   * cleans up as a broken connection does, so draining does not wait for
   * gigabytes. Returns how many there were.
   */
  abortTransfers(): number;
}

function send(response: ServerResponse, reply: Reply, close = false): void {
  const headers: Record<string, string | number> = { ...reply.headers };
  if (close) headers.connection = 'close';
  if (reply.body === undefined || reply.status === 204) {
    response.writeHead(reply.status, headers).end();
    return;
  }
  const text = `${JSON.stringify(reply.body)}\n`;
  headers['content-type'] = 'application/json';
  headers['content-length'] = Buffer.byteLength(text);
  response.writeHead(reply.status, headers).end(text);
}

/** A closing connection reads and drops what still arrives for at most this long in all (nginx `lingering_time`)... */
export const LINGER_MS = 5000;
/** ...or until nothing has arrived for this long (nginx `lingering_timeout`)... */
export const LINGER_IDLE_MS = 2000;
/** ...or until it has dropped this many bytes: a client that keeps sending after its answer is cut off. */
export const LINGER_BYTES = 256 * 1024 * 1024;

/**
 * Closes a connection on which the client may still be sending (a body
 * refused from its headers or cut part-way, bytes that are not HTTP) once its
 * answer is written: the writing side is shut down after the answer (FIN: the
 * client reads the answer, then end of stream), and what still arrives is
 * read and dropped until the client closes its side, LINGER_IDLE_MS pass
 * without a byte, or LINGER_MS or LINGER_BYTES are reached; then the socket
 * is destroyed. A unix socket closed with unread data resets its peer: its
 * next write fails with EPIPE, and a client that is still writing loses the
 * answer it has not read yet. This is the lingering close of nginx and Apache.
 *
 * Returns the listener that counts what arrives, for the socket's 'data'.
 */
function lingeringClose(socket: Socket): (chunk: Buffer) => void {
  let dropped = 0;
  const cut = (): void => {
    socket.destroy();
  };
  const total = setTimeout(cut, LINGER_MS).unref();
  const idle = setTimeout(cut, LINGER_IDLE_MS).unref();
  socket.once('close', () => {
    clearTimeout(total);
    clearTimeout(idle);
  });
  socket.once('end', cut);
  socket.end();
  return (chunk) => {
    dropped += chunk.length;
    if (dropped >= LINGER_BYTES) cut();
    else idle.refresh();
  };
}

/** Sockets whose answer now being written is their last: requests parsed after it are dropped, never served. */
const closing = new WeakSet<Socket>();

/**
 * Makes the answer to `request` its connection's last, closed lingeringly
 * (the caller sends it with `Connection: close`). Node's HTTP server ends a
 * `Connection: close` answer's socket with `socket.destroySoon()`
 * (lib/_http_server.js resOnFinish), which destroys it once the answer is
 * flushed, read or not: on this socket that call closes lingeringly instead.
 *
 * Until then the HTTP parser reads the descriptor itself and stops it while
 * the route leaves the body unread (the socket is paused). A 'data' listener
 * takes the descriptor back from the parser, and nothing restarts a
 * descriptor stopped by then; so the socket is resumed first, and the
 * listener goes on once it has resumed (the parser's own 'resume' handler
 * restarts the descriptor before). The parser goes on parsing what arrives,
 * and `request`, resumed, drops the rest of its body.
 */
function closeAfterAnswer(request: IncomingMessage): void {
  const socket = request.socket as Socket | null;
  if (!socket || closing.has(socket)) return;
  closing.add(socket);
  socket.destroySoon = () => {
    const arrived = lingeringClose(socket);
    request.resume();
    if (!socket.isPaused()) {
      socket.on('data', arrived);
      return;
    }
    socket.once('resume', () => socket.on('data', arrived));
    socket.resume();
  };
}

/**
 * The request target as a URL: origin-form only (`/path?query`). Anything
 * else (`//host/...`, an absolute URL, a string WHATWG URL refuses) is
 * undefined, answered 400.
 */
function requestUrl(target: string | undefined): URL | undefined {
  if (!target?.startsWith('/') || target.startsWith('//')) return undefined;
  try {
    return new URL(target, 'http://volagent');
  } catch {
    return undefined;
  }
}

/** Bodies up to this size (declared) are read and dropped before a refusal is sent, keeping the connection; larger ones close it. */
const DRAIN_LIMIT = 4 * 1024 * 1024;
/** How long the rest of such a body may take to arrive. */
const DRAIN_MS = 2000;

/** Reads and drops the rest of a body declared at most DRAIN_LIMIT bytes, for at most DRAIN_MS. */
function drainSmallBody(request: IncomingMessage): Promise<void> {
  const declared = Number(request.headers['content-length']);
  if (!Number.isSafeInteger(declared) || declared > DRAIN_LIMIT) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(done, DRAIN_MS);
    request.once('end', done);
    request.once('close', done);
    request.resume();
  });
}

/** The raw body of `request`; the 100 Continue goes out when it is first read. */
function uploadBody(request: IncomingMessage, response: ServerResponse, expectsContinue: boolean): UploadBody {
  const declared = request.headers['content-length'];
  return {
    ...(declared !== undefined ? { contentLength: Number(declared) } : {}),
    chunks: () => {
      if (expectsContinue) response.writeContinue();
      return readUpload(request);
    },
  };
}

async function* readUpload(request: IncomingMessage): AsyncGenerator<Buffer> {
  try {
    // Stopping early (a refused upload) must not destroy the socket: the answer has yet to be sent on it.
    for await (const chunk of request.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) yield chunk;
  } catch (error) {
    throw new DomainError('UPLOAD_INCOMPLETE', `the upload broke off before its last byte: ${(error as Error).message}`, {});
  }
  if (!request.complete) throw new DomainError('UPLOAD_INCOMPLETE', 'the upload broke off before its last byte', {});
}

/** The descriptor under a connected unix socket (Node's pipe handle keeps it as `fd`). */
function socketFd(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * Answers `error` on a connection whose request was never read (or could not
 * be parsed), then closes it lingeringly.
 */
function refuseConnection(socket: Socket, error: ApiError, reason = 'Forbidden'): void {
  const text = `${JSON.stringify(error.toBody())}\n`;
  socket.write(`HTTP/1.1 ${error.status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
  socket.on('data', lingeringClose(socket));
  socket.resume();
}

export function createApiServer(agent: Agent, logger: Logger, options: ApiServerOptions = { allow: [] }): ApiServer {
  /** The peer of each admitted connection, with its role. */
  const peers = new WeakMap<Socket, Peer>();
  let inFlight = 0;
  let waiters: (() => void)[] = [];
  /** Requests streaming an upload or a download now. */
  const transfers = new Set<IncomingMessage>();

  const handle = async (request: IncomingMessage, response: ServerResponse, expectsContinue: boolean): Promise<void> => {
    const started = process.hrtime.bigint();
    const method = request.method ?? 'GET';
    const peer = peers.get(request.socket);
    const url = requestUrl(request.url);
    let route = url?.pathname ?? '(unparsable)';
    /** The route pattern, or "unmatched": a label never takes a client's raw path. */
    let metricRoute = 'unmatched';
    let reply: Reply;
    let fault: ApiError | undefined;
    let cause: unknown;
    let volume: string | undefined;
    try {
      if (!url) throw new ApiError('BAD_REQUEST', 'the request target is not a path the API can parse', { target: (request.url ?? '').slice(0, 256) });
      const match = matchRoute(method, url.pathname);
      if (match.kind === 'none') throw new ApiError('ROUTE_NOT_FOUND', `no route ${method} ${url.pathname} in API v1`, { path: url.pathname });
      if (match.kind === 'method') {
        throw new ApiError('METHOD_NOT_ALLOWED', `${url.pathname} does not take ${method}`, { method, allowed: match.allowed });
      }
      route = match.route.pattern;
      metricRoute = route;
      // Every connection is admitted with its peer; one without is refused, never let through.
      if (!peer) throw new ApiError('FORBIDDEN', 'the connection has no admitted peer', {});
      const { principal } = peer;
      if (!mayRequest(principal.role, method)) {
        throw new ApiError('FORBIDDEN', `uid ${peer.uid} has the ${principal.role} role in [control].allow: ${method} is not allowed`, { uid: peer.uid, role: principal.role, method });
      }
      if (route.startsWith('/v1/volumes/:id')) volume = match.params[0];
      const streamed = match.route.body === 'stream';
      if (streamed) transfers.add(request);
      // A JSON body declared too large is refused before the client is told to send it.
      if (!streamed) checkDeclaredLength(request);
      if (expectsContinue && !streamed) response.writeContinue();
      const raw = streamed ? undefined : await readBody(request);
      const body = match.route.body === 'none' || streamed ? undefined : parseJsonObject(raw, match.route.body === 'optional');
      reply = await match.route.handle(agent, {
        principal, params: match.params, query: url.searchParams, body,
        ...(streamed ? { upload: uploadBody(request, response, expectsContinue) } : {}),
        ...(request.headers.range !== undefined ? { range: request.headers.range } : {}),
      });
    } catch (error) {
      cause = error;
      fault = toApiError(error);
      reply = { status: fault.status, body: fault.toBody(), headers: fault.headers };
    }
    // A small unread body (a request refused before its body was read) is
    // read and dropped first, so the connection can serve the next request;
    // a client waiting for 100 Continue sends no body to drain.
    if (!request.complete && !reply.send && !expectsContinue) await drainSmallBody(request);
    // The unread rest of a body (oversize, or an upload refused before it was
    // read) must not be parsed as a next request: close after answering.
    const closeAfter = !request.complete;
    if (closeAfter) closeAfterAnswer(request);
    if (reply.send) {
      transfers.add(request);
      response.writeHead(reply.status, { ...reply.headers, ...(closeAfter ? { connection: 'close' } : {}) });
      try {
        await reply.send(response);
        response.end();
      } catch (error) {
        logger.info({ method, route, err: error }, 'download ended early');
        response.destroy();
      }
    } else {
      send(response, reply, closeAfter);
    }
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    agent.metrics.observeRequest(method, metricRoute, reply.status, ms / 1000);
    const fields = {
      method, route, status: reply.status, ms: Number(ms.toFixed(3)),
      ...(volume ? { volume } : {}),
      ...(fault ? { code: fault.code } : {}),
      // Who asked: the audit record of every request that changes something.
      ...(peer ? { peer: { uid: peer.uid, gid: peer.gid, pid: peer.pid }, ...(isMutating(method) ? { audit: true } : {}) } : {}),
    };
    if (fault && !fault.isClientFault) logger.error({ ...fields, err: cause }, fault.message);
    else logger.info(fields, 'request');
  };

  const serve = (request: IncomingMessage, response: ServerResponse, expectsContinue: boolean): void => {
    // Bytes after a body the connection's last answer refused: dropped, never served.
    if (closing.has(request.socket)) {
      request.resume();
      return;
    }
    inFlight++;
    handle(request, response, expectsContinue)
      .finally(() => transfers.delete(request))
      .catch((error: unknown) => {
        logger.error({ err: error }, 'request handler failed');
        if (response.headersSent) return;
        closeAfterAnswer(request);
        send(response, { status: 500, body: new ApiError('INTERNAL', 'request handler failed').toBody() }, true);
      })
      .finally(() => {
        inFlight--;
        if (inFlight === 0) {
          const pending = waiters;
          waiters = [];
          for (const resolve of pending) resolve();
        }
      });
  };
  const server = createServer((request, response) => serve(request, response, false));
  // Answered by the route: an upload refused from its headers is refused before the client sends it.
  server.on('checkContinue', (request, response) => serve(request, response, true));
  // A `?wait=true` clone may take minutes: no timeout on the response.
  server.requestTimeout = 0;
  server.headersTimeout = 30_000;
  // Bytes the HTTP parser refuses (a bad request line, a raw control byte in
  // the path, headers too large) get the API's one fault shape, not Node's bare 400.
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Socket) => {
    if (!socket.writable || !error.code?.startsWith('HPE_')) {
      socket.destroy();
      return;
    }
    const fault = new ApiError('BAD_REQUEST', `the request is not valid HTTP/1.1 (${error.code})`, { parser: error.code });
    // The parser lets go of the socket; what the client still sends is read and dropped (a lingering close).
    socket.removeAllListeners('data');
    refuseConnection(socket, fault, 'Bad Request');
    logger.info({ status: 400, code: 'BAD_REQUEST', parser: error.code }, 'request');
  });

  const admit = async (socket: Socket): Promise<void> => {
    socket.on('error', () => undefined); // a peer gone before it was admitted
    const fd = socketFd(socket);
    let credentials;
    try {
      if (fd === undefined) throw new Error('the connection has no descriptor');
      credentials = await native.peerCredentials(fd);
    } catch (error) {
      logger.error({ err: error }, 'could not read the peer credentials of a control connection; closed it');
      socket.destroy();
      return;
    }
    const principal = principalOf(credentials, options.allow);
    const who = { uid: credentials.uid, gid: credentials.gid, pid: credentials.pid };
    if (!principal) {
      const tenants = boundTenants(credentials, options.allow);
      const why = tenants.length > 1 ? `its peer matches tenant rules of ${tenants.join(', ')} in [control].allow, and no rule says which it acts for` : 'not in [control].allow';
      logger.warn({ peer: who, ...(tenants.length > 1 ? { tenants } : {}) }, `refused a control connection: ${why}`);
      refuseConnection(socket, new ApiError('FORBIDDEN', `uid ${credentials.uid} (gid ${credentials.gid}) may not use the control socket: ${why}`, { uid: credentials.uid, gid: credentials.gid }));
      return;
    }
    peers.set(socket, { ...credentials, principal });
    server.emit('connection', socket);
    socket.resume();
  };
  // Paused: nothing of a connection is read until its peer is admitted.
  const listener = createNetServer({ pauseOnConnect: true }, (socket) => void admit(socket));
  // The HTTP server itself never listens; its connection tracking (headersTimeout,
  // closeIdleConnections) starts on its 'listening' event and stops in close().
  listener.on('listening', () => server.emit('listening'));

  return {
    listener,
    server,
    close: () => new Promise<void>((resolve) => {
      server.close(() => undefined); // only stops the tracking timer: the HTTP server holds no socket
      listener.close(() => resolve());
    }),
    inFlight: () => inFlight,
    drained: () => (inFlight === 0 ? Promise.resolve() : new Promise<void>((resolve) => waiters.push(resolve))),
    abortTransfers: () => {
      const count = transfers.size;
      for (const request of transfers) request.socket.destroy();
      return count;
    },
  };
}
