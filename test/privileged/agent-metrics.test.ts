// GET /metrics on a real agent: the text is parsed by the Prometheus
// project's own Python parser (Debian's python3-prometheus-client), and its
// figures move with what the test does: requests by route and status, a
// copy clone (method, time, bytes), pool capacity, an image-cache miss and
// hit, an NBD export with one open connection, operations by state.
// Pools on an ext4 loop filesystem (clones copy). Needs root.
import { spawn } from 'node:child_process';
import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { startAgent, streamOn } from '../helpers/agent.js';
import { makeLoopFs, TEST_ROOT } from '../helpers/loop-fs.js';
import { RawNbdClient } from '../helpers/nbd-client.js';
import { skipUnlessRoot } from '../helpers/privileged.js';

const MiB = 1024 * 1024;

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const PARSE = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value, "type": family.type})
print(json.dumps(out))
`;

/** The exposition text, parsed by prometheus_client (a parse error fails the test). */
function parseExposition(text: string): Promise<{ samples: Sample[]; stderr: string; code: number | null }> {
  const child = spawn('/usr/bin/python3', ['-c', PARSE], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  child.stdin.end(text);
  return new Promise((resolve) => child.once('exit', (code) => resolve({ samples: code === 0 ? JSON.parse(stdout) : [], stderr, code })));
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((sum, s) => sum + s.value, 0);
}

if (!skipUnlessRoot(t)) {
  await mkdir(TEST_ROOT, { recursive: true });
  const ext4 = await makeLoopFs('ext4', 256 * MiB);
  t.teardown(() => ext4.cleanup());
  const poolPath = path.join(ext4.mountPoint, 'pool');
  const dir = path.join(ext4.mountPoint, 'agent');
  await mkdir(poolPath);
  await mkdir(dir);
  const agent = await startAgent(t, { dir, pools: [{ name: 'p', path: poolPath, imageCache: { maxBytes: '64MiB', maxCount: 4 } }] }).catch(async (error: unknown) => {
    await ext4.cleanup();
    throw error;
  });
  const scrape = async (): Promise<Sample[]> => {
    const reply = await agent.request('GET', '/metrics');
    t.equal(reply.status, 200);
    t.match(reply.headers['content-type'], /^text\/plain; version=0\.0\.4/);
    const parsed = await parseExposition(reply.text);
    t.equal(parsed.code, 0, `prometheus_client parses it ${parsed.stderr}`);
    return parsed.samples;
  };

  await t.test('the counters and gauges move with what the agent does', async (t) => {
    const before = await scrape();
    t.ok(before.some((s) => s.name === 'volagent_process_resident_memory_bytes' && s.value > 0), 'process metrics are there');
    t.equal(value(before, 'volagent_operations', { state: 'succeeded' }), 0);

    t.equal((await agent.request('PUT', '/v1/volumes/v1', { tenant: 't', sizeBytes: 8 * MiB })).status, 201);
    const handle = await open(path.join(poolPath, 'objects', 'v1.raw'), 'r+');
    await handle.write(Buffer.alloc(2 * MiB, 0x5a), 0, 2 * MiB, 0);
    await handle.close();
    const clone = await agent.request('PUT', '/v1/volumes/v2?wait=true', { tenant: 't', source: { volume: 'v1' } });
    t.equal(clone.status, 201, clone.text);
    const method = clone.body.cloneMethod as string;
    t.equal(method, 'copy_file_range', 'ext4: the clone copies the data extents (copy_file_range within one filesystem)');
    t.equal((await agent.request('GET', '/v1/nope')).status, 404);
    const upload = await streamOn(agent.socket, 'PUT', '/v1/images/img1/data?tenant=t&cache=true', Buffer.alloc(MiB, 7));
    t.equal(upload.status, 201, upload.text);
    t.equal((await agent.request('PUT', '/v1/volumes/v3?wait=true', { tenant: 't', source: { image: 'img1' } })).status, 201);
    const exported = await agent.request('POST', '/v1/volumes/v1/exports', { protocol: 'nbd' });
    t.equal(exported.status, 201);
    const client = await RawNbdClient.connect(path.join(dir, 'nbd.sock'));
    t.teardown(() => client.destroy());
    await client.open(exported.body.id);

    const after = await scrape();
    const put = { method: 'PUT', route: '/v1/volumes/:id', status: '201' };
    t.equal(value(after, 'volagent_http_requests_total', put) - value(before, 'volagent_http_requests_total', put), 3, 'three volume PUTs answered 201');
    t.equal(value(after, 'volagent_http_request_duration_seconds_count', put) - value(before, 'volagent_http_request_duration_seconds_count', put), 3, 'and timed');
    t.equal(value(after, 'volagent_http_requests_total', { route: 'unmatched', status: '404' }), 1, 'an unknown path is counted as unmatched, not by its own name');
    t.notOk(after.some((s) => s.labels.route === '/v1/nope'), 'no label takes the raw path');
    t.equal(value(after, 'volagent_clone_duration_seconds_count', { method }), 2, 'two copy clones timed (volume, and volume from image)');
    t.ok(value(after, 'volagent_clone_copied_bytes_total', { method }) >= 2 * MiB, 'the copied bytes counted');
    t.ok(value(after, 'volagent_pool_bytes', { pool: 'p', kind: 'total' }) > 200 * MiB, 'pool capacity');
    t.ok(value(after, 'volagent_pool_bytes', { pool: 'p', kind: 'used' }) > 0);
    t.equal(value(after, 'volagent_image_cache_misses_total', { pool: 'p' }), 1, 'the cached upload was a miss');
    t.equal(value(after, 'volagent_image_cache_hits_total', { pool: 'p' }), 1, 'the volume made from it a hit');
    t.equal(value(after, 'volagent_image_cache_entries', { pool: 'p', unit: 'entries' }), 1);
    t.equal(value(after, 'volagent_exports', { protocol: 'nbd' }), 1);
    t.equal(value(after, 'volagent_nbd_connections'), 1, 'the open NBD connection');
    t.ok(value(after, 'volagent_operations', { state: 'succeeded' }) >= 2, 'the copy operations, succeeded');

    client.destroy();
    t.equal((await agent.request('DELETE', `/v1/exports/${exported.body.id}`)).status, 204);
    const last = await scrape();
    t.equal(value(last, 'volagent_exports', { protocol: 'nbd' }), 0, 'unexported');
    t.equal(value(last, 'volagent_nbd_connections'), 0);
  });
}
