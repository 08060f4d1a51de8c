// Group fsync of one directory: an fsync(2) makes durable what was done
// before it started, so a caller that asks while one runs waits for the next
// one, which starts when the running one ends and serves every caller that
// asked in between. Eight publishes in flight pay two or three directory
// fsyncs instead of eight, each still answered only once its rename is durable.

export class SharedFsync {
  private running: Promise<void> | undefined;
  private next: Promise<void> | undefined;

  constructor(private readonly fsync: () => Promise<void>) {}

  /** Resolves once an fsync that started after this call has ended (rejects with its error). */
  request(): Promise<void> {
    if (!this.running) return this.start();
    this.next ??= this.running.catch(() => undefined).then(() => {
      this.next = undefined;
      return this.start();
    });
    return this.next;
  }

  private start(): Promise<void> {
    const run: Promise<void> = this.fsync().finally(() => {
      if (this.running === run) this.running = undefined;
    });
    this.running = run;
    return run;
  }
}
