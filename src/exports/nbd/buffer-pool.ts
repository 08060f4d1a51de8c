// Read buffers reused across requests: a fresh 256 KiB buffer per NBD read
// is a malloc and garbage for the collector each time. Buffers come in
// power-of-two sizes of at least 4 KiB, each its own 4 KiB-aligned memory
// (native.alignedBuffer: direct-I/O reads need it), and go back to the pool
// only once the socket has taken their bytes (the write callback); the pool
// keeps at most `maxPooledBytes`.
import { native } from '../../native/binding.js';

const MIN_CLASS = 4096;

function sizeClass(length: number): number {
  let size = MIN_CLASS;
  while (size < length) size *= 2;
  return size;
}

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  constructor(private readonly maxPooledBytes: number) {}

  /** A buffer of exactly `length` bytes (its contents are not zeroed). */
  take(length: number): Buffer {
    const size = sizeClass(length);
    const whole = this.free.get(size)?.pop();
    if (whole) this.pooledBytes -= size;
    return (whole ?? native.alignedBuffer(size)).subarray(0, length);
  }

  /** Returns a buffer from take(); nothing may use it afterwards. */
  give(buffer: Buffer): void {
    const size = buffer.buffer.byteLength;
    if (buffer.byteOffset !== 0 || size !== sizeClass(size) || this.pooledBytes + size > this.maxPooledBytes) return;
    const whole = Buffer.from(buffer.buffer, 0, size);
    const list = this.free.get(size) ?? [];
    list.push(whole);
    this.free.set(size, list);
    this.pooledBytes += size;
  }
}
