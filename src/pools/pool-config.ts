// What a pool is configured with: every pool's common keys, read by the
// daemon's config reader (src/daemon/config.ts), and the reader a backend is
// handed for its own keys (src/pools/backend.ts).

export interface ImageCacheConfig {
  maxBytes?: number;
  maxCount?: number;
}

/** The keys every `[[pools]]` table has; a backend's config adds its own (FilePoolConfig, ThinPoolConfig, ...). */
export interface PoolConfig {
  name: string;
  /** The backend's name, as `backend = "..."` says (src/pools/index.ts lists them). */
  backend: string;
  /** Largest image upload accepted (`max_image_bytes`). */
  maxImageBytes?: number;
  imageCache?: ImageCacheConfig;
}

/**
 * One `[[pools]]` table, as the config reader hands it to a backend. Each
 * getter takes a key, marks it read (a key no one reads is an error) and
 * throws the config's error, naming the file and the key, on a bad value.
 */
export interface ConfigTable {
  fail(key: string, problem: string): never;
  has(key: string): boolean;
  /** A non-empty string. */
  string(key: string, fallback?: string): string;
  /** A name like a pool's: ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$. */
  name(key: string): string;
  /** A path, made absolute against the config file's directory. */
  path(key: string, fallback?: string): string;
  integer(key: string, min: number, max: number): number | undefined;
  /** Bytes, or a size like "64KiB". */
  bytes(key: string, fallback?: string): number | undefined;
  boolean(key: string, fallback: boolean): boolean;
  /** A percentage like "10%", as a number from 0 to 100. */
  percent(key: string, fallback: string): number;
}
