#!/usr/bin/env node
import('../dist/src/cli/volagent.js').then((cli) => cli.main(process.argv.slice(2))).then(
  (code) => { process.exitCode = code; },
  (error) => { console.error(`volagent: ${error?.message ?? error}`); process.exitCode = 1; },
);
