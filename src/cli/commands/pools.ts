// `volagent pools`: the configured pools, their capabilities and capacity.
import type { Pool } from '../api-types.js';
import type { Command } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode } from '../exit-codes.js';
import { poolTable } from '../views.js';

const usage = 'volagent pools [--json]';

export const poolsCommand: Command = {
  usage,
  summary: 'list the pools: backend, reflink, constant-time clones, capacity',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, {}, [0, 0]);
    const { body } = await cmd.client().get<Pool[]>('/v1/pools');
    if (cmd.json) printJson(body);
    else print(poolTable(body));
    return ExitCode.ok;
  },
};
