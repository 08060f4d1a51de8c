// HTTP/1.1 + JSON on the control socket: routing, bodies, the one fault
// shape, and one log line per request (STYLE.md 12: client faults at info,
// agent faults at error, structured fields only).
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:http';
import type { Server } from 'node:http';

import type { Logger } from 'pino';

import type { Agent } from '../agent/agent.js';
import { toApiError } from '../agent/faults.js';
import { BodyTooLargeError, parseJsonObject, readBody } from './body.js';
import { ApiError } from './errors.js';
import type { Reply } from './routes.js';
import { matchRoute } from './routes.js';

export interface ApiServer {
  server: Server;
  /** Requests being handled now. */
  inFlight(): number;
  /** Resolves when no request is being handled. */
  drained(): Promise<void>;
}

function send(response: ServerResponse, reply: Reply, close = false): void {
  const headers: Record<string, string | number> = {};
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

export function createApiServer(agent: Agent, logger: Logger): ApiServer {
  let inFlight = 0;
  let waiters: (() => void)[] = [];

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const started = process.hrtime.bigint();
    const method = request.method ?? 'GET';
    const url = new URL(request.url ?? '/', 'http://volagent');
    let route = url.pathname;
    let reply: Reply;
    let fault: ApiError | undefined;
    let cause: unknown;
    let closeAfter = false;
    let volume: string | undefined;
    try {
      const match = matchRoute(method, url.pathname);
      if (match.kind === 'none') throw new ApiError('ROUTE_NOT_FOUND', `no route ${method} ${url.pathname} in API v1`, { path: url.pathname });
      if (match.kind === 'method') {
        throw new ApiError('METHOD_NOT_ALLOWED', `${url.pathname} does not take ${method}`, { method, allowed: match.allowed });
      }
      route = match.route.pattern;
      if (route.startsWith('/v1/volumes/:id')) volume = match.params[0];
      const raw = await readBody(request);
      const body = match.route.body === 'none' ? undefined : parseJsonObject(raw, match.route.body === 'optional');
      reply = await match.route.handle(agent, { params: match.params, query: url.searchParams, body });
    } catch (error) {
      cause = error;
      fault = toApiError(error);
      closeAfter = error instanceof BodyTooLargeError;
      reply = { status: fault.status, body: fault.toBody() };
    }
    // The unread rest of an oversize body must not be parsed as a next request.
    const socket = request.socket as typeof request.socket | null;
    send(response, reply, closeAfter);
    if (closeAfter && socket) response.once('finish', () => socket.destroySoon());
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    const fields = {
      method, route, status: reply.status, ms: Number(ms.toFixed(3)),
      ...(volume ? { volume } : {}),
      ...(fault ? { code: fault.code } : {}),
    };
    if (fault && !fault.isClientFault) logger.error({ ...fields, err: cause }, fault.message);
    else logger.info(fields, 'request');
  };

  const server = createServer((request, response) => {
    inFlight++;
    handle(request, response)
      .catch((error: unknown) => {
        logger.error({ err: error }, 'request handler failed');
        if (!response.headersSent) send(response, { status: 500, body: new ApiError('INTERNAL', 'request handler failed').toBody() }, true);
      })
      .finally(() => {
        inFlight--;
        if (inFlight === 0) {
          const pending = waiters;
          waiters = [];
          for (const resolve of pending) resolve();
        }
      });
  });
  // A `?wait=true` clone may take minutes: no timeout on the response.
  server.requestTimeout = 0;
  server.headersTimeout = 30_000;

  return {
    server,
    inFlight: () => inFlight,
    drained: () => (inFlight === 0 ? Promise.resolve() : new Promise<void>((resolve) => waiters.push(resolve))),
  };
}
