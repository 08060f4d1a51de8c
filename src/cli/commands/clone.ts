// `volagent clone SOURCE ID --tenant T`: a new volume from a volume (or with
// --from-snapshot, a snapshot). A constant-time clone answers at once; a copy
// fallback answers 202 with an operation, which is followed to its end
// (progress bar on a terminal, Ctrl-C cancels) unless --no-wait.
import type { Started, Volume } from '../api-types.js';
import type { AgentClient, AgentReply } from '../agent-client.js';
import { segment } from '../agent-client.js';
import type { Command, CommandLine } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode } from '../exit-codes.js';
import { completeStarted, holdInterrupts } from '../operation-wait.js';
import { volumeSummary } from '../views.js';

const usage = 'volagent clone SOURCE ID --tenant TENANT [--size SIZE] [--from-snapshot] [--no-wait] [--json]';

export const cloneCommand: Command = {
  usage,
  summary: 'clone a volume or snapshot into a new volume',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, {
      tenant: { type: 'string' }, size: { type: 'string' }, 'from-snapshot': { type: 'boolean' }, 'no-wait': { type: 'boolean' },
    }, [2, 2]);
    const [source, id] = cmd.positionals as [string, string];
    const tenant = cmd.required('tenant');
    const sizeBytes = cmd.size('size');
    const fromSnapshot = cmd.flag('from-snapshot');
    const client = cmd.client();
    holdInterrupts();
    const reply = await client.put<Volume | Started>(`/v1/volumes/${segment(id)}`, {
      tenant, source: fromSnapshot ? { snapshot: source } : { volume: source }, ...(sizeBytes !== undefined ? { sizeBytes } : {}),
    });
    await reportClone(cmd, client, id, reply, `clone of ${fromSnapshot ? 'snapshot' : 'volume'} ${source} to ${id}`);
    return ExitCode.ok;
  },
};

/**
 * Prints the answer to a PUT of volume `id` with a source: the volume made
 * (201/200), or a started copy (202) followed to its end unless --no-wait.
 */
export async function reportClone(cmd: CommandLine, client: AgentClient, id: string, reply: AgentReply<Volume | Started>, what: string): Promise<void> {
  if (reply.status !== 202) {
    const volume = reply.body as Volume;
    if (cmd.json) printJson(volume);
    else print(reply.status === 200 ? `${volumeSummary(volume)} (it existed already, identical)` : `created ${volumeSummary(volume)}`);
    return;
  }
  await completeStarted(client, {
    json: cmd.json,
    noWait: cmd.flag('no-wait'),
    what,
    label: `clone ${id}`,
    started: reply.body as Started,
    result: async () => (await client.get<Volume>(`/v1/volumes/${segment(id)}`)).body,
    describe: (volume) => `created ${volumeSummary(volume)}`,
  });
}
