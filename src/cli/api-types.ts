// The JSON objects of the control API as the client reads them (docs/api.md
// "Objects"). They are the agent's own view types, imported as types only:
// nothing of src/agent/ is loaded by the CLI at run time.
import type { ImageView } from '../agent/images.js';
import type { OperationView } from '../agent/operations.js';
import type { SnapshotView, VolumeView } from '../agent/volume-views.js';

export type { PoolView as Pool } from '../agent/agent.js';
export type { ExportView as Export } from '../agent/exports.js';
export type { ImageView as Image } from '../agent/images.js';
export type { OperationView as Operation } from '../agent/operations.js';
export type { CheckReport, Difference } from '../agent/reconcile.js';
export type { SnapshotView as Snapshot, SourceRef, VolumeView as Volume, VolumeSource } from '../agent/volume-views.js';

export interface Version {
  version: string;
  api: number;
}

/** The answer to a PUT that started a copy: 202 {operation, volume}, {operation, snapshot} or {operation, image}. */
export interface Started {
  operation: OperationView;
  volume?: VolumeView;
  snapshot?: SnapshotView;
  image?: ImageView;
}

/** An error body as printed by the CLI: the agent's codes, and the client's own (AGENT_UNREACHABLE, ...). */
export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}
