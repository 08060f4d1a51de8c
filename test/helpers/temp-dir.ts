import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';

/** A fresh directory under the system temp dir, removed when the test ends. */
export async function tempDir(t: Test, label = 'volagent-unit-'): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), label));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}
