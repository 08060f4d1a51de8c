// Builds the addon with node-gyp against the headers of the running Node,
// never downloading them: npm's `nodedir` setting, else the headers installed
// beside the node binary (Debian and the official tarballs both ship them).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);

function headersPrefix() {
  const configured = process.env.npm_config_nodedir;
  if (configured && existsSync(path.join(configured, 'include', 'node', 'node_api.h'))) return configured;
  const besideBinary = path.resolve(path.dirname(process.execPath), '..');
  if (existsSync(path.join(besideBinary, 'include', 'node', 'node_api.h'))) return besideBinary;
  return undefined;
}

function nodeGypEntry() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  try { candidates.push(require.resolve('node-gyp/bin/node-gyp.js')); } catch { /* not a dependency */ }
  const npmDir = path.resolve(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm');
  candidates.push(path.join(npmDir, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  const found = candidates.find((c) => existsSync(c));
  if (!found) {
    console.error(`volagent: node-gyp not found; tried:\n  ${candidates.join('\n  ')}`);
    process.exit(1);
  }
  return found;
}

const prefix = headersPrefix();
const args = [nodeGypEntry(), 'rebuild', `--jobs=${process.env.JOBS ?? '2'}`];
if (prefix) args.push(`--nodedir=${prefix}`);
const result = spawnSync(process.execPath, args, { stdio: 'inherit' });
process.exit(result.status ?? 1);
