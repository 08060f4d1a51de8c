// The v1 route table (docs/design.md "Control API", docs/api.md). Each route
// parses its path parameters, query and body into typed values, then calls
// the domain (docs/design.md "House style" 7: parse, then execute). Handlers
// never see sockets.
import type { Writable } from 'node:stream';

import type { Access, Principal } from '../agent/access.js';
import type { Agent } from '../agent/agent.js';
import type { PutOutcome } from '../agent/volume-views.js';
import { ApiError } from './errors.js';
import { sendFileRange } from './file-body.js';
import { parseBoolean, parseChoice, parseFlag, parseId, parseOptionalId, parseRange, parseSize, parseSource, parseUnmanagedName, requireFields, requireQuery } from './parse.js';

export interface RouteInput {
  /** Who asks, from the peer's credentials (docs/api.md "Access"). */
  principal: Principal;
  params: string[];
  query: URLSearchParams;
  /** The parsed JSON body; undefined when the request had none. */
  body: Record<string, unknown> | undefined;
  /** The raw body of a `stream` route, not yet read. */
  upload?: UploadBody;
  /** The request's Range header, for downloads. */
  range?: string;
}

export interface UploadBody {
  /** The declared Content-Length; undefined for a chunked body. */
  contentLength?: number;
  /**
   * The body's bytes, read as they are consumed (backpressure). The first
   * call answers `Expect: 100-continue`, so checks made before it refuse an
   * upload before the client sends it. A connection that breaks before the
   * last byte throws the domain's UPLOAD_INCOMPLETE (the domain reads these
   * bytes and passes its own errors through).
   */
  chunks(): AsyncIterable<Buffer>;
}

export interface Reply {
  status: number;
  body?: unknown;
  /** Writes a raw body instead of a JSON one (downloads), after `headers`; it does not end `out`. */
  send?: (out: Writable) => Promise<void>;
  headers?: Record<string, string | number>;
}

export interface Route {
  method: string;
  /** Path segments; `:name` matches one id segment. */
  pattern: string;
  /** Whether the route reads a JSON body ('required', 'optional', 'none') or streams raw bytes ('stream'). */
  body: 'required' | 'optional' | 'none' | 'stream';
  handle(agent: Agent, input: RouteInput): Promise<Reply>;
}

/**
 * The access of a request whose query may scope it with `?tenant=X` (an
 * admin's ownership check; a tenant-bound peer may name only its own).
 */
function scoped(agent: Agent, principal: Principal, query: URLSearchParams): Access {
  return agent.access(principal, parseOptionalId(query.get('tenant') ?? undefined, 'tenant'));
}

function noBodyFields(body: Record<string, unknown> | undefined): void {
  if (body) requireFields(body, []);
}

function putReply<View>(outcome: PutOutcome<View>, key: 'volume' | 'snapshot' | 'image'): Reply {
  if (outcome.status === 'started') return { status: 202, body: { operation: outcome.operation, [key]: outcome.view } };
  return { status: outcome.status === 'created' ? 201 : 200, body: outcome.view };
}

export const ROUTES: readonly Route[] = [
  {
    method: 'GET', pattern: '/metrics', body: 'none',
    handle: async (agent, { principal, query }) => {
      requireQuery(query, []);
      agent.access(principal).checkAgentWide('GET /metrics');
      const text = await agent.metrics.text();
      return {
        status: 200, headers: { 'content-type': agent.metrics.contentType, 'content-length': Buffer.byteLength(text) },
        send: async (out) => { out.write(text); },
      };
    },
  },
  {
    method: 'GET', pattern: '/v1/version', body: 'none',
    handle: async (agent, { query }) => {
      requireQuery(query, []);
      return { status: 200, body: agent.version() };
    },
  },
  {
    method: 'GET', pattern: '/v1/pools', body: 'none',
    handle: async (agent, { query }) => {
      requireQuery(query, []);
      return { status: 200, body: await agent.listPools() };
    },
  },
  {
    method: 'GET', pattern: '/v1/pools/:pool/unmanaged', body: 'none',
    handle: async (agent, { principal, params: [pool], query }) => {
      requireQuery(query, []);
      return { status: 200, body: await agent.volumes.unmanaged(parseId(pool, 'pool'), agent.access(principal)) };
    },
  },
  {
    method: 'GET', pattern: '/v1/pools/:pool/unmanaged/:name', body: 'none',
    handle: async (agent, { principal, params: [pool, name], query }) => {
      requireQuery(query, []);
      return { status: 200, body: await agent.volumes.unmanaged(parseId(pool, 'pool'), agent.access(principal), parseUnmanagedName(name, 'name')) };
    },
  },
  {
    method: 'GET', pattern: '/v1/volumes', body: 'none',
    handle: async (agent, { principal, query }) => {
      requireQuery(query, ['pool', 'tenant', 'kind']);
      const kind = query.get('kind') ?? undefined;
      if (kind !== undefined && kind !== 'volume' && kind !== 'image') {
        throw new ApiError('BAD_REQUEST', 'kind must be volume or image', { parameter: 'kind', value: kind });
      }
      const pool = parseOptionalId(query.get('pool') ?? undefined, 'pool');
      const access = scoped(agent, principal, query);
      return { status: 200, body: await agent.volumes.list(access, { ...(pool ? { pool } : {}), ...(kind ? { kind } : {}) }) };
    },
  },
  {
    method: 'GET', pattern: '/v1/volumes/:id', body: 'none',
    handle: async (agent, { principal, params: [id], query }) => {
      requireQuery(query, ['tenant']);
      return { status: 200, body: await agent.volumes.get(id!, scoped(agent, principal, query)) };
    },
  },
  {
    method: 'PUT', pattern: '/v1/volumes/:id', body: 'required',
    handle: async (agent, { principal, params: [id], query, body }) => {
      requireQuery(query, ['wait']);
      const fields = body!;
      requireFields(fields, ['pool', 'tenant', 'sizeBytes', 'source']);
      const tenant = parseOptionalId(fields.tenant, 'tenant');
      const pool = parseOptionalId(fields.pool, 'pool');
      const sizeBytes = fields.sizeBytes === undefined ? undefined : parseSize(fields.sizeBytes);
      const source = fields.source === undefined ? undefined : parseSource(fields.source);
      const outcome = await agent.volumes.put({
        id: id!, wait: parseFlag(query, 'wait'), ...(tenant !== undefined ? { tenant } : {}),
        ...(pool !== undefined ? { pool } : {}), ...(sizeBytes !== undefined ? { sizeBytes } : {}), ...(source ? { source } : {}),
      }, agent.access(principal));
      return putReply(outcome, 'volume');
    },
  },
  {
    method: 'DELETE', pattern: '/v1/volumes/:id', body: 'none',
    handle: async (agent, { principal, params: [id], query }) => {
      requireQuery(query, ['tenant']);
      await agent.volumes.delete(id!, scoped(agent, principal, query));
      return { status: 204 };
    },
  },
  {
    method: 'POST', pattern: '/v1/volumes/:id/resize', body: 'required',
    handle: async (agent, { principal, params: [id], query, body }) => {
      requireQuery(query, ['tenant']);
      requireFields(body!, ['sizeBytes']);
      return { status: 200, body: await agent.volumes.resize(id!, parseSize(body!.sizeBytes), scoped(agent, principal, query)) };
    },
  },
  {
    method: 'POST', pattern: '/v1/volumes/:id/transfer', body: 'required',
    handle: async (agent, { principal, params: [id], query, body }) => {
      requireQuery(query, ['tenant']);
      requireFields(body!, ['tenant']);
      if (body!.tenant === undefined) throw new ApiError('BAD_REQUEST', 'tenant is required', { field: 'tenant' });
      return { status: 200, body: await agent.volumes.transfer(id!, parseId(body!.tenant, 'tenant'), scoped(agent, principal, query)) };
    },
  },
  {
    method: 'POST', pattern: '/v1/volumes/:id/revert', body: 'required',
    handle: async (agent, { principal, params: [id], query, body }) => {
      requireQuery(query, ['tenant']);
      requireFields(body!, ['snapshot']);
      if (body!.snapshot === undefined) throw new ApiError('BAD_REQUEST', 'snapshot is required', { field: 'snapshot' });
      return { status: 200, body: await agent.volumes.revert(id!, parseId(body!.snapshot, 'snapshot'), scoped(agent, principal, query)) };
    },
  },
  {
    method: 'GET', pattern: '/v1/volumes/:id/snapshots', body: 'none',
    handle: async (agent, { principal, params: [id], query }) => {
      requireQuery(query, ['tenant']);
      return { status: 200, body: await agent.snapshots.list(id!, scoped(agent, principal, query)) };
    },
  },
  {
    method: 'GET', pattern: '/v1/volumes/:id/snapshots/:sid', body: 'none',
    handle: async (agent, { principal, params: [id, sid], query }) => {
      requireQuery(query, ['tenant']);
      return { status: 200, body: await agent.snapshots.get(id!, sid!, scoped(agent, principal, query)) };
    },
  },
  {
    method: 'PUT', pattern: '/v1/volumes/:id/snapshots/:sid', body: 'optional',
    handle: async (agent, { principal, params: [id, sid], query, body }) => {
      requireQuery(query, ['wait', 'tenant']);
      noBodyFields(body);
      return putReply(await agent.snapshots.put(id!, sid!, parseFlag(query, 'wait'), scoped(agent, principal, query)), 'snapshot');
    },
  },
  {
    method: 'DELETE', pattern: '/v1/volumes/:id/snapshots/:sid', body: 'none',
    handle: async (agent, { principal, params: [id, sid], query }) => {
      requireQuery(query, ['tenant']);
      await agent.snapshots.delete(id!, sid!, scoped(agent, principal, query));
      return { status: 204 };
    },
  },
  {
    method: 'GET', pattern: '/v1/images', body: 'none',
    handle: async (agent, { principal, query }) => {
      requireQuery(query, ['tenant']);
      return { status: 200, body: agent.images.list(scoped(agent, principal, query)) };
    },
  },
  {
    method: 'GET', pattern: '/v1/images/:id', body: 'none',
    handle: async (agent, { principal, params: [id], query }) => {
      requireQuery(query, ['tenant']);
      return { status: 200, body: agent.images.get(id!, scoped(agent, principal, query)) };
    },
  },
  {
    method: 'PUT', pattern: '/v1/images/:id', body: 'required',
    handle: async (agent, { principal, params: [id], query, body }) => {
      requireQuery(query, ['wait']);
      const fields = body!;
      requireFields(fields, ['volume', 'mode', 'tenant', 'visibility', 'internal']);
      const tenant = parseOptionalId(fields.tenant, 'tenant');
      const outcome = await agent.images.register({
        id: id!,
        volume: parseId(fields.volume, 'volume'),
        mode: parseChoice(fields.mode, 'mode', ['clone', 'adopt'] as const),
        ...(tenant !== undefined ? { tenant } : {}),
        visibility: parseChoice(fields.visibility, 'visibility', ['public', 'private'] as const, 'private'),
        internal: parseBoolean(fields.internal, 'internal', false),
        wait: parseFlag(query, 'wait'),
      }, agent.access(principal));
      return putReply(outcome, 'image');
    },
  },
  {
    method: 'DELETE', pattern: '/v1/images/:id', body: 'none',
    handle: async (agent, { principal, params: [id], query }) => {
      requireQuery(query, ['tenant']);
      await agent.images.delete(id!, scoped(agent, principal, query));
      return { status: 204 };
    },
  },
  {
    method: 'PUT', pattern: '/v1/images/:id/data', body: 'stream',
    handle: async (agent, { principal, params: [id], query, upload }) => {
      requireQuery(query, ['pool', 'tenant', 'visibility', 'cache']);
      const pool = parseOptionalId(query.get('pool') ?? undefined, 'pool');
      // `tenant` names the owner here, as the body's field does on the other creations.
      const tenant = parseOptionalId(query.get('tenant') ?? undefined, 'tenant');
      const view = await agent.images.upload({
        id: id!,
        ...(pool !== undefined ? { pool } : {}),
        ...(tenant !== undefined ? { tenant } : {}),
        visibility: parseChoice(query.get('visibility') ?? undefined, 'visibility', ['public', 'private'] as const, 'private'),
        cache: parseFlag(query, 'cache'),
        ...(upload!.contentLength !== undefined ? { contentLength: upload!.contentLength } : {}),
        data: () => upload!.chunks(),
      }, agent.access(principal));
      return { status: 201, body: view };
    },
  },
  {
    method: 'GET', pattern: '/v1/images/:id/data', body: 'none',
    handle: async (agent, { principal, params: [id], query, range: rangeHeader }) => {
      requireQuery(query, ['tenant']);
      const data = await agent.images.openData(id!, scoped(agent, principal, query));
      try {
        const range = parseRange(rangeHeader, data.sizeBytes);
        const start = range?.start ?? 0;
        const end = range?.end ?? data.sizeBytes - 1;
        return {
          status: range ? 206 : 200,
          send: async (out) => {
            try {
              await sendFileRange(data.handle, start, end, out);
            } finally {
              await data.close(); // the lock goes with the handle
            }
          },
          headers: {
            'content-type': 'application/octet-stream',
            'content-length': end - start + 1,
            'accept-ranges': 'bytes',
            ...(range ? { 'content-range': `bytes ${start}-${end}/${data.sizeBytes}` } : {}),
          },
        };
      } catch (error) {
        await data.close();
        throw error;
      }
    },
  },
  {
    method: 'POST', pattern: '/v1/volumes/:id/exports', body: 'required',
    handle: async (agent, { principal, params: [id], query, body }) => {
      requireQuery(query, ['tenant']);
      requireFields(body!, ['protocol', 'readOnly', 'directIo']);
      const protocol = parseChoice(body!.protocol, 'protocol', ['nbd', 'block'] as const, 'nbd');
      const readOnly = parseBoolean(body!.readOnly, 'readOnly', false);
      const directIo = parseBoolean(body!.directIo, 'directIo', false);
      return { status: 201, body: await agent.exports.create({ volumeId: id!, protocol, readOnly, ...(directIo ? { directIo } : {}) }, scoped(agent, principal, query)) };
    },
  },
  {
    method: 'GET', pattern: '/v1/exports', body: 'none',
    handle: async (agent, { principal, query }) => {
      requireQuery(query, ['tenant']);
      return { status: 200, body: agent.exports.list(scoped(agent, principal, query)) };
    },
  },
  {
    method: 'GET', pattern: '/v1/exports/:id', body: 'none',
    handle: async (agent, { principal, params: [id], query }) => {
      requireQuery(query, ['tenant']);
      return { status: 200, body: agent.exports.get(id!, scoped(agent, principal, query)) };
    },
  },
  {
    method: 'DELETE', pattern: '/v1/exports/:id', body: 'none',
    handle: async (agent, { principal, params: [id], query }) => {
      requireQuery(query, ['tenant']);
      await agent.exports.delete(id!, scoped(agent, principal, query));
      return { status: 204 };
    },
  },
  {
    method: 'GET', pattern: '/v1/operations', body: 'none',
    handle: async (agent, { principal, query }) => {
      requireQuery(query, ['tenant']);
      return { status: 200, body: agent.operations.list(scoped(agent, principal, query)) };
    },
  },
  {
    method: 'GET', pattern: '/v1/operations/:id', body: 'none',
    handle: async (agent, { principal, params: [id], query }) => {
      requireQuery(query, ['wait', 'tenant']);
      const access = scoped(agent, principal, query);
      const view = parseFlag(query, 'wait') ? await agent.operations.wait(id!, access) : agent.operations.get(id!, access);
      if (!view) throw new ApiError('OPERATION_NOT_FOUND', `operation ${id} does not exist`, { operation: id });
      return { status: 200, body: view };
    },
  },
  {
    method: 'DELETE', pattern: '/v1/operations/:id', body: 'none',
    handle: async (agent, { principal, params: [id], query }) => {
      requireQuery(query, ['tenant']);
      const view = await agent.operations.cancel(id!, 'cancelled by request', scoped(agent, principal, query));
      if (!view) throw new ApiError('OPERATION_NOT_FOUND', `operation ${id} does not exist`, { operation: id });
      return { status: 200, body: view };
    },
  },
  {
    method: 'GET', pattern: '/v1/check', body: 'none',
    handle: async (agent, { principal, query }) => {
      requireQuery(query, []);
      agent.access(principal).checkAgentWide('GET /v1/check');
      return { status: 200, body: await agent.check(false) };
    },
  },
  {
    method: 'POST', pattern: '/v1/check/repair', body: 'optional',
    handle: async (agent, { principal, query, body }) => {
      requireQuery(query, []);
      agent.access(principal).checkAgentWide('POST /v1/check/repair');
      noBodyFields(body);
      return { status: 200, body: await agent.check(true) };
    },
  },
];

export type RouteMatch =
  | { kind: 'found'; route: Route; params: string[] }
  | { kind: 'method'; allowed: string[] }
  | { kind: 'none' };

/**
 * Finds the route for `method` and the raw path. Parameter segments are
 * percent-decoded and must be valid ids (INVALID_ID otherwise); a path that
 * matches with another method is METHOD_NOT_ALLOWED.
 */
export function matchRoute(method: string, rawPath: string): RouteMatch {
  const segments = rawPath.split('/');
  const allowed: string[] = [];
  for (const route of ROUTES) {
    const pattern = route.pattern.split('/');
    if (pattern.length !== segments.length) continue;
    const params: string[] = [];
    let matched = true;
    for (let i = 0; i < pattern.length; i++) {
      if (pattern[i]!.startsWith(':')) {
        params.push(segments[i]!);
      } else if (pattern[i] !== segments[i]) {
        matched = false;
        break;
      }
    }
    if (!matched) continue;
    if (route.method !== method) {
      allowed.push(route.method);
      continue;
    }
    const names = pattern.filter((p) => p.startsWith(':'));
    return { kind: 'found', route, params: params.map((raw, i) => parseId(decodeSegment(raw, names[i]!), names[i]!.slice(1))) };
  }
  return allowed.length > 0 ? { kind: 'method', allowed } : { kind: 'none' };
}

function decodeSegment(raw: string, name: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new ApiError('INVALID_ID', `${name.slice(1)} is not valid percent-encoding`, { field: name.slice(1) });
  }
}
