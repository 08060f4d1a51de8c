// `volagent check [--repair]`: how the catalog and the pools differ, one line
// per difference ("kind pool object: detail [action]"), then "clean" or
// "N differences". Exit 0 when nothing differs any more, 1 otherwise.
import type { CheckReport, Difference } from '../api-types.js';
import type { Command } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode } from '../exit-codes.js';

const usage = 'volagent check [--repair] [--json]';

export function differenceLine(d: Difference): string {
  const object = d.object ?? d.snapshot ?? d.volume ?? d.operation ?? '-';
  return `${d.kind} ${d.pool ?? '-'} ${object}: ${d.detail}${d.action ? ` [${d.action}]` : ''}`;
}

export function checkSummary(report: CheckReport): string {
  const left = report.differences.filter((d) => d.action === undefined).length;
  const repaired = report.differences.length - left;
  const plural = (n: number): string => `${n} difference${n === 1 ? '' : 's'}`;
  if (left === 0) return repaired === 0 ? 'clean' : `clean (${plural(repaired)} repaired)`;
  return `${plural(left)}${repaired > 0 ? ` (${repaired} repaired)` : ''}`;
}

export const checkCommand: Command = {
  usage,
  summary: 'compare the catalog with the pools; --repair settles the differences',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, { repair: { type: 'boolean' } }, [0, 0]);
    const client = cmd.client();
    const { body } = cmd.flag('repair') ? await client.post<CheckReport>('/v1/check/repair') : await client.get<CheckReport>('/v1/check');
    if (cmd.json) printJson(body);
    else print(body.differences.map((d) => `${differenceLine(d)}\n`).join('') + checkSummary(body));
    return body.clean ? ExitCode.ok : ExitCode.failed;
  },
};
