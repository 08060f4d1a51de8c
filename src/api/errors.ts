// The transport's side of errors (docs/design.md "Control API"). Every fault
// the agent answers is {"error": {"code", "message", "details"}}: the domain
// raises DomainErrors with its codes (src/agent/errors.ts), the transport
// raises ApiErrors with its own codes below or the domain's (a malformed id
// or size it parsed itself), and `toApiError` turns whatever a request threw
// into the one answer. HTTP_STATUS gives every code, domain and transport,
// its status; docs/api.md documents each code (a unit test checks).
import type { DomainErrorCode } from '../agent/errors.js';
import { DOMAIN_ERROR_CODES, DomainError } from '../agent/errors.js';
import { toDomainError } from '../agent/faults.js';

/** Codes only the transport raises: routing, the body's own fields, Range. */
export const TRANSPORT_ERROR_CODES = {
  UNKNOWN_FIELD: 'The body has a field this API version does not define.',
  ROUTE_NOT_FOUND: 'No such route in API version 1.',
  METHOD_NOT_ALLOWED: 'The route exists but not with this method.',
  RANGE_NOT_SATISFIABLE: 'The Range of a download starts past the end of the image; Content-Range gives the size.',
} as const;

export type TransportErrorCode = keyof typeof TRANSPORT_ERROR_CODES;
export type ErrorCode = DomainErrorCode | TransportErrorCode;

/** The HTTP status of every code: the one place statuses are given. */
export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = {
  BAD_REQUEST: 400,
  INVALID_ID: 400,
  INVALID_SIZE: 400,
  UPLOAD_INCOMPLETE: 400,
  UNKNOWN_FIELD: 400,
  SHRINK_NOT_SUPPORTED: 400,
  POOL_NOT_FOUND: 404,
  VOLUME_NOT_FOUND: 404,
  SNAPSHOT_NOT_FOUND: 404,
  IMAGE_NOT_FOUND: 404,
  OPERATION_NOT_FOUND: 404,
  EXPORT_NOT_FOUND: 404,
  ROUTE_NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  FORBIDDEN: 403,
  TENANT_FORBIDDEN: 403,
  VOLUME_EXISTS: 409,
  SNAPSHOT_EXISTS: 409,
  OBJECT_EXISTS: 409,
  OBJECT_MISSING: 409,
  VOLUME_IN_USE: 409,
  VOLUME_BUSY: 409,
  VOLUME_HAS_SNAPSHOTS: 409,
  VOLUME_IS_IMAGE: 409,
  IMAGE_EXISTS: 409,
  VOLUME_READ_ONLY: 409,
  OPERATION_CANCELLED: 409,
  PAYLOAD_TOO_LARGE: 413,
  RANGE_NOT_SATISFIABLE: 416,
  REMOTE_MISMATCH: 409,
  REMOTE_FAILED: 502,
  UNSUPPORTED_FOR_POOL: 422,
  UNMANAGED_NOT_FOUND: 404,
  UNMANAGED_REFUSED: 409,
  INSUFFICIENT_SPACE: 507,
  IMAGE_CACHE_FULL: 507,
  POOL_UNAVAILABLE: 503,
  INTERNAL: 500,
};

/** Every code with its status and meaning: what docs/api.md's table documents. */
export const ERROR_CODES: Readonly<Record<ErrorCode, { status: number; meaning: string }>> = Object.fromEntries(
  Object.entries({ ...DOMAIN_ERROR_CODES, ...TRANSPORT_ERROR_CODES }).map(([code, meaning]) => [code, { status: HTTP_STATUS[code as ErrorCode], meaning }]),
) as Record<ErrorCode, { status: number; meaning: string }>;

export interface ErrorBody {
  error: { code: ErrorCode; message: string; details: Record<string, unknown> };
}

/** The headers an answer with `code` carries, built from its details. */
function headersOf(code: ErrorCode, details: Record<string, unknown>): Record<string, string> {
  // RFC 9110 15.5.17: a 416 says the size it was judged against.
  if (code === 'RANGE_NOT_SATISFIABLE' && typeof details.sizeBytes === 'number') return { 'content-range': `bytes */${details.sizeBytes}` };
  return {};
}

export class ApiError extends Error {
  override name = 'ApiError';
  readonly status: number;
  /** HTTP headers the answer must carry (a 416's Content-Range). */
  readonly headers: Record<string, string>;

  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.status = HTTP_STATUS[code];
    this.headers = headersOf(code, details);
  }

  toBody(): ErrorBody {
    return { error: { code: this.code, message: this.message, details: this.details } };
  }

  /** Client faults (4xx) are logged at info, agent faults at error. */
  get isClientFault(): boolean {
    return this.status < 500;
  }
}

/**
 * The answer to whatever a request threw: an ApiError as it is, a
 * DomainError with its code's status, anything else as the domain decides it
 * (src/agent/faults.ts: an errno, a lock, a cancellation; else INTERNAL).
 */
export function toApiError(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  const fault = error instanceof DomainError ? error : toDomainError(error);
  return new ApiError(fault.code, fault.message, fault.details);
}
