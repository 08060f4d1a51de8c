// The v1 route table (docs/design.md "Control API", docs/api.md). Each route
// parses its path parameters, query and body into typed values, then calls
// the domain (docs/design.md "House style" 7: parse, then execute). Handlers
// never see sockets.
import type { Writable } from 'node:stream';

import type { Agent } from '../agent/agent.js';
import type { PutOutcome } from '../agent/volumes.js';
import { ApiError } from './errors.js';
import { sendFileRange } from './file-body.js';
import { parseBoolean, parseChoice, parseFlag, parseId, parseOptionalId, parseRange, parseSize, parseSource, requireFields, requireQuery } from './parse.js';

export interface RouteInput {
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
   * last byte is UPLOAD_INCOMPLETE.
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
    handle: async (agent, { query }) => {
      requireQuery(query, []);
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
    method: 'GET', pattern: '/v1/volumes', body: 'none',
    handle: async (agent, { query }) => {
      requireQuery(query, ['pool', 'tenant', 'kind']);
      const kind = query.get('kind') ?? undefined;
      if (kind !== undefined && kind !== 'volume' && kind !== 'image') {
        throw new ApiError('BAD_REQUEST', 'kind must be volume or image', { parameter: 'kind', value: kind });
      }
      const pool = parseOptionalId(query.get('pool') ?? undefined, 'pool');
      const tenant = parseOptionalId(query.get('tenant') ?? undefined, 'tenant');
      return { status: 200, body: await agent.volumes.list({ ...(pool ? { pool } : {}), ...(tenant ? { tenant } : {}), ...(kind ? { kind } : {}) }) };
    },
  },
  {
    method: 'GET', pattern: '/v1/volumes/:id', body: 'none',
    handle: async (agent, { params: [id], query }) => {
      requireQuery(query, []);
      return { status: 200, body: await agent.volumes.get(id!) };
    },
  },
  {
    method: 'PUT', pattern: '/v1/volumes/:id', body: 'required',
    handle: async (agent, { params: [id], query, body }) => {
      requireQuery(query, ['wait']);
      const fields = body!;
      requireFields(fields, ['pool', 'tenant', 'sizeBytes', 'source']);
      const tenant = parseId(fields.tenant, 'tenant');
      const pool = parseOptionalId(fields.pool, 'pool');
      const sizeBytes = fields.sizeBytes === undefined ? undefined : parseSize(fields.sizeBytes);
      const source = fields.source === undefined ? undefined : parseSource(fields.source);
      const outcome = await agent.volumes.put({
        id: id!, tenant, wait: parseFlag(query, 'wait'),
        ...(pool !== undefined ? { pool } : {}), ...(sizeBytes !== undefined ? { sizeBytes } : {}), ...(source ? { source } : {}),
      });
      return putReply(outcome, 'volume');
    },
  },
  {
    method: 'DELETE', pattern: '/v1/volumes/:id', body: 'none',
    handle: async (agent, { params: [id], query }) => {
      requireQuery(query, []);
      await agent.volumes.delete(id!);
      return { status: 204 };
    },
  },
  {
    method: 'POST', pattern: '/v1/volumes/:id/resize', body: 'required',
    handle: async (agent, { params: [id], query, body }) => {
      requireQuery(query, []);
      requireFields(body!, ['sizeBytes']);
      return { status: 200, body: await agent.volumes.resize(id!, parseSize(body!.sizeBytes)) };
    },
  },
  {
    method: 'GET', pattern: '/v1/volumes/:id/snapshots', body: 'none',
    handle: async (agent, { params: [id], query }) => {
      requireQuery(query, []);
      return { status: 200, body: await agent.volumes.listSnapshots(id!) };
    },
  },
  {
    method: 'GET', pattern: '/v1/volumes/:id/snapshots/:sid', body: 'none',
    handle: async (agent, { params: [id, sid], query }) => {
      requireQuery(query, []);
      return { status: 200, body: await agent.volumes.getSnapshot(id!, sid!) };
    },
  },
  {
    method: 'PUT', pattern: '/v1/volumes/:id/snapshots/:sid', body: 'optional',
    handle: async (agent, { params: [id, sid], query, body }) => {
      requireQuery(query, ['wait']);
      noBodyFields(body);
      return putReply(await agent.volumes.putSnapshot(id!, sid!, parseFlag(query, 'wait')), 'snapshot');
    },
  },
  {
    method: 'DELETE', pattern: '/v1/volumes/:id/snapshots/:sid', body: 'none',
    handle: async (agent, { params: [id, sid], query }) => {
      requireQuery(query, []);
      await agent.volumes.deleteSnapshot(id!, sid!);
      return { status: 204 };
    },
  },
  {
    method: 'GET', pattern: '/v1/images', body: 'none',
    handle: async (agent, { query }) => {
      requireQuery(query, ['tenant']);
      const tenant = parseOptionalId(query.get('tenant') ?? undefined, 'tenant');
      return { status: 200, body: agent.images.list(tenant ? { visibleTo: tenant } : {}) };
    },
  },
  {
    method: 'GET', pattern: '/v1/images/:id', body: 'none',
    handle: async (agent, { params: [id], query }) => {
      requireQuery(query, []);
      return { status: 200, body: agent.images.get(id!) };
    },
  },
  {
    method: 'PUT', pattern: '/v1/images/:id', body: 'required',
    handle: async (agent, { params: [id], query, body }) => {
      requireQuery(query, ['wait']);
      const fields = body!;
      requireFields(fields, ['volume', 'mode', 'tenant', 'visibility', 'internal']);
      const outcome = await agent.images.register({
        id: id!,
        volume: parseId(fields.volume, 'volume'),
        mode: parseChoice(fields.mode, 'mode', ['clone', 'adopt'] as const),
        tenant: parseId(fields.tenant, 'tenant'),
        visibility: parseChoice(fields.visibility, 'visibility', ['public', 'private'] as const, 'private'),
        internal: parseBoolean(fields.internal, 'internal', false),
        wait: parseFlag(query, 'wait'),
      });
      return putReply(outcome, 'image');
    },
  },
  {
    method: 'DELETE', pattern: '/v1/images/:id', body: 'none',
    handle: async (agent, { params: [id], query }) => {
      requireQuery(query, []);
      await agent.images.delete(id!);
      return { status: 204 };
    },
  },
  {
    method: 'PUT', pattern: '/v1/images/:id/data', body: 'stream',
    handle: async (agent, { params: [id], query, upload }) => {
      requireQuery(query, ['pool', 'tenant', 'visibility', 'cache']);
      const pool = parseOptionalId(query.get('pool') ?? undefined, 'pool');
      const view = await agent.images.upload({
        id: id!,
        ...(pool !== undefined ? { pool } : {}),
        tenant: parseId(query.get('tenant') ?? undefined, 'tenant'),
        visibility: parseChoice(query.get('visibility') ?? undefined, 'visibility', ['public', 'private'] as const, 'private'),
        cache: parseFlag(query, 'cache'),
        ...(upload!.contentLength !== undefined ? { contentLength: upload!.contentLength } : {}),
        data: () => upload!.chunks(),
      });
      return { status: 201, body: view };
    },
  },
  {
    method: 'GET', pattern: '/v1/images/:id/data', body: 'none',
    handle: async (agent, { params: [id], query, range: rangeHeader }) => {
      requireQuery(query, ['tenant']);
      const tenant = parseOptionalId(query.get('tenant') ?? undefined, 'tenant');
      const data = await agent.images.openData(id!, tenant);
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
    handle: async (agent, { params: [id], query, body }) => {
      requireQuery(query, []);
      requireFields(body!, ['protocol', 'readOnly', 'directIo']);
      const protocol = parseChoice(body!.protocol, 'protocol', ['nbd', 'block'] as const, 'nbd');
      const readOnly = parseBoolean(body!.readOnly, 'readOnly', false);
      const directIo = parseBoolean(body!.directIo, 'directIo', false);
      return { status: 201, body: await agent.exports.create({ volumeId: id!, protocol, readOnly, ...(directIo ? { directIo } : {}) }) };
    },
  },
  {
    method: 'GET', pattern: '/v1/exports', body: 'none',
    handle: async (agent, { query }) => {
      requireQuery(query, []);
      return { status: 200, body: agent.exports.list() };
    },
  },
  {
    method: 'GET', pattern: '/v1/exports/:id', body: 'none',
    handle: async (agent, { params: [id], query }) => {
      requireQuery(query, []);
      return { status: 200, body: agent.exports.get(id!) };
    },
  },
  {
    method: 'DELETE', pattern: '/v1/exports/:id', body: 'none',
    handle: async (agent, { params: [id], query }) => {
      requireQuery(query, []);
      await agent.exports.delete(id!);
      return { status: 204 };
    },
  },
  {
    method: 'GET', pattern: '/v1/operations', body: 'none',
    handle: async (agent, { query }) => {
      requireQuery(query, []);
      return { status: 200, body: agent.operations.list() };
    },
  },
  {
    method: 'GET', pattern: '/v1/operations/:id', body: 'none',
    handle: async (agent, { params: [id], query }) => {
      requireQuery(query, ['wait']);
      const view = parseFlag(query, 'wait') ? await agent.operations.wait(id!) : agent.operations.get(id!);
      if (!view) throw new ApiError('OPERATION_NOT_FOUND', `operation ${id} does not exist`, { operation: id });
      return { status: 200, body: view };
    },
  },
  {
    method: 'DELETE', pattern: '/v1/operations/:id', body: 'none',
    handle: async (agent, { params: [id], query }) => {
      requireQuery(query, []);
      const view = await agent.operations.cancel(id!);
      if (!view) throw new ApiError('OPERATION_NOT_FOUND', `operation ${id} does not exist`, { operation: id });
      return { status: 200, body: view };
    },
  },
  {
    method: 'GET', pattern: '/v1/check', body: 'none',
    handle: async (agent, { query }) => {
      requireQuery(query, []);
      return { status: 200, body: await agent.check(false) };
    },
  },
  {
    method: 'POST', pattern: '/v1/check/repair', body: 'optional',
    handle: async (agent, { query, body }) => {
      requireQuery(query, []);
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
