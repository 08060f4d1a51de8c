// Operations: `volagent ops` (running ones and the last finished, newest
// first), `volagent ops ID`, and `volagent cancel ID`.
import type { Operation } from '../api-types.js';
import { segment } from '../agent-client.js';
import type { Command } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode } from '../exit-codes.js';
import { operationFields, operationTable } from '../views.js';

const opsUsage = 'volagent ops [ID] [--json]';

export const opsCommand: Command = {
  usage: opsUsage,
  summary: 'list operations, or show one',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, opsUsage, {}, [0, 1]);
    const id = cmd.positionals[0];
    const client = cmd.client();
    if (id === undefined) {
      const { body } = await client.get<Operation[]>('/v1/operations');
      if (cmd.json) printJson(body);
      else print(operationTable(body));
    } else {
      const { body } = await client.get<Operation>(`/v1/operations/${segment(id)}`);
      if (cmd.json) printJson(body);
      else print(operationFields(body));
    }
    return ExitCode.ok;
  },
};

const cancelUsage = 'volagent cancel OPERATION [--json]';

export const cancelCommand: Command = {
  usage: cancelUsage,
  summary: 'cancel a running operation; answers once it has stopped and cleaned up',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, cancelUsage, {}, [1, 1]);
    const id = cmd.positionals[0]!;
    const { body } = await cmd.client().delete<Operation>(`/v1/operations/${segment(id)}`);
    if (cmd.json) printJson(body);
    else if (body.state === 'cancelled') print(`cancelled operation ${body.id} (${body.kind} ${body.target}); nothing was left behind`);
    else print(`operation ${body.id} (${body.kind} ${body.target}) had already ended: ${body.state}`);
    return ExitCode.ok;
  },
};
