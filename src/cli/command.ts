// What every agent command shares: its command-line parsing (with the global
// --json and --socket, which may also come before the command name), the
// client for the resolved socket, and the two output modes.
import { parseArgs } from 'node:util';

import { parseBytes } from '../common/bytes.js';
import { AgentClient } from './agent-client.js';
import type { ExitCode } from './exit-codes.js';
import { UsageError } from './exit-codes.js';
import { resolveSocket } from './socket-path.js';

/** Options given before the command name. */
export interface GlobalOptions {
  socket?: string | undefined;
  json: boolean;
}

export interface Command {
  /** One line: `volagent NAME ARGS [OPTIONS]`. */
  usage: string;
  summary: string;
  run(args: string[], globals: GlobalOptions): Promise<ExitCode>;
}

type OptionTypes = Record<string, { type: 'string' | 'boolean' }>;

export interface CommandLine {
  positionals: string[];
  json: boolean;
  /** The client for the socket from --socket, $VOLAGENT_SOCKET, ./var/control.sock or the default. */
  client(): AgentClient;
  string(name: string): string | undefined;
  /** A string option the command cannot do without. */
  required(name: string): string;
  flag(name: string): boolean;
  /** A size option in bytes ("10GiB", "4096"), or undefined when absent. */
  size(name: string): number | undefined;
}

/**
 * Parses a command's arguments: `options` beside --json and --socket, and
 * between `min` and `max` positionals. Every problem is a UsageError, thrown
 * before anything is contacted.
 */
export function parseCommandLine(args: string[], globals: GlobalOptions, usage: string, options: OptionTypes, positionals: [min: number, max: number]): CommandLine {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { ...options, json: { type: 'boolean' }, socket: { type: 'string' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const [min, max] = positionals;
  if (parsed.positionals.length < min || parsed.positionals.length > max) throw new UsageError(`usage: ${usage}`);
  const socket = (values.socket as string | undefined) ?? globals.socket;
  if (socket === '') throw new UsageError('--socket needs a path');
  const string = (name: string): string | undefined => values[name] as string | undefined;
  const line: CommandLine = {
    positionals: parsed.positionals,
    json: globals.json || values.json === true,
    client: () => new AgentClient(resolveSocket({ option: socket })),
    string,
    required: (name) => {
      const value = string(name);
      if (value === undefined || value === '') throw new UsageError(`--${name} is required; usage: ${usage}`);
      return value;
    },
    flag: (name) => values[name] === true,
    size: (name) => {
      const value = string(name);
      if (value === undefined) return undefined;
      try {
        return parseBytes(value);
      } catch (error) {
        throw new UsageError(`--${name}: ${(error as Error).message}`);
      }
    },
  };
  return line;
}

/** Writes a JSON body as one line on stdout: the agent's answer, as it sent it. */
export function printJson(body: unknown): void {
  process.stdout.write(`${JSON.stringify(body)}\n`);
}

export function print(text: string): void {
  process.stdout.write(text.endsWith('\n') || text === '' ? text : `${text}\n`);
}
