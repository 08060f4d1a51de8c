// `volagent version`: the agent's version and API version, and this client's.
import { createRequire } from 'node:module';

import type { Version } from '../api-types.js';
import type { Command } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode } from '../exit-codes.js';

// dist/src/cli/commands/ -> the package root.
const { version: CLIENT_VERSION } = createRequire(import.meta.url)('../../../../package.json') as { version: string };

const usage = 'volagent version [--json]';

export const versionCommand: Command = {
  usage,
  summary: "the agent's version and API version",
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, {}, [0, 0]);
    const { body } = await cmd.client().get<Version>('/v1/version');
    if (cmd.json) printJson(body);
    else print(`agent ${body.version} (API ${body.api}), client ${CLIENT_VERSION}`);
    return ExitCode.ok;
  },
};
