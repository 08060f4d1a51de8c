// What a pool is configured with: the output of the daemon's config validation
// (src/daemon/config.ts) and the input of the backend factory (index.ts).

export interface ImageCacheConfig {
  maxBytes?: number;
  maxCount?: number;
}

export interface FilePoolConfig {
  name: string;
  backend: 'file';
  /** The pool's directory; it must exist. */
  path: string;
  /** Largest image upload accepted (`max_image_bytes`). */
  maxImageBytes?: number;
  imageCache?: ImageCacheConfig;
}

export interface ThinPoolConfig {
  name: string;
  backend: 'thin';
  dataDevice: string;
  metadataDevice: string;
  blockSizeBytes: number;
  /** Free data or metadata at or below this logs a warning (and is the kernel's low-water mark for data). */
  lowWaterPercent: number;
  /** Free data or metadata below this refuses new volumes with 507 (`min_free`). */
  minFreePercent: number;
  /** Writes to a full pool fail at once instead of queueing (`error_if_no_space`). */
  errorIfNoSpace: boolean;
  /** Where the agent makes its device nodes: `<deviceDir>/<pool>/<volume>` (`device_dir`). */
  deviceDir: string;
  maxImageBytes?: number;
  imageCache?: ImageCacheConfig;
}

export type PoolConfig = FilePoolConfig | ThinPoolConfig;
