// Snapshots: `volagent snapshot VOLUME SID` (made like a clone: at once, or
// through an operation that is followed unless --no-wait), `volagent
// snapshots VOLUME` and `volagent rm-snapshot VOLUME SID`.
import { formatBytes } from '../../common/bytes.js';
import type { Snapshot, Started } from '../api-types.js';
import { segment } from '../agent-client.js';
import type { Command } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode } from '../exit-codes.js';
import { completeStarted, holdInterrupts } from '../operation-wait.js';
import { snapshotTable } from '../views.js';

function snapshotSummary(s: Snapshot): string {
  return `snapshot ${s.id} of ${s.volume}: ${formatBytes(s.sizeBytes)} in pool ${s.pool}${s.cloneMethod ? `, by ${s.cloneMethod}` : ''}`;
}

const snapshotUsage = 'volagent snapshot VOLUME SID [--no-wait] [--json]';

export const snapshotCommand: Command = {
  usage: snapshotUsage,
  summary: 'take a read-only snapshot of a volume',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, snapshotUsage, { 'no-wait': { type: 'boolean' } }, [2, 2]);
    const [volume, sid] = cmd.positionals as [string, string];
    const client = cmd.client();
    const snapshotPath = `/v1/volumes/${segment(volume)}/snapshots/${segment(sid)}`;
    holdInterrupts();
    const reply = await client.put<Snapshot | Started>(snapshotPath);
    if (reply.status !== 202) {
      const snapshot = reply.body as Snapshot;
      if (cmd.json) printJson(snapshot);
      else print(reply.status === 200 ? `${snapshotSummary(snapshot)} (it existed already)` : `created ${snapshotSummary(snapshot)}`);
      return ExitCode.ok;
    }
    await completeStarted(client, {
      json: cmd.json,
      noWait: cmd.flag('no-wait'),
      what: `snapshot ${sid} of ${volume}`,
      label: `snapshot ${sid}`,
      started: reply.body as Started,
      result: async () => (await client.get<Snapshot>(snapshotPath)).body,
      describe: (snapshot) => `created ${snapshotSummary(snapshot)}`,
    });
    return ExitCode.ok;
  },
};

const snapshotsUsage = 'volagent snapshots VOLUME [--json]';

export const snapshotsCommand: Command = {
  usage: snapshotsUsage,
  summary: "list a volume's snapshots",
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, snapshotsUsage, {}, [1, 1]);
    const { body } = await cmd.client().get<Snapshot[]>(`/v1/volumes/${segment(cmd.positionals[0]!)}/snapshots`);
    if (cmd.json) printJson(body);
    else print(snapshotTable(body));
    return ExitCode.ok;
  },
};

const rmSnapshotUsage = 'volagent rm-snapshot VOLUME SID [--json]';

export const rmSnapshotCommand: Command = {
  usage: rmSnapshotUsage,
  summary: 'delete a snapshot (done also when it does not exist)',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, rmSnapshotUsage, {}, [2, 2]);
    const [volume, sid] = cmd.positionals as [string, string];
    await cmd.client().delete(`/v1/volumes/${segment(volume)}/snapshots/${segment(sid)}`);
    if (!cmd.json) print(`deleted snapshot ${sid} of ${volume}`);
    return ExitCode.ok;
  },
};
