// The one registry of API error codes (docs/design.md "Control API"). Every fault
// the agent answers is {"error": {"code", "message", "details"}} with the
// status given here; docs/api.md documents each code (a unit test checks).

export const ERROR_CODES = {
  BAD_REQUEST: { status: 400, meaning: 'The request is malformed: bad JSON, a wrong type, a missing field.' },
  INVALID_ID: { status: 400, meaning: 'An id does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ or contains "..".' },
  INVALID_SIZE: { status: 400, meaning: "sizeBytes is not a positive integer number of bytes, not a multiple of 512, or not a multiple of the pool's capabilities.sizeAlignmentBytes (a thin pool's block size)." },
  UPLOAD_INCOMPLETE: { status: 400, meaning: 'The connection broke before the last byte of an upload; nothing was kept.' },
  UNKNOWN_FIELD: { status: 400, meaning: 'The body has a field this API version does not define.' },
  SHRINK_NOT_SUPPORTED: { status: 400, meaning: 'A resize or clone asked for a size smaller than the current one.' },
  POOL_NOT_FOUND: { status: 404, meaning: 'No pool of that name is configured.' },
  VOLUME_NOT_FOUND: { status: 404, meaning: 'No volume with that id.' },
  SNAPSHOT_NOT_FOUND: { status: 404, meaning: 'No snapshot with that id on that volume.' },
  IMAGE_NOT_FOUND: { status: 404, meaning: 'No image with that id.' },
  OPERATION_NOT_FOUND: { status: 404, meaning: 'No operation with that id.' },
  EXPORT_NOT_FOUND: { status: 404, meaning: 'No export with that id.' },
  ROUTE_NOT_FOUND: { status: 404, meaning: 'No such route in API version 1.' },
  METHOD_NOT_ALLOWED: { status: 405, meaning: 'The route exists but not with this method.' },
  FORBIDDEN: { status: 403, meaning: "The peer (by SO_PEERCRED/SO_PEERGROUPS) is not in [control].allow; or its role may not do this: a reader's change, a reader's download of a private image, a tenant-bound peer on an agent-wide or admin-only route (docs/api.md \"Access\")." },
  TENANT_FORBIDDEN: { status: 403, meaning: 'A tenant-bound peer named another tenant (in the body or the query), or a peer other than an admin asked to act as the internal tenant (internal: true, cache=true), or a transfer named the internal tenant.' },
  VOLUME_EXISTS: { status: 409, meaning: 'A volume with that id exists with a different definition.' },
  SNAPSHOT_EXISTS: { status: 409, meaning: 'A snapshot with that id exists with a different definition.' },
  OBJECT_EXISTS: { status: 409, meaning: "The pool already has a file or device with the name the agent wants, that the catalog does not know (made behind the agent's back); nothing was changed. `volagent check` names it an orphan, `check --repair` removes it." },
  OBJECT_MISSING: { status: 409, meaning: "The catalog has the volume or snapshot, but its file or device is gone from the pool (removed behind the agent's back); nothing was changed. `volagent check` names it missing, `check --repair` marks its row error (then it can be deleted)." },
  VOLUME_IN_USE: { status: 409, meaning: "The volume has a writable export in the way: one whose writes the agent cannot hold (a loop or device-mapper block export) stops a copy at one point in time, any stops an adoption as an Image-Volume; and a thin volume's read-only block export, which makes the volume's one device read-only, cannot share it with a writable export, either way round." },
  VOLUME_BUSY: { status: 409, meaning: 'The volume is exported, being cloned from, or changing state.' },
  VOLUME_HAS_SNAPSHOTS: { status: 409, meaning: 'The volume still has snapshots; delete them first.' },
  VOLUME_IS_IMAGE: { status: 409, meaning: 'The volume is the Image-Volume of an image: it goes with DELETE of the image, and is not snapshotted, transferred or reverted.' },
  IMAGE_EXISTS: { status: 409, meaning: 'An image with that id exists with a different definition.' },
  VOLUME_READ_ONLY: { status: 409, meaning: 'The volume is an Image-Volume or otherwise read-only.' },
  OPERATION_CANCELLED: { status: 409, meaning: 'The operation was cancelled (by a request or an agent shutdown) before it ended; nothing was left behind.' },
  PAYLOAD_TOO_LARGE: { status: 413, meaning: "The body is larger than the route accepts: 1 MiB for JSON, the pool's max_image_bytes for image data." },
  RANGE_NOT_SATISFIABLE: { status: 416, meaning: 'The Range of a download starts past the end of the image; Content-Range gives the size.' },
  REMOTE_MISMATCH: { status: 409, meaning: "A remote source's export is not the one the request names: it does not exist, or its size or the volume it serves differs; nothing was kept." },
  REMOTE_FAILED: { status: 502, meaning: "A remote source's export could not be read: the peer's address refused or did not answer, TLS failed (a key or certificate the peer does not accept), or the connection or a read failed mid-copy; nothing was kept." },
  UNSUPPORTED_FOR_POOL: { status: 422, meaning: "The pool's backend cannot do this." },
  INSUFFICIENT_SPACE: { status: 507, meaning: 'The pool is out of space; the partial result was removed and the source is intact.' },
  IMAGE_CACHE_FULL: { status: 507, meaning: "The image does not fit in the pool's image cache: larger than max_bytes, or the entries in use leave no room." },
  POOL_UNAVAILABLE: { status: 503, meaning: "The pool's storage refuses changes: an I/O error (a failing device, a filesystem shut down after one), or a thin pool whose metadata went read-only or whose target failed (GET /v1/pools shows its health)." },
  INTERNAL: { status: 500, meaning: 'An agent fault; the log has the details.' },
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface ErrorBody {
  error: { code: ErrorCode; message: string; details: Record<string, unknown> };
}

export class ApiError extends Error {
  override name = 'ApiError';
  readonly status: number;

  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
    /** HTTP headers the answer must carry (a 416's Content-Range). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.status = ERROR_CODES[code].status;
  }

  toBody(): ErrorBody {
    return { error: { code: this.code, message: this.message, details: this.details } };
  }

  /** Client faults (4xx) are logged at info, agent faults at error. */
  get isClientFault(): boolean {
    return this.status < 500;
  }
}
