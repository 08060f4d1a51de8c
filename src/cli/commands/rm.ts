// `volagent rm ID`: delete a volume; done also when it does not exist (204).
import { segment } from '../agent-client.js';
import type { Command } from '../command.js';
import { parseCommandLine, print } from '../command.js';
import { ExitCode } from '../exit-codes.js';

const usage = 'volagent rm ID [--json]';

export const rmCommand: Command = {
  usage,
  summary: 'delete a volume (done also when it does not exist)',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, {}, [1, 1]);
    const id = cmd.positionals[0]!;
    await cmd.client().delete(`/v1/volumes/${segment(id)}`);
    if (!cmd.json) print(`deleted ${id}`);
    return ExitCode.ok;
  },
};
