// Request bodies: JSON objects of at most `limit` bytes. A declared
// Content-Length over the limit is refused from the headers, before one byte
// of the body is read; a chunked body is counted as it arrives and refused
// the moment it passes the limit. Either way the connection is closed after
// the 413, since the rest of the body is never read.
import type { IncomingMessage } from 'node:http';

import { ApiError } from './errors.js';

export const JSON_BODY_LIMIT = 1024 * 1024;

/** Thrown for an oversize body: the server must close the connection after answering. */
export class BodyTooLargeError extends ApiError {
  constructor(limit: number, received: number | undefined) {
    super('PAYLOAD_TOO_LARGE', `the request body is larger than ${limit} bytes`, { limitBytes: limit, ...(received !== undefined ? { contentLength: received } : {}) });
  }
}

/** Refuses a declared Content-Length over `limit` without reading anything. */
export function checkDeclaredLength(request: IncomingMessage, limit = JSON_BODY_LIMIT): void {
  const declared = request.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) throw new BodyTooLargeError(limit, Number(declared));
}

/** Reads the whole body (at most `limit` bytes); empty is `undefined`. */
export async function readBody(request: IncomingMessage, limit = JSON_BODY_LIMIT): Promise<Buffer | undefined> {
  checkDeclaredLength(request, limit);
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    length += chunk.length;
    if (length > limit) {
      request.pause();
      throw new BodyTooLargeError(limit, undefined);
    }
    chunks.push(chunk);
  }
  return length === 0 ? undefined : Buffer.concat(chunks, length);
}

/** Parses a JSON body that must be an object (or absent when `optional`). */
export function parseJsonObject(raw: Buffer | undefined, optional: boolean): Record<string, unknown> | undefined {
  if (raw === undefined) {
    if (optional) return undefined;
    throw new ApiError('BAD_REQUEST', 'the request needs a JSON body', {});
  }
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch (error) {
    throw new ApiError('BAD_REQUEST', `the body is not valid JSON: ${(error as Error).message}`, {});
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ApiError('BAD_REQUEST', 'the body must be a JSON object', {});
  }
  return value as Record<string, unknown>;
}
