// Privileged tests need root. Outside CI they skip and say why; under CI=true
// the lane driver counts any skip as a failure, so a missing privilege cannot
// pass silently.
import type { Test } from 'tap';

export function rootMissing(): string | undefined {
  return process.getuid?.() === 0 ? undefined : 'needs root (loop devices, mount, mkfs)';
}

/** Ends the test file with a skip when not root; returns true when the caller should stop. */
export function skipUnlessRoot(t: Test): boolean {
  const reason = rootMissing();
  if (reason === undefined) return false;
  t.plan(0, reason);
  return true;
}
