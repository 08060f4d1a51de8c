// Failpoints: named places just before or after a durable step where a test
// can make the agent die (SIGKILL to itself, as a crash or power loss would
// stop it) or fail with an injected error. Armed only by the environment,
// read once at start:
//
//   VOLAGENT_FAILPOINTS="thin.after-message=kill,thin.before-commit=error:EIO"
//
// Unarmed (the variable unset, always in production) a failpoint is one
// comparison against an empty map.
import { constants as osConstants } from 'node:os';

import { systemError } from '../native/system-error.js';

export type FailpointAction = { kind: 'kill' } | { kind: 'error'; code: keyof typeof osConstants.errno & string };

export const FAILPOINTS_ENV = 'VOLAGENT_FAILPOINTS';

/** Parses the variable's value; a malformed entry is an error (a test that arms nothing must not pass). */
export function parseFailpoints(text: string | undefined): Map<string, FailpointAction> {
  const armed = new Map<string, FailpointAction>();
  for (const entry of (text ?? '').split(',').map((e) => e.trim()).filter(Boolean)) {
    const match = /^([a-z0-9.-]+)=(kill|error:([A-Z0-9]+))$/.exec(entry);
    const code = match?.[3];
    if (!match || (code !== undefined && !(code in osConstants.errno))) {
      throw new Error(`${FAILPOINTS_ENV}: "${entry}" is not NAME=kill or NAME=error:ECODE`);
    }
    armed.set(match[1]!, code === undefined ? { kind: 'kill' } : { kind: 'error', code: code as keyof typeof osConstants.errno & string });
  }
  return armed;
}

const armed = parseFailpoints(process.env[FAILPOINTS_ENV]);

/** Dies or throws here when `name` is armed; otherwise nothing. */
export function failpoint(name: string): void {
  if (armed.size === 0) return;
  const action = armed.get(name);
  if (!action) return;
  if (action.kind === 'kill') {
    process.kill(process.pid, 'SIGKILL');
    // SIGKILL to oneself is delivered before kill(2) returns to user space; nothing below runs.
  }
  if (action.kind === 'error') throw systemError(action.code, 'failpoint', name);
}
