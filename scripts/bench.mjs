// `npm run bench -- NAME`: runs dist/bench/NAME.js (built by the bench script's tsc step).
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const available = readdirSync(path.join(root, 'dist', 'bench')).filter((f) => f.endsWith('.js')).map((f) => f.slice(0, -3));
const [name, ...rest] = process.argv.slice(2);
if (!name || !available.includes(name)) {
  console.error(`usage: npm run bench -- NAME [args]; benchmarks: ${available.join(', ')}`);
  process.exit(2);
}
const bench = await import(pathToFileURL(path.join(root, 'dist', 'bench', `${name}.js`)).href);
process.exitCode = await bench.main(rest);
