// Versioned schema. PRAGMA user_version holds the number of migrations
// applied; each runs in its own transaction, so a crash leaves the schema at a
// whole version. Append only: never edit a migration that has shipped.
import type { Database } from 'better-sqlite3';

export const MIGRATIONS: readonly string[] = [
  // 1: volumes, snapshots, operations.
  `
  CREATE TABLE volumes (
    id            TEXT PRIMARY KEY,
    pool          TEXT NOT NULL,
    tenant        TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('volume', 'image')),
    size_bytes    INTEGER NOT NULL CHECK (size_bytes >= 0),
    state         TEXT NOT NULL CHECK (state IN ('creating', 'available', 'deleting', 'error')),
    source_kind   TEXT CHECK (source_kind IN ('volume', 'snapshot', 'image')),
    source_id     TEXT,
    clone_method  TEXT,
    read_only     INTEGER NOT NULL DEFAULT 0 CHECK (read_only IN (0, 1)),
    request_key   TEXT NOT NULL,
    operation_id  TEXT,
    error         TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
  ) STRICT;
  CREATE INDEX volumes_by_pool ON volumes (pool);
  CREATE INDEX volumes_by_tenant ON volumes (tenant);
  CREATE INDEX volumes_by_state ON volumes (state);

  CREATE TABLE snapshots (
    volume_id     TEXT NOT NULL REFERENCES volumes (id),
    id            TEXT NOT NULL,
    pool          TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL CHECK (size_bytes >= 0),
    state         TEXT NOT NULL CHECK (state IN ('creating', 'available', 'deleting', 'error')),
    error         TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (volume_id, id)
  ) STRICT;

  CREATE TABLE operations (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    target_id     TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    done_bytes    INTEGER NOT NULL DEFAULT 0,
    total_bytes   INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
  ) STRICT;
  `,
  // 2: snapshot ids unique per agent (a snapshot is named by its id alone as a
  // clone source); snapshots record their clone method and operation; an
  // operation's error keeps its API code.
  `
  CREATE UNIQUE INDEX snapshots_by_id ON snapshots (id);
  ALTER TABLE snapshots ADD COLUMN clone_method TEXT;
  ALTER TABLE snapshots ADD COLUMN operation_id TEXT;
  ALTER TABLE operations ADD COLUMN error_code TEXT;
  CREATE INDEX operations_by_state ON operations (state);
  `,
  // 3: volume-backed images. An image names its Image-Volume (a volumes row
  // of kind 'image'); the owner tenant decides visibility, the Image-Volume's
  // own tenant may be the internal one.
  `
  CREATE TABLE images (
    id            TEXT PRIMARY KEY,
    volume_id     TEXT NOT NULL UNIQUE,
    pool          TEXT NOT NULL,
    tenant        TEXT NOT NULL,
    visibility    TEXT NOT NULL CHECK (visibility IN ('public', 'private')),
    internal      INTEGER NOT NULL CHECK (internal IN (0, 1)),
    mode          TEXT NOT NULL CHECK (mode IN ('clone', 'adopt', 'upload')),
    source_volume TEXT,
    state         TEXT NOT NULL CHECK (state IN ('creating', 'available', 'deleting', 'error')),
    request_key   TEXT NOT NULL,
    error         TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
  ) STRICT;
  CREATE INDEX images_by_state ON images (state);
  `,
  // 4: the image-volume cache. An uploaded image may be a cache entry of its
  // pool; last_used orders entries for LRU eviction (a counter, not a clock,
  // so two uses within a millisecond keep their order).
  `
  ALTER TABLE images ADD COLUMN cached INTEGER NOT NULL DEFAULT 0 CHECK (cached IN (0, 1));
  ALTER TABLE images ADD COLUMN last_used INTEGER NOT NULL DEFAULT 0;
  CREATE INDEX images_cache_by_use ON images (pool, cached, last_used);
  `,
  // 5: thin pools (src/pools/thin/ledger.ts). A pool's transaction id as last
  // committed, its pending change (JSON) while a pool message is in flight,
  // and the thin id each object holds.
  `
  CREATE TABLE thin_pools (
    pool            TEXT PRIMARY KEY,
    data_device     TEXT NOT NULL,
    metadata_device TEXT NOT NULL,
    block_sectors   INTEGER NOT NULL CHECK (block_sectors > 0),
    phase           TEXT NOT NULL CHECK (phase IN ('formatting', 'ready')),
    transaction_id  INTEGER NOT NULL CHECK (transaction_id >= 0),
    next_thin_id    INTEGER NOT NULL CHECK (next_thin_id >= 0),
    pending         TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
  ) STRICT;

  CREATE TABLE thin_devices (
    pool          TEXT NOT NULL REFERENCES thin_pools (pool),
    name          TEXT NOT NULL,
    thin_id       INTEGER NOT NULL CHECK (thin_id >= 0),
    size_bytes    INTEGER NOT NULL CHECK (size_bytes >= 0),
    read_only     INTEGER NOT NULL CHECK (read_only IN (0, 1)),
    created_at    TEXT NOT NULL,
    PRIMARY KEY (pool, name),
    UNIQUE (pool, thin_id)
  ) STRICT;
  `,
  // 6: exports. Recorded before the export is made (creating), so start-up
  // can restore the available ones (same id, same URI) and undo the others.
  `
  CREATE TABLE exports (
    id            TEXT PRIMARY KEY,
    volume_id     TEXT NOT NULL REFERENCES volumes (id),
    protocol      TEXT NOT NULL CHECK (protocol IN ('nbd', 'block')),
    read_only     INTEGER NOT NULL CHECK (read_only IN (0, 1)),
    state         TEXT NOT NULL CHECK (state IN ('creating', 'available', 'deleting')),
    device        TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
  ) STRICT;
  CREATE INDEX exports_by_volume ON exports (volume_id);
  `,
  // 7: an export bypasses the page cache (a loop device's LO_FLAGS_DIRECT_IO,
  // an NBD export's O_DIRECT reads); kept so an export made again after a
  // restart or reboot keeps it.
  `
  ALTER TABLE exports ADD COLUMN direct_io INTEGER NOT NULL DEFAULT 0 CHECK (direct_io IN (0, 1));
  `,
  // 8: the tenant an operation works for (the owner of what it makes), so a
  // tenant-bound peer sees its own operations, also after their target is
  // gone. NULL for operations recorded before: only admins and readers see them.
  `
  ALTER TABLE operations ADD COLUMN tenant TEXT;
  `,
  // 9: a volume pulled from another host's agent records where it came from:
  // the peer's export as JSON ({"uri", "sizeBytes", "volume"?}), with
  // source_kind NULL (the CHECK on source_kind names this host's objects only).
  `
  ALTER TABLE volumes ADD COLUMN source_remote TEXT;
  `,
  // 10: a volume adopted from an object the agent did not make (Cinder's
  // manage_existing of an LV) records that object's own name: while the row
  // is creating, the start-up reconcile gives the object back under it
  // instead of removing it.
  `
  ALTER TABLE volumes ADD COLUMN source_unmanaged TEXT;
  `,
];

export function schemaVersion(db: Database): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/** Applies the migrations past the database's version; refuses a database newer than this code. */
export function migrate(db: Database, migrations: readonly string[] = MIGRATIONS): { from: number; to: number } {
  const from = schemaVersion(db);
  if (from > migrations.length) {
    throw new Error(`catalog schema version ${from} is newer than this volagent understands (${migrations.length}); refusing to open it`);
  }
  for (let version = from; version < migrations.length; version++) {
    db.transaction(() => {
      db.exec(migrations[version]!);
      db.pragma(`user_version = ${version + 1}`);
    })();
  }
  return { from, to: migrations.length };
}
