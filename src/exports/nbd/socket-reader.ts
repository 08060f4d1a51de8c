// Reads exact byte counts from a stream socket, for a protocol whose
// messages have fixed headers and declared lengths. Bytes wait in a queue of
// chunks; while more than `highWaterBytes` wait, the socket is paused, so a
// client that sends faster than the server works is held back by TCP rather
// than buffered. `discard` drops bytes without keeping them (a refused
// payload is never buffered whole).

export class ConnectionClosedError extends Error {
  override name = 'ConnectionClosedError';
}

interface Waiter {
  bytes: number;
  resolve(): void;
  reject(error: Error): void;
}

export interface ReadableSocket {
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  on(event: 'end' | 'close', listener: () => void): unknown;
  on(event: 'error', listener: (error: Error) => void): unknown;
  off(event: 'data', listener: (chunk: Buffer) => void): unknown;
  off(event: 'end' | 'close', listener: () => void): unknown;
  off(event: 'error', listener: (error: Error) => void): unknown;
  pause(): unknown;
  resume(): unknown;
}

export class SocketReader {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: Waiter | undefined;
  private ended: Error | undefined;
  private paused = false;

  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered > this.highWaterBytes && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    this.wake();
  };
  private readonly onEnd = (): void => this.end(new ConnectionClosedError('the client closed the connection'));
  private readonly onError = (error: Error): void => this.end(new ConnectionClosedError(`connection error: ${error.message}`));

  constructor(private readonly socket: ReadableSocket, private readonly highWaterBytes = 4 * 1024 * 1024) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  /**
   * Stops reading the socket, so that another layer (TLS) can take over its
   * bytes. False when bytes were already buffered past the last read: the
   * peer sent data it had no right to send yet.
   */
  detach(): boolean {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    return this.buffered === 0;
  }

  /** Exactly `bytes` bytes; rejects with ConnectionClosedError if the stream ends first. */
  async read(bytes: number): Promise<Buffer> {
    await this.waitFor(bytes);
    return this.take(bytes);
  }

  /** Drops `bytes` bytes as they arrive, holding at most one chunk. */
  async discard(bytes: number): Promise<void> {
    let left = bytes;
    while (left > 0) {
      await this.waitFor(1);
      const chunk = this.take(Math.min(left, this.buffered));
      left -= chunk.length;
    }
  }

  private waitFor(bytes: number): Promise<void> {
    if (this.buffered >= bytes) return Promise.resolve();
    if (this.ended) return Promise.reject(this.ended);
    if (this.paused && this.buffered < bytes) {
      this.paused = false;
      this.socket.resume();
    }
    return new Promise((resolve, reject) => {
      this.waiter = { bytes, resolve, reject };
    });
  }

  private take(bytes: number): Buffer {
    if (bytes === 0) return Buffer.alloc(0);
    let out: Buffer;
    const first = this.chunks[0]!;
    if (first.length >= bytes) {
      out = first.subarray(0, bytes);
      if (first.length === bytes) this.chunks.shift();
      else this.chunks[0] = first.subarray(bytes);
    } else {
      out = Buffer.allocUnsafe(bytes);
      let at = 0;
      while (at < bytes) {
        const chunk = this.chunks[0]!;
        const n = Math.min(chunk.length, bytes - at);
        chunk.copy(out, at, 0, n);
        at += n;
        if (n === chunk.length) this.chunks.shift();
        else this.chunks[0] = chunk.subarray(n);
      }
    }
    this.buffered -= bytes;
    if (this.paused && this.buffered <= this.highWaterBytes / 2) {
      this.paused = false;
      this.socket.resume();
    }
    return out;
  }

  private wake(): void {
    const waiter = this.waiter;
    if (waiter && this.buffered >= waiter.bytes) {
      this.waiter = undefined;
      waiter.resolve();
    }
  }

  private end(error: Error): void {
    this.ended ??= error;
    const waiter = this.waiter;
    if (waiter && this.buffered < waiter.bytes) {
      this.waiter = undefined;
      waiter.reject(this.ended);
    }
  }
}
