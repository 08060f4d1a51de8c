// `volagent create ID --size S --tenant T [--pool P]`: an empty sparse volume.
import type { Volume } from '../api-types.js';
import { segment } from '../agent-client.js';
import type { Command } from '../command.js';
import { parseCommandLine, printJson, print } from '../command.js';
import { ExitCode, UsageError } from '../exit-codes.js';
import { volumeSummary } from '../views.js';

const usage = 'volagent create ID --size SIZE --tenant TENANT [--pool POOL] [--json]';

export const createCommand: Command = {
  usage,
  summary: 'create an empty volume',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, { size: { type: 'string' }, tenant: { type: 'string' }, pool: { type: 'string' } }, [1, 1]);
    const id = cmd.positionals[0]!;
    const tenant = cmd.required('tenant');
    const sizeBytes = cmd.size('size');
    if (sizeBytes === undefined) throw new UsageError(`--size is required; usage: ${usage}`);
    const pool = cmd.string('pool');
    const { status, body } = await cmd.client().put<Volume>(`/v1/volumes/${segment(id)}`, { tenant, sizeBytes, ...(pool !== undefined ? { pool } : {}) });
    if (cmd.json) printJson(body);
    else print(status === 200 ? `${volumeSummary(body)} (it existed already, identical)` : `created ${volumeSummary(body)}`);
    return ExitCode.ok;
  },
};
