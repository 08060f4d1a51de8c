// pullExtents (src/remote/pull.ts) over a real NbdClient and a scripted
// server whose block status and reads the tests lay out: a data run that
// spans two block-status answers is read in whole chunks, chunks that read as
// zeros never reach the sink, ZERO extents are skipped and HOLE-only ones
// read, the chunk size follows the server's maximum, and a failure (a sink
// write, a block-status error) ends the pull only after the writes already
// started have finished.
import t from 'tap';
import type { Test } from 'tap';

import { AllocationState, Command } from '../../src/exports/nbd/protocol.js';
import type { Request } from '../../src/exports/nbd/protocol.js';
import { NbdClient } from '../../src/remote/nbd-client.js';
import { parseNbdUri } from '../../src/remote/nbd-uri.js';
import { pullExtents } from '../../src/remote/pull.js';
import type { PullSink } from '../../src/remote/pull.js';
import { scripted } from '../helpers/nbd-scripted-server.js';
import type { Negotiation } from '../helpers/nbd-scripted-server.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
/** No flags: allocated (or unknown), content unknown. */
const DATA = 0;
const HOLE_ZERO = AllocationState.HOLE | AllocationState.ZERO;

/** The export's bytes where it has data: each 512-byte block numbered. */
function content(offset: number, length: number): Buffer {
  const buffer = Buffer.alloc(length);
  for (let at = 0; at < length; at += 512) buffer.writeUInt32BE((offset + at) / 512 + 1, at);
  return buffer;
}

interface Layout {
  /** Block status answer for a request at `offset`. */
  status?(offset: number, length: number): Array<[number, number]> | { errno: number };
  /** Ranges whose reads come back as a hole chunk (zeros). */
  zeroReads?: Array<[number, number]>;
}

/** A scripted server with `layout`; resolves a connected client and the requests the server saw. */
async function serve(t: Test, layout: Layout, how: Negotiation = {}): Promise<{ client: NbdClient; requests: Request[] }> {
  const requests: Request[] = [];
  const { uri } = await scripted(t, async (peer) => {
    await peer.negotiate({ size: SIZE, ...how });
    for (;;) {
      const request = await peer.request();
      requests.push(request);
      const offset = Number(request.offset);
      if (request.type === Command.DISC) {
        peer.socket.end();
        return;
      }
      if (request.type === Command.BLOCK_STATUS) {
        const answer = layout.status!(offset, request.length);
        if ('errno' in answer) peer.error(request.cookie, answer.errno, 'no status');
        else peer.status(request.cookie, answer);
      } else if (layout.zeroReads?.some(([start, length]) => offset >= start && offset < start + length)) {
        peer.hole(request.cookie, offset, request.length);
      } else {
        peer.data(request.cookie, offset, content(offset, request.length));
      }
    }
  });
  const client = await NbdClient.connect(parseNbdUri(uri));
  t.teardown(() => client.close());
  return { client, requests };
}

function recordingSink(): PullSink & { writes: Array<[number, Buffer]> } {
  const writes: Array<[number, Buffer]> = [];
  return { writes, write: async (data, offset) => { writes.push([offset, data]); } };
}

const readsOf = (requests: Request[]): number[][] => requests.filter((r) => r.type === Command.READ).map((r) => [Number(r.offset), r.length]).sort((a, b) => a[0]! - b[0]!);

t.test('a data run over two block-status answers is read in whole chunks; a chunk that reads as zeros is not written', async (t) => {
  const { client, requests } = await serve(t, {
    // The server stops its first answer at 6 MiB, inside the run.
    status: (offset) => (offset === 0 ? [[6 * MiB, DATA]] : [[4 * MiB, DATA], [6 * MiB, HOLE_ZERO]]),
    zeroReads: [[4 * MiB, 4 * MiB]],
  });
  const sink = recordingSink();
  const progress: Array<[number, number]> = [];
  const result = await pullExtents(client, sink, { chunkBytes: 4 * MiB, queueDepth: 2, onProgress: (copied, known) => progress.push([copied, known]) });
  t.same(result, { sizeBytes: SIZE, dataBytes: 10 * MiB, extents: 1, zeroBytesSkipped: 4 * MiB, writtenBytes: 6 * MiB });
  t.same(requests.filter((r) => r.type === Command.BLOCK_STATUS).map((r) => [Number(r.offset), r.length]), [[0, SIZE], [6 * MiB, 10 * MiB]], 'block status from where each answer ended');
  t.same(readsOf(requests), [[0, 4 * MiB], [4 * MiB, 4 * MiB], [8 * MiB, 2 * MiB]], 'whole 4 MiB chunks across the answers, the rest at the run end');
  t.same(sink.writes.map(([offset, data]) => [offset, data.length]).sort((a, b) => a[0]! - b[0]!), [[0, 4 * MiB], [8 * MiB, 2 * MiB]], 'the zero chunk never reached the sink');
  for (const [offset, data] of sink.writes) t.ok(data.equals(content(offset, data.length)), `the bytes at ${offset}`);
  t.same(progress.at(-1), [10 * MiB, 10 * MiB]);
});

t.test('ZERO extents are skipped, HOLE without ZERO is read (its content is not known to be zero)', async (t) => {
  const { client, requests } = await serve(t, { status: () => [[MiB, AllocationState.HOLE], [MiB, AllocationState.ZERO], [2 * MiB, DATA], [12 * MiB, HOLE_ZERO]] });
  const sink = recordingSink();
  const result = await pullExtents(client, sink);
  t.same(result, { sizeBytes: SIZE, dataBytes: MiB + 2 * MiB, extents: 2, zeroBytesSkipped: 0, writtenBytes: 3 * MiB });
  t.same(readsOf(requests), [[0, MiB], [2 * MiB, MiB], [3 * MiB, MiB]], 'the HOLE and the data run read, in chunks of the default 1 MiB');
});

t.test('chunks are never larger than the server allows; without base:allocation the whole export is read', async (t) => {
  const { client, requests } = await serve(t, {}, { allocation: false, blockSize: [512, 4096, MiB] });
  t.equal(client.maxPayloadBytes, MiB);
  const result = await pullExtents(client, recordingSink(), { chunkBytes: 4 * MiB });
  t.same(result, { sizeBytes: SIZE, dataBytes: SIZE, extents: 1, zeroBytesSkipped: 0, writtenBytes: SIZE });
  t.same(readsOf(requests), Array.from({ length: 16 }, (_, i) => [i * MiB, MiB]), '16 reads of 1 MiB');
  t.equal(requests.filter((r) => r.type === Command.BLOCK_STATUS).length, 0, 'no block status asked');
});

t.test('a failing write ends the pull with its error, once the write in progress has finished', async (t) => {
  const { client } = await serve(t, { status: () => [[SIZE, DATA]] });
  let finishFirst!: () => void;
  const calls: number[] = [];
  let firstDone = false;
  const sink: PullSink = {
    write: (_data, offset) => {
      calls.push(offset);
      if (calls.length === 1) return new Promise<void>((resolve) => { finishFirst = () => { firstDone = true; resolve(); }; });
      const error = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      return Promise.reject(error);
    },
  };
  let settled = false;
  const pulling = pullExtents(client, sink, { chunkBytes: MiB, queueDepth: 2 });
  pulling.then(() => { settled = true; }, () => { settled = true; });
  for (let i = 0; i < 100 && calls.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 5));
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.equal(settled, false, 'not settled while a write is in progress');
  finishFirst();
  await t.rejects(pulling, { code: 'ENOSPC' });
  t.equal(firstDone, true);
  t.equal(calls.length, 2, 'no write after the failure');
  t.equal(client.destroyed, false, 'the client is the caller\'s to close');
});

t.test('a block-status error fails the pull with the Node-shaped error', async (t) => {
  const { client } = await serve(t, { status: () => ({ errno: 5 }) });
  const sink = recordingSink();
  await t.rejects(pullExtents(client, sink), { code: 'EIO', syscall: 'NBD_CMD_BLOCK_STATUS', message: /no status/ });
  t.same(sink.writes, []);
});
