// Ids of volumes, snapshots, images and tenants (docs/design.md "Control API").
// A pool stores a snapshot as `<volume>@<snapshot>`; '@' is never in an id.
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function isValidId(value: unknown): value is string {
  return typeof value === 'string' && ID_PATTERN.test(value) && !value.includes('..');
}

/** The pool object (and lock key) of a snapshot. */
export function snapshotObject(volumeId: string, snapshotId: string): string {
  return `${volumeId}@${snapshotId}`;
}
