// Exports: `volagent export VOLUME [--protocol nbd|block] [--read-only]
// [--direct-io]`, `volagent unexport ID` and `volagent exports`.
import type { Export } from '../api-types.js';
import { segment } from '../agent-client.js';
import type { Command } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode, UsageError } from '../exit-codes.js';
import { exportTable } from '../views.js';

const exportUsage = 'volagent export VOLUME [--protocol nbd|block] [--read-only] [--direct-io] [--json]';

export const exportCommand: Command = {
  usage: exportUsage,
  summary: 'export a volume over NBD, or as a local block device (a loop device, a thin volume\'s node)',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, exportUsage, {
      protocol: { type: 'string' }, 'read-only': { type: 'boolean' }, 'direct-io': { type: 'boolean' },
    }, [1, 1]);
    const protocol = cmd.string('protocol') ?? 'nbd';
    if (protocol !== 'nbd' && protocol !== 'block') throw new UsageError(`--protocol must be nbd or block, not ${JSON.stringify(protocol)}`);
    const { body } = await cmd.client().post<Export>(`/v1/volumes/${segment(cmd.positionals[0]!)}/exports`, {
      protocol, readOnly: cmd.flag('read-only'), ...(cmd.flag('direct-io') ? { directIo: true } : {}),
    });
    if (cmd.json) printJson(body);
    else print(`exported ${body.volume} as ${body.id}${body.readOnly ? ' (read-only)' : ''}: ${body.uri}`);
    return ExitCode.ok;
  },
};

const unexportUsage = 'volagent unexport ID [--json]';

export const unexportCommand: Command = {
  usage: unexportUsage,
  summary: 'remove an export (done also when it does not exist)',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, unexportUsage, {}, [1, 1]);
    await cmd.client().delete(`/v1/exports/${segment(cmd.positionals[0]!)}`);
    if (!cmd.json) print(`unexported ${cmd.positionals[0]}`);
    return ExitCode.ok;
  },
};

const exportsUsage = 'volagent exports [--json]';

export const exportsCommand: Command = {
  usage: exportsUsage,
  summary: 'list the exports with their URIs and NBD connections',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, exportsUsage, {}, [0, 0]);
    const { body } = await cmd.client().get<Export[]>('/v1/exports');
    if (cmd.json) printJson(body);
    else print(exportTable(body));
    return ExitCode.ok;
  },
};
