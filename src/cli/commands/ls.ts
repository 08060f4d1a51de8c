// `volagent ls`: volumes and Image-Volumes, optionally filtered.
import type { Volume } from '../api-types.js';
import type { Command } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode, UsageError } from '../exit-codes.js';
import { volumeTable } from '../views.js';

const usage = 'volagent ls [--pool P] [--tenant T] [--kind volume|image] [--json]';

export const lsCommand: Command = {
  usage,
  summary: 'list volumes',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, { pool: { type: 'string' }, tenant: { type: 'string' }, kind: { type: 'string' } }, [0, 0]);
    const kind = cmd.string('kind');
    if (kind !== undefined && kind !== 'volume' && kind !== 'image') throw new UsageError(`--kind must be volume or image; usage: ${usage}`);
    const query = new URLSearchParams();
    for (const name of ['pool', 'tenant', 'kind']) {
      const value = cmd.string(name);
      if (value !== undefined) query.set(name, value);
    }
    const search = query.toString();
    const { body } = await cmd.client().get<Volume[]>(`/v1/volumes${search ? `?${search}` : ''}`);
    if (cmd.json) printJson(body);
    else print(volumeTable(body));
    return ExitCode.ok;
  },
};
