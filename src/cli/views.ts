// Human renderings of the API objects: the rows of `ls`, `ops`, `pools` and
// `snapshots`, and the "key: value" blocks of `show` and `ops ID`.
import { formatBytes } from '../common/bytes.js';
import type { Column } from './table.js';
import { formatFields, formatTable } from './table.js';
import type { Export, Image, Operation, Pool, Snapshot, Volume, VolumeSource } from './api-types.js';

export const yesNo = (value: boolean): string => (value ? 'yes' : 'no');

export function sourceText(source: VolumeSource | undefined): string | undefined {
  if (!source) return undefined;
  if ('remote' in source) return `remote ${source.remote.uri}`;
  const [kind, id] = Object.entries(source)[0] ?? [];
  return kind === undefined ? undefined : `${kind} ${String(id)}`;
}

export function sizeWithBytes(bytes: number): string {
  return bytes < 1024 ? `${bytes} B` : `${formatBytes(bytes)} (${bytes} bytes)`;
}

export function progressText(op: Pick<Operation, 'doneBytes' | 'totalBytes'>): string {
  const percent = op.totalBytes > 0 ? Math.floor((op.doneBytes / op.totalBytes) * 100) : 0;
  return `${percent}% of ${formatBytes(op.totalBytes)}`;
}

const right = (header: string): Column => ({ header, align: 'right' });

/** A thin pool's kernel state in a word or three: `rw`, `out_of_data_space,low-water`, `ro,needs-check`; `-` when the backend has none. */
function healthText(pool: Pool): string {
  if (!pool.health) return '-';
  return [pool.health.mode, ...(pool.health.lowWater ? ['low-water'] : []), ...(pool.health.needsCheck ? ['needs-check'] : [])].join(',');
}

export function poolTable(pools: Pool[]): string {
  return formatTable(['NAME', 'BACKEND', 'REFLINK', 'CONSTANT-TIME', right('TOTAL'), right('USED'), right('FREE'), 'HEALTH'], pools.map((p) => [
    p.name, p.backend, yesNo(p.capabilities.reflink), yesNo(p.capabilities.constantTimeClone),
    formatBytes(p.capacity.totalBytes), formatBytes(p.capacity.usedBytes), formatBytes(p.capacity.freeBytes), healthText(p),
  ]));
}

export function exportTable(exports: Export[]): string {
  return formatTable(['ID', 'VOLUME', 'PROTOCOL', 'RO', right('CONNECTIONS'), 'URI'], exports.map((e) => [
    e.id, e.volume, e.protocol, yesNo(e.readOnly), String(e.connections), e.uri,
  ]));
}

export function volumeTable(volumes: Volume[]): string {
  return formatTable(['ID', 'POOL', 'TENANT', 'KIND', right('SIZE'), right('ALLOCATED'), 'STATE', 'METHOD', 'RO'], volumes.map((v) => [
    v.id, v.pool, v.tenant, v.kind, formatBytes(v.sizeBytes), formatBytes(v.allocatedBytes), v.state, v.cloneMethod ?? '-', yesNo(v.readOnly),
  ]));
}

export function snapshotTable(snapshots: Snapshot[]): string {
  return formatTable(['ID', 'VOLUME', right('SIZE'), right('ALLOCATED'), 'STATE', 'METHOD', 'CREATED'], snapshots.map((s) => [
    s.id, s.volume, formatBytes(s.sizeBytes), formatBytes(s.allocatedBytes), s.state, s.cloneMethod ?? '-', s.createdAt,
  ]));
}

export function operationTable(operations: Operation[]): string {
  return formatTable(['ID', 'KIND', 'TARGET', 'STATE', right('PROGRESS'), 'CREATED', 'ERROR'], operations.map((o) => [
    o.id, o.kind, o.target, o.state, progressText(o), o.createdAt, o.error?.code ?? '',
  ]));
}

export function volumeFields(v: Volume): string {
  return formatFields([
    ['id', v.id],
    ['pool', v.pool],
    ['tenant', v.tenant],
    ['kind', v.kind],
    ['size', sizeWithBytes(v.sizeBytes)],
    ['allocated', sizeWithBytes(v.allocatedBytes)],
    ['state', v.state],
    ['source', sourceText(v.source)],
    ['method', v.cloneMethod ?? '-'],
    ['read-only', yesNo(v.readOnly)],
    ['created', v.createdAt],
    ['operation', v.operation],
    ['error', v.error],
  ]);
}

export function operationFields(o: Operation): string {
  return formatFields([
    ['id', o.id],
    ['kind', o.kind],
    ['target', o.target],
    ['state', o.state],
    ['progress', `${progressText(o)} (${o.doneBytes}/${o.totalBytes} bytes)`],
    ['created', o.createdAt],
    ['updated', o.updatedAt],
    ['error', o.error ? `${o.error.code}: ${o.error.message}` : undefined],
  ]);
}

/** One line about a volume that was made: `v2: 10.0 GiB in pool default, tenant t1, by reflink`. */
export function volumeSummary(v: Volume): string {
  const from = sourceText(v.source);
  return `${v.id}: ${formatBytes(v.sizeBytes)} in pool ${v.pool}, tenant ${v.tenant}${from ? `, from ${from}` : ''}`
    + `${v.cloneMethod && v.cloneMethod !== 'create' ? `, by ${v.cloneMethod}` : ''}`;
}

export function imageTable(images: Image[]): string {
  return formatTable(['ID', 'VOLUME', 'POOL', 'TENANT', 'VISIBILITY', 'MODE', right('SIZE'), 'STATE', 'CACHED'], images.map((i) => [
    i.imageId, i.volumeId, i.pool, i.tenant, i.visibility, i.mode, formatBytes(i.sizeBytes), i.state, yesNo(i.cached),
  ]));
}

export function imageFields(i: Image): string {
  return formatFields([
    ['id', i.imageId],
    ['location', i.location],
    ['volume', i.volumeId],
    ['pool', i.pool],
    ['tenant', i.tenant],
    ['visibility', i.visibility],
    ['internal', yesNo(i.internal)],
    ['mode', i.mode],
    ['source volume', i.sourceVolume],
    ['cached', yesNo(i.cached)],
    ['size', sizeWithBytes(i.sizeBytes)],
    ['state', i.state],
    ['created', i.createdAt],
    ['error', i.error],
  ]);
}

/** One line about an image that was registered or uploaded. */
export function imageSummary(i: Image): string {
  return `image ${i.imageId}: ${formatBytes(i.sizeBytes)} ${i.visibility} in pool ${i.pool}, tenant ${i.tenant}, location ${i.location}`;
}
