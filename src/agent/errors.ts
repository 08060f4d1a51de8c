// The domain's coded errors. Every fault the domain raises is a DomainError
// with one of the codes below; what a backend, the lock table or the kernel
// threw becomes one in one place (faults.ts). The domain knows no transport:
// the HTTP status of each code, and any header an answer carries, are the
// transport's (src/api/errors.ts), which also adds codes of its own (routing,
// Range). docs/api.md documents every code (a unit test checks).

export const DOMAIN_ERROR_CODES = {
  BAD_REQUEST: 'The request is malformed: bad JSON, a wrong type, a missing field.',
  INVALID_ID: 'An id does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ or contains "..".',
  INVALID_SIZE: "sizeBytes is not a positive integer number of bytes, not a multiple of 512, or not a multiple of the pool's capabilities.sizeAlignmentBytes (a thin pool's block size).",
  UPLOAD_INCOMPLETE: 'The connection broke before the last byte of an upload; nothing was kept.',
  SHRINK_NOT_SUPPORTED: 'A resize or clone asked for a size smaller than the current one.',
  POOL_NOT_FOUND: 'No pool of that name is configured.',
  VOLUME_NOT_FOUND: 'No volume with that id.',
  SNAPSHOT_NOT_FOUND: 'No snapshot with that id on that volume.',
  IMAGE_NOT_FOUND: 'No image with that id.',
  OPERATION_NOT_FOUND: 'No operation with that id.',
  EXPORT_NOT_FOUND: 'No export with that id.',
  FORBIDDEN: "The peer (by SO_PEERCRED/SO_PEERGROUPS) is not in [control].allow; or its role may not do this: a reader's change, a reader's download of a private image, a tenant-bound peer on an agent-wide or admin-only route (docs/api.md \"Access\").",
  TENANT_FORBIDDEN: 'A tenant-bound peer named another tenant (in the body or the query), or a peer other than an admin asked to act as the internal tenant (internal: true, cache=true), or a transfer named the internal tenant.',
  VOLUME_EXISTS: 'A volume with that id exists with a different definition.',
  SNAPSHOT_EXISTS: 'A snapshot with that id exists with a different definition.',
  OBJECT_EXISTS: "The pool already has a file or device with the name the agent wants, that the catalog does not know (made behind the agent's back); nothing was changed. `volagent check` names it an orphan, `check --repair` removes it.",
  OBJECT_MISSING: "The catalog has the volume or snapshot, but its file or device is gone from the pool (removed behind the agent's back); nothing was changed. `volagent check` names it missing, `check --repair` marks its row error (then it can be deleted).",
  VOLUME_IN_USE: "The volume has a writable export in the way: one whose writes the agent cannot hold (a loop or device-mapper block export) stops a copy at one point in time, any stops an adoption as an Image-Volume; and a thin volume's read-only block export, which makes the volume's one device read-only, cannot share it with a writable export, either way round.",
  VOLUME_BUSY: 'The volume is exported, being cloned from, or changing state.',
  VOLUME_HAS_SNAPSHOTS: 'The volume still has snapshots; delete them first.',
  VOLUME_IS_IMAGE: 'The volume is the Image-Volume of an image: it goes with DELETE of the image, and is not snapshotted, transferred or reverted.',
  IMAGE_EXISTS: 'An image with that id exists with a different definition.',
  VOLUME_READ_ONLY: 'The volume is an Image-Volume or otherwise read-only.',
  OPERATION_CANCELLED: 'The operation was cancelled (by a request or an agent shutdown) before it ended; nothing was left behind.',
  PAYLOAD_TOO_LARGE: "The body is larger than the route accepts: 1 MiB for JSON, the pool's max_image_bytes for image data.",
  REMOTE_MISMATCH: "A remote source's export is not the one the request names: it does not exist, or its size or the volume it serves differs; nothing was kept.",
  REMOTE_FAILED: "A remote source's export could not be read: the peer's address refused or did not answer, TLS failed (a key or certificate the peer does not accept), or the connection or a read failed mid-copy; nothing was kept.",
  UNSUPPORTED_FOR_POOL: "The pool's backend cannot do this.",
  UNMANAGED_NOT_FOUND: "The pool's storage holds no object of that name that the agent did not make (lvm: no LV of that name in the VG, or one of the agent's own).",
  UNMANAGED_REFUSED: 'The object named for adoption cannot be adopted, and was left as it was: not a thin LV of the pool\'s thin pool, held open, or read-only (the message says which).',
  INSUFFICIENT_SPACE: 'The pool is out of space; the partial result was removed and the source is intact.',
  IMAGE_CACHE_FULL: "The image does not fit in the pool's image cache: larger than max_bytes, or the entries in use leave no room.",
  POOL_UNAVAILABLE: "The pool's storage refuses changes: an I/O error (a failing device, a filesystem shut down after one), or a thin pool whose metadata went read-only or whose target failed (GET /v1/pools shows its health).",
  INTERNAL: 'An agent fault; the log has the details.',
} as const;

export type DomainErrorCode = keyof typeof DOMAIN_ERROR_CODES;

/**
 * A fault the domain decided: its code, a message for people, and details
 * for programs (ids, sizes, limits). A fault about a size the transport must
 * state in a header carries it in `details` (`sizeBytes`).
 */
export class DomainError extends Error {
  override name = 'DomainError';

  constructor(
    readonly code: DomainErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}
