// The `volagent` client: one function per command; errors become one line on
// stderr and an exit status from exit-codes.ts.
import { isAbortError } from '../clone/abort.js';
import { isSystemError } from '../native/system-error.js';
import { copyCommand, copyUsage } from './commands/copy.js';
import { ExitCode, UsageError } from './exit-codes.js';

type Command = (args: string[]) => Promise<ExitCode>;

const commands: Record<string, { run: Command; usage: string }> = {
  copy: { run: copyCommand, usage: copyUsage },
};

function usage(): string {
  return ['usage:', ...Object.values(commands).map((c) => `  ${c.usage}`)].join('\n');
}

export function exitCodeFor(error: unknown): ExitCode {
  if (error instanceof UsageError) return ExitCode.usage;
  if (isSystemError(error, 'ENOENT')) return ExitCode.notFound;
  if (isSystemError(error, 'EEXIST', 'EISDIR', 'EBUSY')) return ExitCode.conflict;
  return ExitCode.failed;
}

export async function main(argv: string[]): Promise<ExitCode> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    (name === undefined ? process.stderr : process.stdout).write(`${usage()}\n`);
    return name === undefined ? ExitCode.usage : ExitCode.ok;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`volagent: unknown command '${name}'\n${usage()}\n`);
    return ExitCode.usage;
  }
  try {
    return await command.run(rest);
  } catch (error) {
    const message = isAbortError(error) ? 'interrupted; nothing was left behind' : (error as Error).message;
    process.stderr.write(`volagent: ${message}\n`);
    return exitCodeFor(error);
  }
}
