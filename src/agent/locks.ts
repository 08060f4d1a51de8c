// Per-object locks of one agent process. A clone or snapshot holds its source
// shared for as long as it reads it; delete and resize hold their object
// exclusive. Waiters are served in arrival order, so a delete waiting for
// readers is not starved by clones that arrive after it: those queue behind
// it and then find the source gone. Objects are named as in the pools
// (`vol`, `vol@snap`), so volumes and snapshots never share a lock.

export type LockMode = 'shared' | 'exclusive';

/** The lock was not granted within the wait; `holders` say who held it. */
export class LockBusyError extends Error {
  override name = 'LockBusyError';
  constructor(readonly key: string, readonly holders: string[]) {
    super(`${key} is in use by ${holders.join(', ') || 'another request'}`);
  }
}

interface Waiter {
  mode: LockMode;
  holder: string;
  grant: () => void;
}

interface LockState {
  exclusive: boolean;
  /** Holder labels (operation ids, or a request label), with multiplicity. */
  holders: string[];
  queue: Waiter[];
}

export type Release = () => void;

export class LockTable {
  private readonly locks = new Map<string, LockState>();

  /**
   * Takes `key` in `mode` for `holder`, waiting at most `waitMs` (0: only if
   * free now; Infinity: until granted). Resolves to the release function,
   * which must be called once.
   */
  acquire(key: string, mode: LockMode, holder: string, waitMs: number): Promise<Release> {
    const state = this.stateOf(key);
    if (state.queue.length === 0 && this.compatible(state, mode)) {
      this.take(state, mode, holder);
      return Promise.resolve(this.releaser(key, holder));
    }
    return new Promise<Release>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const waiter: Waiter = {
        mode,
        holder,
        grant: () => {
          if (timer) clearTimeout(timer);
          resolve(this.releaser(key, holder));
        },
      };
      state.queue.push(waiter);
      if (waitMs === Infinity) return;
      timer = setTimeout(() => {
        state.queue.splice(state.queue.indexOf(waiter), 1);
        reject(new LockBusyError(key, [...new Set(state.holders)]));
        this.grantWaiters(key, state);
      }, waitMs);
    });
  }

  /** Who holds `key` now (empty when free). */
  holdersOf(key: string): string[] {
    return [...new Set(this.locks.get(key)?.holders ?? [])];
  }

  isHeld(key: string): boolean {
    return (this.locks.get(key)?.holders.length ?? 0) > 0;
  }

  /** Every key held or waited for. */
  keys(): string[] {
    return [...this.locks.keys()];
  }

  private stateOf(key: string): LockState {
    let state = this.locks.get(key);
    if (!state) {
      state = { exclusive: false, holders: [], queue: [] };
      this.locks.set(key, state);
    }
    return state;
  }

  private compatible(state: LockState, mode: LockMode): boolean {
    if (state.holders.length === 0) return true;
    return mode === 'shared' && !state.exclusive;
  }

  private take(state: LockState, mode: LockMode, holder: string): void {
    state.exclusive = mode === 'exclusive';
    state.holders.push(holder);
  }

  private releaser(key: string, holder: string): Release {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const state = this.locks.get(key)!;
      state.holders.splice(state.holders.indexOf(holder), 1);
      if (state.holders.length === 0) state.exclusive = false;
      this.grantWaiters(key, state);
    };
  }

  private grantWaiters(key: string, state: LockState): void {
    while (state.queue.length > 0 && this.compatible(state, state.queue[0]!.mode)) {
      const waiter = state.queue.shift()!;
      this.take(state, waiter.mode, waiter.holder);
      waiter.grant();
    }
    if (state.holders.length === 0 && state.queue.length === 0) this.locks.delete(key);
  }
}
