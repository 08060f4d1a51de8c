// Field checks shared by the route parsers: each turns untrusted JSON and
// query values into typed values or throws the fault from the registry. No
// storage logic here; the domain gets only values that passed these.
import { isValidId } from '../agent/ids.js';
import type { VolumeSource } from '../agent/volume-views.js';
import { ApiError } from './errors.js';

/** Sizes are whole 512-byte sectors, so every backend (files, dm-thin) can hold them. */
export const SIZE_ALIGNMENT = 512;

export function requireFields(body: Record<string, unknown>, allowed: readonly string[], where = 'body'): void {
  const unknown = Object.keys(body).filter((key) => !allowed.includes(key));
  if (unknown.length > 0) {
    throw new ApiError('UNKNOWN_FIELD', `${where} has unknown field(s): ${unknown.join(', ')}`, { fields: unknown, allowed });
  }
}

export function parseId(value: unknown, field: string): string {
  if (!isValidId(value)) {
    throw new ApiError('INVALID_ID', `${field} must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ and not contain ".."`, {
      field, ...(typeof value === 'string' ? { value: value.slice(0, 200) } : { type: typeOf(value) }),
    });
  }
  return value;
}

export function parseOptionalId(value: unknown, field: string): string | undefined {
  return value === undefined ? undefined : parseId(value, field);
}

export function parseSize(value: unknown, field = 'sizeBytes'): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new ApiError('INVALID_SIZE', `${field} must be a positive integer number of bytes`, { field, ...(value === undefined ? {} : { value }) });
  }
  if (value % SIZE_ALIGNMENT !== 0) {
    throw new ApiError('INVALID_SIZE', `${field} must be a multiple of ${SIZE_ALIGNMENT}`, { field, value });
  }
  return value;
}

/** A volume's source: an object of this host, or a peer agent's export `{remote: {uri, sizeBytes, volume?}}`. */
/**
 * The backend's own name of an object the agent did not make (an LV name:
 * lvm(8)'s characters, not starting with '-', at most 127 characters).
 */
export function parseUnmanagedName(value: unknown, field: string): string {
  if (typeof value !== 'string' || !/^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$/.test(value) || value === '.' || value === '..') {
    throw new ApiError('BAD_REQUEST', `${field} must be an object's name in the pool's storage: 1 to 127 of [A-Za-z0-9+_.-], not starting with "-", not "." or ".."`, {
      field, ...(typeof value === 'string' ? { value: value.slice(0, 200) } : { type: typeOf(value) }),
    });
  }
  return value;
}

export function parseSource(value: unknown): VolumeSource {
  const kinds = ['volume', 'snapshot', 'image', 'remote', 'unmanaged'];
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ApiError('BAD_REQUEST', 'source must be an object: {"volume": ID}, {"snapshot": ID}, {"image": ID}, {"remote": {"uri", "sizeBytes", "volume"?}} or {"unmanaged": NAME}', { field: 'source' });
  }
  const entries = Object.entries(value);
  requireFields(value as Record<string, unknown>, kinds, 'source');
  if (entries.length !== 1) {
    throw new ApiError('BAD_REQUEST', `source names exactly one of ${kinds.join(', ')}`, { field: 'source' });
  }
  const [kind, id] = entries[0]!;
  if (kind === 'remote') {
    if (typeof id !== 'object' || id === null || Array.isArray(id)) {
      throw new ApiError('BAD_REQUEST', 'source.remote must be an object: {"uri": "nbds://HOST:PORT/EXPORT", "sizeBytes": N, "volume"?: ID}', { field: 'source.remote' });
    }
    const fields = id as Record<string, unknown>;
    requireFields(fields, ['uri', 'sizeBytes', 'volume'], 'source.remote');
    if (typeof fields.uri !== 'string' || fields.uri.length === 0 || fields.uri.length > 4096) {
      throw new ApiError('BAD_REQUEST', 'source.remote.uri must be an NBD URI (a string up to 4096 characters)', { field: 'source.remote.uri' });
    }
    const sizeBytes = parseSize(fields.sizeBytes, 'source.remote.sizeBytes');
    const volume = fields.volume === undefined ? undefined : parseId(fields.volume, 'source.remote.volume');
    return { remote: { uri: fields.uri, sizeBytes, ...(volume !== undefined ? { volume } : {}) } };
  }
  if (kind === 'unmanaged') return { unmanaged: parseUnmanagedName(id, 'source.unmanaged') };
  const checked = parseId(id, `source.${kind}`);
  return kind === 'volume' ? { volume: checked } : kind === 'snapshot' ? { snapshot: checked } : { image: checked };
}

/** Query flags: `true`/`1` or `false`/`0`; absent is false. */
export function parseFlag(query: URLSearchParams, name: string): boolean {
  const value = query.get(name);
  if (value === null) return false;
  if (value === 'true' || value === '1' || value === '') return true;
  if (value === 'false' || value === '0') return false;
  throw new ApiError('BAD_REQUEST', `query parameter ${name} must be true or false`, { parameter: name, value });
}

export function requireQuery(query: URLSearchParams, allowed: readonly string[]): void {
  const unknown = [...new Set(query.keys())].filter((key) => !allowed.includes(key));
  if (unknown.length > 0) {
    throw new ApiError('BAD_REQUEST', `unknown query parameter(s): ${unknown.join(', ')}`, { parameters: unknown, allowed });
  }
}

function typeOf(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
}

/** One of `choices`; `fallback` when absent (a missing field with no fallback is BAD_REQUEST). */
export function parseChoice<T extends string>(value: unknown, field: string, choices: readonly T[], fallback?: T): T {
  if (value === undefined && fallback !== undefined) return fallback;
  if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) {
    throw new ApiError('BAD_REQUEST', `${field} must be one of ${choices.join(', ')}`, { field, allowed: choices, ...(value === undefined ? {} : { value }) });
  }
  return value as T;
}

/** A JSON boolean; `fallback` when absent. */
export function parseBoolean(value: unknown, field: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new ApiError('BAD_REQUEST', `${field} must be true or false`, { field, type: typeOf(value) });
  return value;
}

/** An inclusive byte range [start, end] of a representation. */
export interface ByteRange {
  start: number;
  end: number;
}

const SINGLE_RANGE = /^bytes=(\d*)-(\d*)$/;

/**
 * The `Range` header (RFC 9110 14.2) against a representation of `sizeBytes`:
 * undefined for the whole (no header, or one this server may ignore: another
 * unit, several ranges, bad syntax); a range clipped to the size; or
 * RANGE_NOT_SATISFIABLE (416) when it starts past the end.
 */
export function parseRange(header: string | undefined, sizeBytes: number): ByteRange | undefined {
  if (header === undefined) return undefined;
  const match = SINGLE_RANGE.exec(header.trim());
  if (!match || (match[1] === '' && match[2] === '')) return undefined;
  const [first, last] = [match[1]!, match[2]!];
  let range: ByteRange | undefined;
  if (first === '') {
    const suffix = Number(last); // the last N bytes
    if (suffix > 0 && sizeBytes > 0) range = { start: Math.max(0, sizeBytes - suffix), end: sizeBytes - 1 };
  } else {
    const start = Number(first);
    if (last !== '' && Number(last) < start) return undefined; // syntactically invalid: ignored (RFC 9110 14.1.1)
    if (start < sizeBytes) range = { start, end: last === '' ? sizeBytes - 1 : Math.min(Number(last), sizeBytes - 1) };
  }
  if (!range) {
    // The answer's Content-Range (the size it was judged against) is built from details.sizeBytes.
    throw new ApiError('RANGE_NOT_SATISFIABLE', `range ${header} is outside the ${sizeBytes} bytes of the image`, { range: header, sizeBytes });
  }
  return range;
}
