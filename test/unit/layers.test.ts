// The layer order of docs/design.md "Architecture", read from the source tree:
// transport -> domain -> catalog, pools, exports, remote -> devices, clone engine ->
// shared helpers (src/common) -> typed binding. A file imports its own layer
// and layers below it, never one above; type-only imports count the same.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import ts from 'typescript';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Every folder under src/. */
const FOLDERS = ['agent', 'api', 'catalog', 'cli', 'clone', 'common', 'daemon', 'devices', 'exports', 'native', 'pools', 'remote'];
const BELOW_TRANSPORT = ['agent', 'catalog', 'pools', 'exports', 'remote', 'devices', 'clone', 'common', 'native'];
const BELOW_DOMAIN = ['catalog', 'pools', 'exports', 'remote', 'devices', 'clone', 'common', 'native'];
const except = (...kept: string[]): string[] => FOLDERS.filter((folder) => !kept.includes(folder));

interface Rule {
  name: string;
  from: string[];
  mayNotImport: string[];
}

const RULES: Rule[] = [
  { name: 'nothing below the daemon imports src/daemon or src/cli', from: BELOW_TRANSPORT, mayNotImport: ['daemon', 'cli'] },
  { name: 'nothing below the transport imports src/api', from: BELOW_TRANSPORT, mayNotImport: ['api'] },
  { name: 'the catalog, pools, exports, remote and below never import the domain', from: BELOW_DOMAIN, mayNotImport: ['agent'] },
  { name: 'a backend never imports the exports', from: ['pools'], mayNotImport: ['exports'] },
  { name: 'devices serve the pools and the exports and import neither (nor the catalog or remote)', from: ['devices'], mayNotImport: ['catalog', 'pools', 'exports', 'remote'] },
  { name: 'the clone engine imports no catalog, backend, export or remote', from: ['clone'], mayNotImport: ['catalog', 'pools', 'exports', 'remote'] },
  { name: 'src/common imports only the typed binding', from: ['common'], mayNotImport: except('common', 'native') },
  { name: 'the typed binding imports no other layer', from: ['native'], mayNotImport: except('native') },
];

/** One import of a file under src/ by a file under src/, both relative to the repository. */
interface Edge {
  file: string;
  target: string;
}

const folderOf = (file: string): string | undefined => (file.startsWith('src/') ? file.split('/')[1] : undefined);

/** The files under src/ that `file` (a path like src/pools/file-pool.ts) imports, re-exports or loads with import(). */
function importsOf(file: string, text: string): Edge[] {
  return ts.preProcessFile(text, true, true).importedFiles
    .map(({ fileName }) => fileName)
    .filter((spec) => spec.startsWith('.'))
    .map((spec) => ({ file, target: path.posix.join(path.posix.dirname(file), spec).replace(/\.js$/, '.ts') }))
    .filter((edge) => folderOf(edge.target) !== undefined);
}

function violations(edges: readonly Edge[]): string[] {
  const found: string[] = [];
  for (const edge of edges) {
    const from = folderOf(edge.file)!;
    const to = folderOf(edge.target)!;
    for (const rule of RULES) {
      if (rule.from.includes(from) && rule.mayNotImport.includes(to)) found.push(`${edge.file} -> ${edge.target} (${rule.name})`);
    }
  }
  return found;
}

async function sourceFiles(dir: string): Promise<string[]> {
  const files: string[] = [];
  for (const entry of await readdir(path.join(root, dir), { withFileTypes: true })) {
    const relative = path.posix.join(dir, entry.name);
    if (entry.isDirectory()) files.push(...await sourceFiles(relative));
    else if (entry.name.endsWith('.ts')) files.push(relative);
  }
  return files;
}

async function sourceEdges(): Promise<Edge[]> {
  const edges: Edge[] = [];
  for (const file of await sourceFiles('src')) edges.push(...importsOf(file, await readFile(path.join(root, file), 'utf8')));
  return edges;
}

t.test('every folder under src/ has its place in the rules and is named in docs/design.md "Architecture"', async (t) => {
  const entries = await readdir(path.join(root, 'src'), { withFileTypes: true });
  t.same(entries.filter((entry) => !entry.isDirectory()).map((entry) => entry.name), [], 'no file directly under src/');
  t.same(entries.filter((entry) => entry.isDirectory()).map((entry) => entry.name).sort(), FOLDERS);
  const design = await readFile(path.join(root, 'docs', 'design.md'), 'utf8');
  const architecture = design.slice(design.indexOf('## Architecture'), design.indexOf('How the layers work together'));
  for (const folder of FOLDERS) t.match(architecture, `| \`src/${folder}/`, `src/${folder}/ has a row`);
});

t.test('the checker: type-only imports, re-exports and import() count; node: and packages do not', async (t) => {
  const text = [
    "import { readFile } from 'node:fs/promises';",
    "import pino from 'pino';",
    "import type { AgentConfig } from '../daemon/config.js';",
    "export { ApiError } from '../api/errors.js';",
    "const { loopBackingFile } = await import('../exports/loop-device.js');",
    "import { failpoint } from '../common/failpoints.js';",
    "import { Pool } from './pool.js';",
  ].join('\n');
  const edges = importsOf('src/pools/x-pool.ts', text);
  t.same(edges.map((edge) => edge.target), [
    'src/daemon/config.ts', 'src/api/errors.ts', 'src/exports/loop-device.ts', 'src/common/failpoints.ts', 'src/pools/pool.ts',
  ]);
  t.same(violations(edges), [
    'src/pools/x-pool.ts -> src/daemon/config.ts (nothing below the daemon imports src/daemon or src/cli)',
    'src/pools/x-pool.ts -> src/api/errors.ts (nothing below the transport imports src/api)',
    'src/pools/x-pool.ts -> src/exports/loop-device.ts (a backend never imports the exports)',
  ]);
  t.same(violations(importsOf('src/common/x.ts', "import { native } from '../native/binding.js';\nimport { cloneFile } from '../clone/clone-file.js';")), [
    'src/common/x.ts -> src/clone/clone-file.ts (src/common imports only the typed binding)',
  ]);
});

t.test('no file imports a layer above its own (docs/design.md "Architecture")', async (t) => {
  const edges = await sourceEdges();
  t.ok(edges.some((edge) => edge.file === 'src/exports/nbd/server.ts' && edge.target === 'src/common/unix-socket-path.ts'), 'the scan reads the source tree');
  t.same(violations(edges), []);
});
