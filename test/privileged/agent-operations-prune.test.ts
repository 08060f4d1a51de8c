// The operations table is pruned by the catalog writer: with
// `[agent] keep_finished_operations = 2`, five copy clones (an ext4 pool on a
// loop device: each is a copy_file_range operation) leave the two that ended last,
// in the API and in the catalog. Needs root (the privileged lane's agent).
import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';

import { readCatalog, startAgent } from '../helpers/agent.js';
import { makeLoopFs } from '../helpers/loop-fs.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { tempDir } from '../helpers/temp-dir.js';

if (!skipUnlessRoot(t)) {
  t.test('keep_finished_operations = 2: the API and the catalog hold only the last two ended operations', async (t) => {
    const ext4 = await makeLoopFs('ext4', 256 * 1048576);
    t.teardown(() => ext4.cleanup());
    const dir = await tempDir(t, 'volagent-prune-');
    const poolPath = path.join(ext4.mountPoint, 'pool');
    await mkdir(poolPath);
    const agent = await startAgent(t, { dir, pools: [{ name: 'p', path: poolPath }], keepFinishedOperations: 2 });
    t.equal((await agent.request('PUT', '/v1/volumes/src', { tenant: 't', sizeBytes: 1048576 })).status, 201);
    const handle = await open(path.join(poolPath, 'objects', 'src.raw'), 'r+');
    await handle.write(Buffer.alloc(65536, 0x5a), 0, 65536, 0);
    await handle.close();
    const operations: string[] = [];
    for (let i = 1; i <= 5; i++) {
      const reply = await agent.request('PUT', `/v1/volumes/c${i}?wait=true`, { tenant: 't', source: { volume: 'src' } });
      t.equal(reply.status, 201, reply.text);
      t.equal(reply.body.cloneMethod, 'copy_file_range', 'a copy, so an operation');
      operations.push(reply.body.operation);
    }
    const listed = (await agent.request('GET', '/v1/operations')).body as Array<{ id: string; target: string; state: string }>;
    t.same(listed.map((o) => [o.target, o.state]), [['c5', 'succeeded'], ['c4', 'succeeded']], 'the API lists the last two');
    t.same(readCatalog(agent.catalogPath).operations.map((o) => o.state), ['succeeded', 'succeeded'], 'the catalog holds two rows');
    t.same(listed.map((o) => o.id), [operations[4], operations[3]], 'the operations of c5 and c4');
    t.same(readCatalog(agent.catalogPath).operations.map((o) => o.id).sort(), [operations[3], operations[4]].sort());
    t.equal((await agent.request('GET', `/v1/operations/${operations[0]}`)).status, 404, 'c1\'s operation is gone');
    t.equal((await agent.request('GET', `/v1/volumes/c1`)).status, 200, 'the volumes stay; only operation rows go');
    t.equal(await agent.stop(), 0);
  });
}
