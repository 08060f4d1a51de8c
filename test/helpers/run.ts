// Runs a host command for test set-up and returns its stdout; a failure
// includes the command line and stderr.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export async function run(command: string, args: string[], options: { timeoutMs?: number } = {}): Promise<string> {
  try {
    const { stdout } = await execFileAsync(command, args, { timeout: options.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (error) {
    const e = error as Error & { stderr?: string };
    throw new Error(`${command} ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
  }
}

export interface Outcome {
  stdout: string;
  stderr: string;
  /** The exit status (non-zero when the command failed). */
  code: number;
}

/** Runs a client whose failure is the point of the test: resolves its output and exit status, never rejects on a non-zero exit. */
export async function outcome(command: string, args: string[]): Promise<Outcome> {
  try {
    const { stdout, stderr } = await execFileAsync(command, args, { timeout: 120_000, maxBuffer: 64 * 1024 * 1024 });
    return { stdout, stderr, code: 0 };
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; code?: number };
    return { stdout: e.stdout ?? '', stderr: e.stderr ?? '', code: typeof e.code === 'number' ? e.code : 1 };
  }
}
