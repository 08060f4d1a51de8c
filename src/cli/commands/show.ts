// `volagent show ID`: one volume as "key: value" lines, then its snapshots.
// With --json, the volume as the agent sent it (`volagent snapshots --json`
// lists the snapshots).
import type { Snapshot, Volume } from '../api-types.js';
import { segment } from '../agent-client.js';
import type { Command } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode } from '../exit-codes.js';
import { indent } from '../table.js';
import { snapshotTable, volumeFields } from '../views.js';

const usage = 'volagent show ID [--json]';

export const showCommand: Command = {
  usage,
  summary: 'show one volume and its snapshots',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, {}, [1, 1]);
    const id = cmd.positionals[0]!;
    const client = cmd.client();
    const { body: volume } = await client.get<Volume>(`/v1/volumes/${segment(id)}`);
    if (cmd.json) {
      printJson(volume);
      return ExitCode.ok;
    }
    const { body: snapshots } = await client.get<Snapshot[]>(`/v1/volumes/${segment(id)}/snapshots`);
    print(volumeFields(volume) + (snapshots.length === 0 ? 'snapshots: none\n' : `snapshots:\n${indent(snapshotTable(snapshots))}`));
    return ExitCode.ok;
  },
};
