// Exit statuses of the volagent CLI, so scripts can tell what went wrong.
export const ExitCode = {
  ok: 0,
  /** The operation failed: an I/O error, no space, an agent fault. */
  failed: 1,
  /** The command line was wrong; nothing was attempted. */
  usage: 2,
  /** A named source, volume or file does not exist. */
  notFound: 3,
  /** The target already exists or is in use. */
  conflict: 4,
} as const;

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export class UsageError extends Error {
  override name = 'UsageError';
}
