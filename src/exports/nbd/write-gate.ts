// The gate every write-type command of one export passes (WRITE, TRIM,
// WRITE_ZEROES; the connections of the export share it). While the gate is
// held no such command starts: each waits at the gate, in arrival order, and
// its reply waits with it. A hold drains the commands that had started
// (`drained`), so that once it resolves the export's target changes no more
// until the hold is released; the waiting commands then start in the order
// they arrived. Reads, FLUSH and BLOCK_STATUS never wait here.

/** The gate waited longer than its bound for commands in flight. */
export class WriteDrainTimeoutError extends Error {
  override name = 'WriteDrainTimeoutError';
  constructor(readonly inFlight: number, readonly waitedMs: number) {
    super(`${inFlight} write(s) in flight did not finish within ${waitedMs} ms`);
  }
}

/** A command waiting at the gate gave up: its connection closed. */
export class WriteAbandonedError extends Error {
  override name = 'WriteAbandonedError';
}

interface Waiter {
  resolve: (leave: () => void) => void;
  reject: (error: Error) => void;
  signal: AbortSignal | undefined;
  onAbort: () => void;
}

export class WriteGate {
  private inFlight = 0;
  private holds = 0;
  private readonly waiting: Waiter[] = [];
  private readonly drainWaiters = new Set<() => void>();

  /** Write-type commands started and not yet ended. */
  get inFlightCount(): number {
    return this.inFlight;
  }

  /** Write-type commands waiting at the gate. */
  get waitingCount(): number {
    return this.waiting.length;
  }

  get held(): boolean {
    return this.holds > 0;
  }

  /**
   * Resolves when a write-type command may start, with the function to call
   * once it has ended (exactly once). Rejects with WriteAbandonedError when
   * `signal` aborts while the command waits.
   */
  enter(signal?: AbortSignal): Promise<() => void> {
    if (this.holds === 0 && this.waiting.length === 0) return Promise.resolve(this.started());
    if (signal?.aborted) return Promise.reject(new WriteAbandonedError('the connection closed while its write was held'));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve, reject, signal,
        onAbort: () => {
          const at = this.waiting.indexOf(waiter);
          if (at >= 0) this.waiting.splice(at, 1);
          reject(new WriteAbandonedError('the connection closed while its write was held'));
        },
      };
      signal?.addEventListener('abort', waiter.onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  /**
   * Stops write-type commands from starting from now on (holds nest).
   * Returns the release, idempotent; when the last hold is released the
   * waiting commands start in arrival order.
   */
  hold(): () => void {
    this.holds += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.holds -= 1;
      if (this.holds === 0) this.admitWaiting();
    };
  }

  /** Resolves once no write-type command is in flight; rejects with WriteDrainTimeoutError after `timeoutMs`. Meant under a hold. */
  drained(timeoutMs: number): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.drainWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.drainWaiters.delete(done);
        reject(new WriteDrainTimeoutError(this.inFlight, timeoutMs));
      }, timeoutMs);
      this.drainWaiters.add(done);
    });
  }

  private started(): () => void {
    this.inFlight += 1;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.inFlight -= 1;
      if (this.inFlight === 0) for (const done of [...this.drainWaiters]) done();
    };
  }

  private admitWaiting(): void {
    for (const waiter of this.waiting.splice(0)) {
      waiter.signal?.removeEventListener('abort', waiter.onAbort);
      waiter.resolve(this.started());
    }
  }
}
