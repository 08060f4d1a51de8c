// The `volagent` client: one module per command under commands/; errors
// become one line on stderr (`volagent: CODE: message`) and an exit status
// from exit-codes.ts. With --json, stdout carries the agent's JSON body as it
// sent it, and on failure the error body too.
import { isAbortError } from '../common/abort.js';
import { isSystemError } from '../native/system-error.js';
import { AgentError, AgentUnreachableError } from './agent-client.js';
import type { Command, GlobalOptions } from './command.js';
import { checkCommand } from './commands/check.js';
import { cloneCommand } from './commands/clone.js';
import { copyCommand, copyUsage } from './commands/copy.js';
import { createCommand } from './commands/create.js';
import { exportCommand, exportsCommand, unexportCommand } from './commands/export.js';
import { imageCommand } from './commands/image.js';
import { installServiceCommand } from './commands/install-service.js';
import { lsCommand } from './commands/ls.js';
import { cancelCommand, opsCommand } from './commands/ops.js';
import { poolsCommand } from './commands/pools.js';
import { resizeCommand } from './commands/resize.js';
import { rmCommand } from './commands/rm.js';
import { showCommand } from './commands/show.js';
import { rmSnapshotCommand, snapshotCommand, snapshotsCommand } from './commands/snapshot.js';
import { versionCommand } from './commands/version.js';
import { ExitCode, exitCodeForStatus, UsageError } from './exit-codes.js';
import { OperationEndedError, StoppedWaitingError } from './operation-wait.js';

const commands: Record<string, Command> = {
  pools: poolsCommand,
  ls: lsCommand,
  show: showCommand,
  create: createCommand,
  clone: cloneCommand,
  resize: resizeCommand,
  snapshot: snapshotCommand,
  snapshots: snapshotsCommand,
  'rm-snapshot': rmSnapshotCommand,
  rm: rmCommand,
  image: imageCommand,
  export: exportCommand,
  unexport: unexportCommand,
  exports: exportsCommand,
  ops: opsCommand,
  cancel: cancelCommand,
  check: checkCommand,
  version: versionCommand,
  'install-service': installServiceCommand,
  copy: { usage: copyUsage, summary: 'clone a file through the clone engine, without the agent', run: (args, globals) => copyCommand(globals.json ? ['--json', ...args] : args) },
};

const GLOBAL_USAGE = 'volagent [--socket PATH] [--json] COMMAND [ARGS]';

function usage(): string {
  return [
    `usage: ${GLOBAL_USAGE}`,
    ...Object.values(commands).flatMap((c) => [`  ${c.usage}`, `      ${c.summary}`]),
    'The socket is --socket, else $VOLAGENT_SOCKET, else ./var/control.sock when it exists, else /run/volagent/control.sock.',
  ].join('\n');
}

export function exitCodeFor(error: unknown): ExitCode {
  if (error instanceof UsageError) return ExitCode.usage;
  if (error instanceof AgentUnreachableError) return error.reason === 'denied' ? ExitCode.denied : ExitCode.unreachable;
  if (error instanceof AgentError) return exitCodeForStatus(error.status);
  if (error instanceof OperationEndedError || error instanceof StoppedWaitingError) return ExitCode.failed;
  if (isSystemError(error, 'ENOENT')) return ExitCode.notFound;
  if (isSystemError(error, 'EEXIST', 'EISDIR', 'EBUSY')) return ExitCode.conflict;
  return ExitCode.failed;
}

/** The one stderr line for `error` (without "volagent: "), and its JSON body for --json. */
export function describeError(error: unknown): { line: string; body: unknown } {
  if (error instanceof AgentError || error instanceof AgentUnreachableError) return { line: `${error.code}: ${error.message}`, body: error.toBody() };
  if (error instanceof OperationEndedError) return { line: `${error.code}: ${error.message}`, body: error.operation };
  if (error instanceof StoppedWaitingError) {
    return { line: `${error.code}: ${error.message}`, body: { error: { code: error.code, message: error.message, details: { operation: error.operationId } } } };
  }
  if (error instanceof UsageError) return { line: error.message, body: { error: { code: 'USAGE', message: error.message, details: {} } } };
  const message = isAbortError(error) ? 'interrupted; nothing was left behind' : (error as Error)?.message ?? String(error);
  const code = (error as NodeJS.ErrnoException)?.code;
  return { line: message, body: { error: { code: typeof code === 'string' ? code : 'FAILED', message, details: {} } } };
}

/** Options before the command name: --socket PATH, --socket=PATH, --json, --help. */
function parseGlobals(argv: string[]): { globals: GlobalOptions; help: boolean; rest: string[] } {
  const globals: GlobalOptions = { json: false };
  let help = false;
  let i = 0;
  for (; i < argv.length && argv[i]!.startsWith('-'); i++) {
    const arg = argv[i]!;
    if (arg === '--json') globals.json = true;
    else if (arg === '--help' || arg === '-h') help = true;
    else if (arg === '--socket') {
      const value = argv[++i];
      if (value === undefined || value === '') throw new UsageError('--socket needs a path');
      globals.socket = value;
    } else if (arg.startsWith('--socket=')) {
      globals.socket = arg.slice('--socket='.length);
      if (globals.socket === '') throw new UsageError('--socket needs a path');
    } else throw new UsageError(`unknown option '${arg}' before the command; usage: ${GLOBAL_USAGE}`);
  }
  return { globals, help, rest: argv.slice(i) };
}

/** The arguments before a "--" (after it, everything is a positional). */
function optionArgs(args: string[]): string[] {
  const end = args.indexOf('--');
  return end === -1 ? args : args.slice(0, end);
}

export async function main(argv: string[]): Promise<ExitCode> {
  const jsonWanted = optionArgs(argv).includes('--json');
  try {
    const { globals, help, rest } = parseGlobals(argv);
    const [name, ...args] = rest;
    if (name === 'help' || (help && name === undefined)) {
      const command = args[0] === undefined ? undefined : commands[args[0]];
      process.stdout.write(command ? `usage: ${command.usage}\n${command.summary}\n` : `${usage()}\n`);
      return ExitCode.ok;
    }
    if (name === undefined) {
      process.stderr.write(`${usage()}\n`);
      return ExitCode.usage;
    }
    const command = commands[name];
    if (!command) {
      process.stderr.write(`volagent: unknown command '${name}'\n${usage()}\n`);
      return ExitCode.usage;
    }
    if (help || optionArgs(args).some((a) => a === '--help' || a === '-h')) {
      process.stdout.write(`usage: ${command.usage}\n${command.summary}\n`);
      return ExitCode.ok;
    }
    return await command.run(args, globals);
  } catch (error) {
    const { line, body } = describeError(error);
    process.stderr.write(`volagent: ${line}\n`);
    if (jsonWanted) process.stdout.write(`${JSON.stringify(body)}\n`);
    return exitCodeFor(error);
  }
}
