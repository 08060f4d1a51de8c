// The JSON objects of the control API as the client reads them (docs/api.md
// "Objects"). The CLI depends on the wire format only, never on src/agent/.

export interface Pool {
  name: string;
  backend: string;
  capabilities: { reflink: boolean; constantTimeClone: boolean };
  capacity: { totalBytes: number; usedBytes: number; freeBytes: number; dataPercent?: number; metadataPercent?: number };
}

export type SourceRef = { volume: string } | { snapshot: string } | { image: string };

export interface Volume {
  id: string;
  pool: string;
  tenant: string;
  kind: 'volume' | 'image';
  sizeBytes: number;
  allocatedBytes: number;
  state: string;
  source?: SourceRef;
  cloneMethod: string | null;
  readOnly: boolean;
  createdAt: string;
  operation?: string;
  error?: string;
}

export interface Snapshot {
  id: string;
  volume: string;
  pool: string;
  tenant: string;
  sizeBytes: number;
  allocatedBytes: number;
  state: string;
  cloneMethod: string | null;
  readOnly: boolean;
  createdAt: string;
  operation?: string;
}

export type OperationState = 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface Operation {
  id: string;
  kind: string;
  target: string;
  state: OperationState;
  doneBytes: number;
  totalBytes: number;
  error?: { code: string; message: string };
  createdAt: string;
  updatedAt: string;
}

export interface Difference {
  kind: string;
  pool?: string;
  object?: string;
  volume?: string;
  snapshot?: string;
  operation?: string;
  detail: string;
  action?: string;
}

export interface CheckReport {
  clean: boolean;
  repaired: boolean;
  differences: Difference[];
}

export interface Version {
  version: string;
  api: number;
}

/** The answer to a PUT that started a copy: 202 {operation, volume} or {operation, snapshot}. */
export interface Started {
  operation: Operation;
  volume?: Volume;
  snapshot?: Snapshot;
}

export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}
