// What the domain answers about volumes and snapshots: their views, the
// outcome of a PUT, and the canonical form of a request's definition (which
// tells a repeat from a conflict).
import type { SnapshotRow, VolumeKind, VolumeRow } from '../catalog/catalog.js';
import type { ObjectState } from '../catalog/volume-state.js';
import type { Pool } from '../pools/pool.js';
import { snapshotObject } from './ids.js';
import type { OperationView } from './operations.js';
import type { RemoteSource } from './remote-sources.js';

export type SourceRef = { volume: string } | { snapshot: string } | { image: string };
/** A volume's source: an object of this host, a peer agent's export (remote-sources.ts), or an object of a pool's storage the agent did not make, by the backend's own name (adopted). */
export type VolumeSource = SourceRef | { remote: RemoteSource } | { unmanaged: string };

export interface VolumeView {
  id: string;
  pool: string;
  tenant: string;
  kind: VolumeKind;
  sizeBytes: number;
  allocatedBytes: number;
  state: ObjectState;
  source?: VolumeSource;
  cloneMethod: string | null;
  readOnly: boolean;
  createdAt: string;
  operation?: string;
  error?: string;
}

export interface SnapshotView {
  id: string;
  volume: string;
  pool: string;
  tenant: string;
  sizeBytes: number;
  allocatedBytes: number;
  state: ObjectState;
  cloneMethod: string | null;
  readOnly: true;
  createdAt: string;
  operation?: string;
  error?: string;
}

/** `created`: 201; `exists`: 200 (an identical one was there); `started`: 202 with the operation. */
export type PutOutcome<View> =
  | { status: 'created' | 'exists'; view: View }
  | { status: 'started'; view: View; operation: OperationView };

/** A volume row as the API shows it; allocatedBytes from its pool (0 while creating or unreadable). */
export async function volumeView(row: VolumeRow, pools: ReadonlyMap<string, Pool>): Promise<VolumeView> {
  const info = row.state === 'creating' ? undefined : await pools.get(row.pool)?.stat(row.id).catch(() => undefined);
  return {
    id: row.id,
    pool: row.pool,
    tenant: row.tenant,
    kind: row.kind,
    sizeBytes: row.sizeBytes,
    allocatedBytes: info?.allocatedBytes ?? 0,
    state: row.state,
    ...(row.source ? { source: { [row.source.kind]: row.source.id } as SourceRef } : {}),
    ...(row.remoteSource ? { source: { remote: row.remoteSource } } : {}),
    ...(row.unmanagedSource ? { source: { unmanaged: row.unmanagedSource } } : {}),
    cloneMethod: row.cloneMethod ?? null,
    readOnly: row.readOnly,
    createdAt: row.createdAt,
    ...(row.operationId ? { operation: row.operationId } : {}),
    ...(row.error ? { error: row.error } : {}),
  };
}

/** A snapshot row as the API shows it, with its volume's tenant. */
export async function snapshotView(row: SnapshotRow, volume: VolumeRow, pools: ReadonlyMap<string, Pool>): Promise<SnapshotView> {
  const info = row.state === 'creating' ? undefined : await pools.get(row.pool)?.stat(snapshotObject(row.volumeId, row.id)).catch(() => undefined);
  return {
    id: row.id,
    volume: row.volumeId,
    pool: row.pool,
    tenant: volume.tenant,
    sizeBytes: row.sizeBytes,
    allocatedBytes: info?.allocatedBytes ?? 0,
    state: row.state,
    cloneMethod: row.cloneMethod ?? null,
    readOnly: true,
    createdAt: row.createdAt,
    ...(row.operationId ? { operation: row.operationId } : {}),
    ...(row.error ? { error: row.error } : {}),
  };
}

/** A request's definition in one canonical form (keys in a fixed order), to tell a repeat from a conflict. */
export function canonicalKey(definition: { pool: string; tenant: string; sizeBytes: number | null; source: VolumeSource | null }): string {
  const source = definition.source === null ? null : Object.entries(definition.source)[0]!;
  return JSON.stringify([definition.pool, definition.tenant, definition.sizeBytes, source]);
}
