// The one module that loads the C++ addon. Everything else imports `native`
// from here: typed, promise-returning, and with failures that carry the
// caller's JavaScript stack plus the kernel's errno fields.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import type { NativeAddon } from './addon-types.js';

export type * from './addon-types.js';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

/** Where the addon may be: an explicit override, then node-gyp's outputs from the package root. */
function candidatePaths(): string[] {
  const roots = [path.resolve(here, '..', '..', '..'), path.resolve(here, '..', '..')];
  const fromEnv = process.env.VOLAGENT_ADDON ? [path.resolve(process.env.VOLAGENT_ADDON)] : [];
  return [
    ...fromEnv,
    ...roots.flatMap((root) => [
      path.join(root, 'build', 'Release', 'volagent.node'),
      path.join(root, 'build', 'Debug', 'volagent.node'),
    ]),
  ];
}

function loadAddon(): NativeAddon {
  const tried: string[] = [];
  for (const candidate of candidatePaths()) {
    if (!existsSync(candidate)) {
      tried.push(`${candidate} (absent)`);
      continue;
    }
    try {
      return require(candidate) as NativeAddon;
    } catch (error) {
      tried.push(`${candidate} (${(error as Error).message})`);
    }
  }
  throw new Error(`volagent: cannot load the native addon (run \`npm run build\`); tried:\n  ${tried.join('\n  ')}`);
}

const addon = loadAddon();

/**
 * Rebases a native failure onto the stack captured before the call, so the
 * error points at the TypeScript caller instead of an empty async frame.
 */
function withCallerStack(failure: unknown, caller: Error): unknown {
  if (failure instanceof Error && caller.stack) {
    const callerFrames = caller.stack.split('\n').slice(1).join('\n');
    failure.stack = `${failure.name}: ${failure.message}\n${callerFrames}`;
  }
  return failure;
}

type AsyncFunctionKeys<T> = { [K in keyof T]: T[K] extends (...args: never[]) => Promise<unknown> ? K : never }[keyof T];

/** The addon's functions that return at once (no kernel wait): left unwrapped. */
const SYNC_FUNCTIONS = new Set(['alignedBuffer', 'socketName']);

function wrapAsync<T extends object>(raw: T): T {
  const wrapped: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(raw)) {
    if (typeof value !== 'function' || SYNC_FUNCTIONS.has(name)) {
      wrapped[name] = value;
      continue;
    }
    const fn = value as (...args: unknown[]) => Promise<unknown>;
    wrapped[name] = (...args: unknown[]): Promise<unknown> => {
      const caller = new Error();
      Error.captureStackTrace(caller, wrapped[name] as () => void);
      let pending: Promise<unknown>;
      try {
        pending = fn(...args);
      } catch (error) {
        return Promise.reject(withCallerStack(error, caller));
      }
      return pending.catch((error: unknown) => {
        throw withCallerStack(error, caller);
      });
    };
  }
  return wrapped as T;
}

export const native: NativeAddon = wrapAsync(addon);
export type NativeFunction = AsyncFunctionKeys<NativeAddon>;
