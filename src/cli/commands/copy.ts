// `volagent copy SRC DST [--json]`: one clone through the engine, like
// `cp --reflink=auto --sparse=always`, reporting the method the kernel allowed.
import { parseArgs } from 'node:util';

import { cloneFile } from '../../clone/clone-file.js';
import { formatBytes } from '../../common/bytes.js';
import { ExitCode, UsageError } from '../exit-codes.js';
import { ProgressBar } from '../progress-bar.js';

export const copyUsage = 'volagent copy SOURCE DESTINATION [--json]';

export async function copyCommand(args: string[]): Promise<ExitCode> {
  let parsed;
  try {
    parsed = parseArgs({ args, options: { json: { type: 'boolean', default: false } }, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const [source, destination, ...extra] = parsed.positionals;
  if (source === undefined || destination === undefined || extra.length > 0) throw new UsageError(`usage: ${copyUsage}`);

  const controller = new AbortController();
  const onSignal = (): void => controller.abort(new Error('interrupted'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const bar = parsed.values.json ? undefined : ProgressBar.forTerminal(process.stderr, 'copy');
  const started = process.hrtime.bigint();
  try {
    const result = await cloneFile(source, destination, {
      signal: controller.signal,
      onProgress: (p) => {
        if (p.method !== 'reflink') bar?.update(p.doneBytes, p.totalBytes);
      },
    });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    bar?.finish();
    if (parsed.values.json) {
      process.stdout.write(`${JSON.stringify({ source, destination, ...result, ms: Number(ms.toFixed(3)) })}\n`);
    } else {
      process.stdout.write(`${result.method}: ${source} -> ${destination}, ${formatBytes(result.bytesTotal)} `
        + `(${formatBytes(result.bytesCopied)} copied) in ${ms.toFixed(1)} ms\n`);
    }
    return ExitCode.ok;
  } finally {
    bar?.finish();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
