#!/usr/bin/env node
// Clones, fsyncs and copy steps run on libuv's pool; one FICLONE of a file
// with many extents can hold a thread for seconds, so the pool is larger than
// libuv's 4. It must be set before the pool first starts.
process.env.UV_THREADPOOL_SIZE ??= '16';
import('../dist/src/cli/volagentd.js').then((daemon) => daemon.main(process.argv.slice(2))).then(
  (code) => { process.exit(code); },
  (error) => { console.error(`volagentd: ${error?.stack ?? error}`); process.exit(1); },
);
