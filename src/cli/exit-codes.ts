// Exit statuses of the volagent CLI, so scripts can tell what went wrong
// without reading the message. docs/cli.md lists them.
export const ExitCode = {
  ok: 0,
  /** The operation failed: an I/O error, no space, an agent fault (5xx), a failed or cancelled operation. */
  failed: 1,
  /** The command line was wrong, or the agent found the request invalid (400, 413, 416, 422). */
  usage: 2,
  /** A named source, volume, snapshot, operation or file does not exist (404). */
  notFound: 3,
  /** The target already exists differently or is in use (409). */
  conflict: 4,
  /** No agent answers on the control socket: it is missing or nothing listens. */
  unreachable: 5,
  /** The agent (403) or the socket's permissions refused this user. */
  denied: 6,
} as const;

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export class UsageError extends Error {
  override name = 'UsageError';
}

/** The exit status for an agent answer of HTTP `status` (an error answer). */
export function exitCodeForStatus(status: number): ExitCode {
  if (status === 404) return ExitCode.notFound;
  if (status === 409) return ExitCode.conflict;
  if (status === 403) return ExitCode.denied;
  if (status >= 400 && status < 500) return ExitCode.usage;
  return ExitCode.failed;
}
