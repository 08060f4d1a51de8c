// `volagent resize ID --size S`: grow a volume (the agent refuses to shrink).
import { formatBytes } from '../../common/bytes.js';
import type { Volume } from '../api-types.js';
import { segment } from '../agent-client.js';
import type { Command } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode, UsageError } from '../exit-codes.js';

const usage = 'volagent resize ID --size SIZE [--json]';

export const resizeCommand: Command = {
  usage,
  summary: 'grow a volume',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, { size: { type: 'string' } }, [1, 1]);
    const id = cmd.positionals[0]!;
    const sizeBytes = cmd.size('size');
    if (sizeBytes === undefined) throw new UsageError(`--size is required; usage: ${usage}`);
    const { body } = await cmd.client().post<Volume>(`/v1/volumes/${segment(id)}/resize`, { sizeBytes });
    if (cmd.json) printJson(body);
    else print(`${body.id}: ${formatBytes(body.sizeBytes)} (${body.sizeBytes} bytes)`);
    return ExitCode.ok;
  },
};
