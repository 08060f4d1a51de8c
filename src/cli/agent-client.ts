// A small HTTP/1.1 + JSON client for the agent's control socket (docs/api.md).
// One connection per request (no keep-alive pool to hold the process open).
// An error answer becomes an AgentError carrying the agent's
// {"error": {code, message, details}}; a socket that cannot be reached
// becomes an AgentUnreachableError naming the path and what that means.
import type { ClientRequest, IncomingMessage } from 'node:http';
import { request as httpRequest } from 'node:http';
import type { Readable } from 'node:stream';

import type { ErrorBody } from './api-types.js';
import type { ResolvedSocket } from './socket-path.js';
import { describeSource } from './socket-path.js';

export interface AgentReply<T> {
  status: number;
  /** Parsed JSON; undefined for an empty body (204). */
  body: T;
}

export class AgentError extends Error {
  override name = 'AgentError';

  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }

  /** The agent's error body, as it sent it (or as it would have). */
  toBody(): ErrorBody {
    return { error: { code: this.code, message: this.message, details: this.details } };
  }
}

/** Why the socket could not be reached: `denied` means it exists but this user may not connect. */
export type UnreachableReason = 'missing' | 'refused' | 'denied';

export class AgentUnreachableError extends Error {
  override name = 'AgentUnreachableError';
  readonly code: string;

  constructor(readonly socket: ResolvedSocket, readonly reason: UnreachableReason, readonly errno: string) {
    const where = `${socket.path} (${describeSource(socket.source)})`;
    super(reason === 'missing' ? `no agent socket at ${where}: the agent is not running, or listens elsewhere`
      : reason === 'refused' ? `nothing listens on ${where}: the socket is stale, the agent is not running`
        : `permission denied on ${where}: the agent may be running, but this user may not connect to its socket`);
    this.code = reason === 'denied' ? 'SOCKET_ACCESS_DENIED' : 'AGENT_UNREACHABLE';
  }

  toBody(): ErrorBody {
    return { error: { code: this.code, message: this.message, details: { socket: this.socket.path, errno: this.errno } } };
  }
}

/** connect(2) failures on a unix socket and what they say about the agent. */
const CONNECT_ERRORS: Record<string, UnreachableReason> = {
  ENOENT: 'missing',
  ENOTDIR: 'missing',
  ECONNREFUSED: 'refused',
  ENOTSOCK: 'refused',
  EACCES: 'denied',
  EPERM: 'denied',
};

export interface RequestOptions {
  /** Aborts the request (the agent may still finish what it started). */
  signal?: AbortSignal;
}

export interface UploadOptions extends RequestOptions {
  /** Sent as Content-Length (with `Expect: 100-continue`, so a refusal comes before the data); chunked when absent. */
  contentLength?: number;
  /** Bytes handed to the socket so far. */
  onProgress?: (sentBytes: number) => void;
}

export class AgentClient {
  constructor(readonly socket: ResolvedSocket) {}

  /** PUTs raw bytes from `data` and parses the JSON answer (AgentError for 4xx/5xx). */
  upload<T>(urlPath: string, data: Readable, options: UploadOptions = {}): Promise<AgentReply<T>> {
    const headers: Record<string, string | number> = { host: 'volagent', accept: 'application/json', 'content-type': 'application/octet-stream' };
    if (options.contentLength !== undefined) {
      headers['content-length'] = options.contentLength;
      headers.expect = '100-continue';
    }
    return new Promise((resolve, reject) => {
      const req = this.open('PUT', urlPath, headers, options, (res) => {
        data.unpipe(req);
        data.destroy(); // answered: whatever was not sent is not wanted
        this.collect<T>('PUT', urlPath, res).then(resolve, reject);
      }, reject);
      let sent = 0;
      const send = (): void => {
        data.on('data', (chunk: Buffer) => {
          sent += chunk.length;
          options.onProgress?.(sent);
        });
        data.once('error', (error) => req.destroy(error));
        data.pipe(req);
      };
      if (options.contentLength !== undefined) req.once('continue', send);
      else send();
    });
  }

  /**
   * GETs raw bytes: resolves with the response once its status is 2xx (the
   * caller reads it), or rejects with the AgentError of an error answer.
   */
  download(urlPath: string, headers: Record<string, string> = {}, options: RequestOptions = {}): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const req = this.open('GET', urlPath, { host: 'volagent', ...headers }, options, (res) => {
        if ((res.statusCode ?? 0) < 400) resolve(res);
        else this.collect('GET', urlPath, res).then(() => reject(new Error(`GET ${urlPath}: ${res.statusCode}`)), reject);
      }, reject);
      req.end();
    });
  }

  get<T>(urlPath: string, options?: RequestOptions): Promise<AgentReply<T>> {
    return this.request('GET', urlPath, undefined, options);
  }

  put<T>(urlPath: string, body?: unknown, options?: RequestOptions): Promise<AgentReply<T>> {
    return this.request('PUT', urlPath, body, options);
  }

  post<T>(urlPath: string, body?: unknown, options?: RequestOptions): Promise<AgentReply<T>> {
    return this.request('POST', urlPath, body, options);
  }

  delete<T>(urlPath: string, options?: RequestOptions): Promise<AgentReply<T>> {
    return this.request('DELETE', urlPath, undefined, options);
  }

  /** One request; resolves for 1xx-3xx answers, throws AgentError for 4xx and 5xx. */
  request<T>(method: string, urlPath: string, body?: unknown, options: RequestOptions = {}): Promise<AgentReply<T>> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string | number> = { host: 'volagent', accept: 'application/json' };
    if (payload !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = Buffer.byteLength(payload);
    }
    return new Promise((resolve, reject) => {
      const req = this.open(method, urlPath, headers, options, (res) => this.collect<T>(method, urlPath, res).then(resolve, reject), reject);
      req.end(payload);
    });
  }

  /** A request on the socket; connect failures become AgentUnreachableError. */
  private open(method: string, urlPath: string, headers: Record<string, string | number>, options: RequestOptions,
    onResponse: (res: IncomingMessage) => void, onError: (error: Error) => void): ClientRequest {
    const req = httpRequest({ socketPath: this.socket.path, method, path: urlPath, headers, agent: false, signal: options.signal }, onResponse);
    req.on('error', (error: NodeJS.ErrnoException) => {
      const reason = error.syscall === 'connect' && error.code ? CONNECT_ERRORS[error.code] : undefined;
      onError(reason ? new AgentUnreachableError(this.socket, reason, error.code!) : error);
    });
    return req;
  }

  /** Reads a JSON answer whole; an error answer rejects with its AgentError. */
  private collect<T>(method: string, urlPath: string, res: IncomingMessage): Promise<AgentReply<T>> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        const status = res.statusCode ?? 0;
        try {
          resolve({ status, body: parseAnswer(method, urlPath, status, Buffer.concat(chunks).toString('utf8')) as T });
        } catch (error) {
          reject(error);
        }
      });
    });
  }
}

function parseAnswer(method: string, urlPath: string, status: number, text: string): unknown {
  let parsed: unknown;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    throw new AgentError(status, 'BAD_RESPONSE', `${method} ${urlPath}: the agent answered ${status} with a body that is not JSON: ${text.slice(0, 200)}`);
  }
  if (status < 400) return parsed;
  const fault = (parsed as Partial<ErrorBody> | undefined)?.error;
  if (fault && typeof fault.code === 'string' && typeof fault.message === 'string') {
    throw new AgentError(status, fault.code, fault.message, fault.details ?? {});
  }
  throw new AgentError(status, 'BAD_RESPONSE', `${method} ${urlPath}: the agent answered ${status} without an error body`);
}

/** The path segment for an id: ids are plain, but a stray "/" must not change the route. */
export function segment(id: string): string {
  return encodeURIComponent(id);
}
