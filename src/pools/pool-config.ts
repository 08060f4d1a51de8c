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
  lowWaterPercent: number;
  maxImageBytes?: number;
  imageCache?: ImageCacheConfig;
}

export type PoolConfig = FilePoolConfig | ThinPoolConfig;
