// The dm-thin metadata reader against metadata written by thin_restore
// (Debian thin-provisioning-tools) from XML made here with a seeded layout:
// every answer is compared with what the XML says, and damaged nodes must
// fail with a ThinMetadataError rather than answer short.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import {
  decodeSuperblock, mappedRuns, METADATA_BLOCK_BYTES, ThinMetadataError,
  type MappedRun, type MetadataBlockReader, type ThinSuperblockInfo,
} from '../../src/devices/thin-metadata.js';

const THIN_RESTORE = ['/usr/sbin/thin_restore', '/sbin/thin_restore', '/usr/bin/thin_restore'].find((p) => existsSync(p));

const METADATA_FILE_BYTES = 16 * 2 ** 20;
const TRANSACTION = 42;
const DATA_BLOCK_SECTORS = 128;
const BIG_DEVICE = 1;
const WIDE_DEVICE = 2;
const EMPTY_DEVICE = 5;
const SMALL_DEVICES = Array.from({ length: 300 }, (_, i) => 1000 + i);
/** A virtual block beyond 2^53: must be skipped by range, never converted. */
const UNSAFE_BLOCK = 2n ** 54n;

// ---- seeded layout and its XML ------------------------------------------

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}
const random = mulberry32(0x7e1a2010);
const randomInt = (min: number, max: number): number => min + Math.floor(random() * (max - min + 1));

interface Mapping { origin: number; data: number; length: number; time: number }
const layout = new Map<number, Mapping[]>();
let nextData = 0;
const mapping = (origin: number, length: number): Mapping => {
  const m = { origin, data: nextData, length, time: randomInt(0, 3) };
  nextData += length + (random() < 0.3 ? randomInt(1, 20) : 0);
  return m;
};

// Device 1: ~80k mapped blocks (over 252 * 252 leaf entries, so three levels),
// singles and ranges, often back to back with discontiguous data blocks.
{
  const list: Mapping[] = [];
  let cursor = randomInt(0, 5);
  let total = 0;
  while (total < 80_000) {
    const length = random() < 0.5 ? 1 : randomInt(2, 400);
    list.push(mapping(cursor, length));
    total += length;
    cursor += length + (random() < 0.4 ? 0 : randomInt(1, 50));
  }
  layout.set(BIG_DEVICE, list);
}
layout.set(WIDE_DEVICE, [mapping(0, 2), mapping(2 ** 33 + 5, 3), mapping(2 ** 40, 1)]);
layout.set(EMPTY_DEVICE, []);
for (const id of SMALL_DEVICES) layout.set(id, [mapping(id, 1)]);

function layoutXml(): string {
  const lines = [`<superblock uuid="" time="4" transaction="${TRANSACTION}" flags="0" version="2" data_block_size="${DATA_BLOCK_SECTORS}" nr_data_blocks="${nextData + 1000}">`];
  for (const [id, list] of layout) {
    const extra = id === WIDE_DEVICE ? 1 : 0;
    const mapped = list.reduce((sum, m) => sum + m.length, 0) + extra;
    lines.push(`  <device dev_id="${id}" mapped_blocks="${mapped}" transaction="0" creation_time="0" snap_time="0">`);
    for (const m of list) {
      lines.push(m.length === 1
        ? `    <single_mapping origin_block="${m.origin}" data_block="${m.data}" time="${m.time}"/>`
        : `    <range_mapping origin_begin="${m.origin}" data_begin="${m.data}" length="${m.length}" time="${m.time}"/>`);
    }
    if (extra) lines.push(`    <single_mapping origin_block="${UNSAFE_BLOCK}" data_block="${nextData}" time="0"/>`);
    lines.push('  </device>');
  }
  lines.push('</superblock>');
  return lines.join('\n') + '\n';
}

/** What the XML says device `id` maps in [start, end): clipped, adjacent runs merged. */
function expectedRuns(id: number, start: number, end: number): MappedRun[] {
  const runs: MappedRun[] = [];
  for (const m of layout.get(id) ?? []) {
    const block = Math.max(m.origin, start);
    const stop = Math.min(m.origin + m.length, end);
    if (stop <= block) continue;
    const last = runs.at(-1);
    if (last && last.block + last.count === block) last.count += stop - block;
    else runs.push({ block, count: stop - block });
  }
  return runs;
}

// ---- an independent view of the on-disk nodes, for shapes and damage ----

/** dm_bm_checksum: crc32c register (seed ~0, no final inversion) of bytes 4.., xor salt; bitwise, not the module's table. */
function resign(block: Buffer, salt = 121107): Buffer {
  let crc = 0xffffffff;
  for (let i = 4; i < block.length; i++) {
    crc ^= block[i]!;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  block.writeUInt32LE((crc ^ salt) >>> 0, 0);
  return block;
}

function flip(block: Buffer, offset: number, mask: number): void {
  block.writeUInt8(block.readUInt8(offset) ^ mask, offset);
}

interface RawNode { block: number; internal: boolean; keys: bigint[]; values: bigint[] }
function rawNode(block: number, data: Buffer): RawNode {
  const nr = data.readUInt32LE(16);
  const max = data.readUInt32LE(20);
  const keys = Array.from({ length: nr }, (_, i) => data.readBigUInt64LE(32 + 8 * i));
  const values = Array.from({ length: nr }, (_, i) => data.readBigUInt64LE(32 + 8 * max + 8 * i));
  return { block, internal: data.readUInt32LE(4) === 1, keys, values };
}

/** Every node of the single-level tree at `root`, by depth (0 = root), with its parent and index there. */
async function treeNodes(read: MetadataBlockReader, root: number): Promise<Array<RawNode & { depth: number; parent?: RawNode; index: number }>> {
  const out: Array<RawNode & { depth: number; parent?: RawNode; index: number }> = [];
  const visit = async (block: number, depth: number, parent: RawNode | undefined, index: number): Promise<void> => {
    const node = rawNode(block, await read(block));
    out.push({ ...node, depth, ...(parent ? { parent } : {}), index });
    if (node.internal) for (const [i, child] of node.values.entries()) await visit(Number(child), depth + 1, node, i);
  };
  await visit(root, 0, undefined, 0);
  return out;
}

// ---- fixture and cases -------------------------------------------------------

if (THIN_RESTORE === undefined) t.plan(0, 'needs thin_restore (Debian package thin-provisioning-tools)');
else await suite(THIN_RESTORE);

async function suite(thinRestore: string): Promise<void> {

  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'volagent-thin-metadata-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const xmlPath = path.join(dir, 'layout.xml');
  const metaPath = path.join(dir, 'metadata.bin');
  await fs.writeFile(xmlPath, layoutXml());
  await fs.writeFile(metaPath, Buffer.alloc(0));
  await fs.truncate(metaPath, METADATA_FILE_BYTES);
  execFileSync(thinRestore, ['-q', '-i', xmlPath, '-o', metaPath], { stdio: ['ignore', 'ignore', 'pipe'] });

  const handle = await fs.open(metaPath, 'r');
  t.teardown(() => handle.close());

  /** Reads a block from the file; `damaged` blocks are served from memory instead; `log` records every block read. */
  function reader(damaged = new Map<number, Buffer>(), log: number[] = []): MetadataBlockReader {
    return async (blockNumber) => {
      log.push(blockNumber);
      const replaced = damaged.get(blockNumber);
      if (replaced) return Buffer.from(replaced);
      const buffer = Buffer.alloc(METADATA_BLOCK_BYTES);
      const { bytesRead } = await handle.read(buffer, 0, METADATA_BLOCK_BYTES, blockNumber * METADATA_BLOCK_BYTES);
      return buffer.subarray(0, bytesRead);
    };
  }
  const read = reader();
  const superblock: ThinSuperblockInfo = decodeSuperblock(await read(0));
  const root = superblock.dataMappingRoot;

  const topNodes = await treeNodes(read, root);
  const deviceRoot = (id: number): number => {
    const leaf = topNodes.find((n) => !n.internal && n.keys.includes(BigInt(id)));
    if (!leaf) throw new Error(`device ${id} not in the top tree`);
    return Number(leaf.values[leaf.keys.indexOf(BigInt(id))]);
  };
  const bigNodes = await treeNodes(read, deviceRoot(BIG_DEVICE));
  const bigLeaves = bigNodes.filter((n) => !n.internal);
  const topDepth = Math.max(...topNodes.map((n) => n.depth)) + 1;
  const bigDepth = Math.max(...bigNodes.map((n) => n.depth)) + 1;

  // ---- cases ------------------------------------------------------------------

  t.test('the superblock thin_restore wrote decodes, checksum included, to the XML\'s values', async (t) => {
    t.match(superblock, { transactionId: TRANSACTION, dataBlockSectors: DATA_BLOCK_SECTORS, heldRoot: 0, metadataBlocks: METADATA_FILE_BYTES / METADATA_BLOCK_BYTES });
    t.ok(superblock.dataMappingRoot > 0 && superblock.deviceDetailsRoot > 0 && superblock.dataMappingRoot !== superblock.deviceDetailsRoot, 'two distinct tree roots');
  });

  t.test('the trees have the shapes the cases rely on', async (t) => {
    t.equal(topDepth, 2, 'top tree: 303 devices need an internal root');
    t.equal(bigDepth, 3, 'device 1: over 63504 mappings need three levels');
    t.ok(bigLeaves.length > 300, `device 1 spans ${bigLeaves.length} leaves`);
    const adjacent = layout.get(BIG_DEVICE)!.filter((m, i, list) => i > 0 && list[i - 1]!.origin + list[i - 1]!.length === m.origin);
    t.ok(adjacent.length > 100, `${adjacent.length} mappings start where the previous one ends`);
    const wide = await treeNodes(read, deviceRoot(WIDE_DEVICE));
    t.ok(wide.some((n) => !n.internal && n.keys.includes(UNSAFE_BLOCK)), 'device 2 holds a key past 2^53');
  });

  t.test('a whole device: every mapped block, adjacent mappings merged into one run', async (t) => {
    const list = layout.get(BIG_DEVICE)!;
    const end = list.at(-1)!.origin + list.at(-1)!.length + 10;
    const runs = await mappedRuns(read, root, BIG_DEVICE, 0, end);
    t.same(runs, expectedRuns(BIG_DEVICE, 0, end));
    t.ok(runs.length < list.length, `${runs.length} runs from ${list.length} mappings`);
    t.equal(runs.reduce((sum, r) => sum + r.count, 0), list.reduce((sum, m) => sum + m.length, 0), 'every mapped block counted once');
  });

  t.test('seeded random ranges agree with the XML', async (t) => {
    const list = layout.get(BIG_DEVICE)!;
    const limit = list.at(-1)!.origin + list.at(-1)!.length + 100;
    for (let i = 0; i < 300; i++) {
      const start = randomInt(0, limit);
      const end = start + (i % 3 === 0 ? randomInt(0, 8) : randomInt(1, 20_000));
      t.same(await mappedRuns(read, root, BIG_DEVICE, start, end), expectedRuns(BIG_DEVICE, start, end), `[${start}, ${end})`);
    }
  });

  t.test('a range inside one run returns that part only, reading one node per level', async (t) => {
    const inOneLeaf = (from: number, to: number): boolean => bigLeaves.some((l) => l.keys[0]! <= BigInt(from) && BigInt(to) <= l.keys.at(-1)!);
    const run = layout.get(BIG_DEVICE)!.find((m) => m.length >= 20 && inOneLeaf(m.origin + 3, m.origin + 16))!;
    const log: number[] = [];
    t.same(await mappedRuns(reader(new Map(), log), root, BIG_DEVICE, run.origin + 3, run.origin + 17), [{ block: run.origin + 3, count: 14 }]);
    t.equal(log.length, topDepth + bigDepth, `one node per level: ${topDepth} in the top tree, ${bigDepth} in the device's`);
  });

  t.test('64-bit virtual blocks: keys past 2^32 found, a key past 2^53 outside the range never converted', async (t) => {
    t.same(await mappedRuns(read, root, WIDE_DEVICE, 2 ** 33, 2 ** 33 + 10), [{ block: 2 ** 33 + 5, count: 3 }]);
    t.same(await mappedRuns(read, root, WIDE_DEVICE, 0, Number.MAX_SAFE_INTEGER), [{ block: 0, count: 2 }, { block: 2 ** 33 + 5, count: 3 }, { block: 2 ** 40, count: 1 }]);
    t.same(await mappedRuns(read, root, WIDE_DEVICE, 2 ** 40 + 1, Number.MAX_SAFE_INTEGER), []);
  });

  t.test('300 one-block devices under an internal top-tree node', async (t) => {
    const wrong: number[] = [];
    for (const id of SMALL_DEVICES) {
      const runs = await mappedRuns(read, root, id, 0, 5000);
      if (JSON.stringify(runs) !== JSON.stringify([{ block: id, count: 1 }])) wrong.push(id);
    }
    t.same(wrong, []);
  });

  t.test('an empty device has no runs', async (t) => {
    t.same(await mappedRuns(read, root, EMPTY_DEVICE, 0, 2 ** 40), []);
    t.same(await mappedRuns(read, root, EMPTY_DEVICE, 7, 7), []);
  });

  t.test('a device id not in the top tree is a no-device error', async (t) => {
    for (const id of [0, 3, 999, 1300, 2 ** 24 - 1]) {
      await t.rejects(mappedRuns(read, root, id, 0, 100), { name: 'ThinMetadataError', fault: 'no-device', message: new RegExp(`thin device ${id} is not in the mapping tree`) }, `id ${id}`);
    }
    await t.rejects(mappedRuns(read, root, 3, 10, 10), { name: 'ThinMetadataError', fault: 'no-device' }, 'even for an empty range');
  });

  t.test('arguments out of range are RangeErrors', async (t) => {
    await t.rejects(mappedRuns(read, root, BIG_DEVICE, -1, 10), RangeError);
    await t.rejects(mappedRuns(read, root, BIG_DEVICE, 10, 9), RangeError);
    await t.rejects(mappedRuns(read, root, BIG_DEVICE, 0, 2 ** 53), RangeError);
    await t.rejects(mappedRuns(read, root, 1.5, 0, 10), RangeError);
  });

  // Damage one leaf of device 1 (or a node above it); a query over that leaf
  // must throw, a query that does not reach it still answers.
  const leaf = bigLeaves[Math.floor(bigLeaves.length / 2)]!;
  const leafStart = Number(leaf.keys[0]);
  const leafEnd = Number(leaf.keys.at(-1)!) + 1;
  const leafParent = leaf.parent!;
  const farAway = [0, Number(bigLeaves[0]!.keys.at(-1)!) + 1] as const;
  const original = async (block: number): Promise<Buffer> => Buffer.from(await read(block));

  async function damaged(block: number, change: (b: Buffer) => void, sign = true): Promise<MetadataBlockReader> {
    const data = await original(block);
    change(data);
    if (sign) resign(data);
    return reader(new Map([[block, data]]));
  }

  t.test('a damaged leaf is an error over its range, not a shorter answer', async (t) => {
    const cases: Array<[string, (b: Buffer) => void, boolean, string, RegExp]> = [
      ['bytes flipped in the keys, checksum left stale', (b) => { flip(b, 32 + 8 * 3, 0xff); flip(b, 40 + 8 * 3, 0x01); }, false, 'checksum', /checksum \d+ != computed \d+/],
      ['a value flipped, checksum left stale', (b) => { flip(b, 4000, 0x10); }, false, 'checksum', /checksum/],
      ['keys out of order', (b) => { b.writeBigUInt64LE(b.readBigUInt64LE(32), 40); }, true, 'malformed', /keys out of order/],
      ['nr_entries > max_entries', (b) => { b.writeUInt32LE(b.readUInt32LE(20) + 1, 16); }, true, 'malformed', /entries, max_entries/],
      ['max_entries too large for a block', (b) => { b.writeUInt32LE(300, 20); b.writeUInt32LE(300, 16); }, true, 'malformed', /does not fit a block/],
      ['flags neither internal nor leaf', (b) => { b.writeUInt32LE(0, 4); }, true, 'malformed', /flags 0 are neither/],
      ['flags both internal and leaf', (b) => { b.writeUInt32LE(3, 4); }, true, 'malformed', /flags 3 are neither/],
      ['value_size not 8', (b) => { b.writeUInt32LE(16, 24); b.writeUInt32LE(126, 20); }, true, 'malformed', /value size 16, wanted 8/],
      ['blocknr field names another block', (b) => { b.writeBigUInt64LE(BigInt(leaf.block + 1), 8); }, true, 'malformed', new RegExp(`says it lives in block ${leaf.block + 1}`)],
      ['a key below the parent\'s key for this child', (b) => { b.writeBigUInt64LE(leafParent.keys[leaf.index]! - 1n, 32); }, true, 'malformed', /outside its parent's range/],
    ];
    for (const [what, change, sign, fault, message] of cases) {
      const bad = await damaged(leaf.block, change, sign);
      await t.rejects(mappedRuns(bad, root, BIG_DEVICE, leafStart, leafEnd), { name: 'ThinMetadataError', fault, block: leaf.block, message }, what);
      t.same(await mappedRuns(bad, root, BIG_DEVICE, ...farAway), expectedRuns(BIG_DEVICE, ...farAway), `${what}: a range elsewhere still answers`);
    }
    const short = reader(new Map([[leaf.block, (await original(leaf.block)).subarray(0, 512)]]));
    await t.rejects(mappedRuns(short, root, BIG_DEVICE, leafStart, leafEnd), { fault: 'malformed', message: /read 512 bytes, not 4096/ }, 'a short read');
  });

  t.test('damaged internal nodes: a loop back to an ancestor, an internal node without entries', async (t) => {
    const loop = await damaged(leafParent.block, (b) => { b.writeBigUInt64LE(BigInt(leafParent.block), 32 + 8 * b.readUInt32LE(20) + 8 * leaf.index); });
    await t.rejects(mappedRuns(loop, root, BIG_DEVICE, leafStart, leafEnd), { fault: 'malformed', block: leafParent.block, message: /btree loop/ });
    const empty = await damaged(leafParent.block, (b) => { b.writeUInt32LE(0, 16); });
    await t.rejects(mappedRuns(empty, root, BIG_DEVICE, leafStart, leafEnd), { fault: 'malformed', message: /internal btree node with no entries/ });
    const topLeaf = topNodes.find((n) => !n.internal && n.keys.includes(BigInt(BIG_DEVICE)))!;
    const staleTop = await damaged(topLeaf.block, (b) => { flip(b, 100, 1); }, false);
    await t.rejects(mappedRuns(staleTop, root, BIG_DEVICE, 0, 1), { name: 'ThinMetadataError', fault: 'checksum', block: topLeaf.block }, 'the top tree is checked too');
  });

  t.test('superblock: bad magic, stale checksum, wrong location', async (t) => {
    const block0 = await original(0);
    const badMagic = Buffer.from(block0);
    flip(badMagic, 32, 0x01);
    t.throws(() => decodeSuperblock(badMagic), { name: 'ThinMetadataError', fault: 'not-thin-metadata', message: /not dm-thin metadata: superblock magic is 27022011, wanted 27022010/ });
    t.throws(() => decodeSuperblock(Buffer.alloc(METADATA_BLOCK_BYTES)), { fault: 'not-thin-metadata', message: /magic is 0/ }, 'an all-zero block');
    const stale = Buffer.from(block0);
    stale.writeBigUInt64LE(BigInt(leaf.block), 320);
    t.throws(() => decodeSuperblock(stale), { fault: 'checksum', message: /superblock checksum/ }, 'data_mapping_root changed without a new checksum');
    t.same(decodeSuperblock(resign(Buffer.from(stale), 160774)).dataMappingRoot, leaf.block, 'the same change re-signed with the superblock salt decodes');
    t.throws(() => decodeSuperblock(block0, 9), { fault: 'malformed', message: /superblock says it lives in block 0/ }, 'block 0 read as a held copy at block 9');
    t.throws(() => decodeSuperblock(block0.subarray(0, 512)), { name: 'ThinMetadataError', fault: 'not-thin-metadata' }, 'a short block');
  });

  t.test('ThinMetadataError names the block in its message', async (t) => {
    const error = new ThinMetadataError('malformed', 'x', 12);
    t.equal(error.message, 'metadata block 12: x');
    t.ok(error instanceof Error);
  });
}
