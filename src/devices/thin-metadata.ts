// A read-only walker of dm-thin pool metadata, as the kernel lays it out
// (drivers/md/dm-thin-metadata.c, drivers/md/persistent-data/dm-btree*.c):
// which virtual blocks of a thin device are mapped. NBD BLOCK_STATUS reports
// the rest as holes, so this module errs towards throwing: any node that
// does not check out exactly is a ThinMetadataError, never a shorter answer.
//
// Metadata of an active pool changes under the reader: the kernel shadows
// and later frees the blocks a live `data_mapping_root` points at. Walk the
// `data_mapping_root` of a held snapshot (`reserve_metadata_snap`, then the
// superblock copy at `held_root`), whose blocks stay put until
// `release_metadata_snap`. The copy and the new held_root are on the disk
// when the message returns (dm-thin's pool_message commits after every
// message that succeeds), and the kernel writes through dm-bufio beneath the
// block device's page cache: read the metadata device with O_DIRECT.

/** Reads one 4 KiB metadata block by its block number. */
export type MetadataBlockReader = (blockNumber: number) => Promise<Buffer>;

/** dm-thin metadata blocks are always 4 KiB (DM_SM_METADATA_BLOCK_SIZE, 8 sectors). */
export const METADATA_BLOCK_BYTES = 4096;

/** Virtual blocks, in data-block units (the pool's block size). */
export interface MappedRun {
  block: number;
  count: number;
}

export interface ThinSuperblockInfo {
  transactionId: number;
  /** The pool's data block size, in 512-byte sectors. */
  dataBlockSectors: number;
  dataMappingRoot: number;
  deviceDetailsRoot: number;
  /** Block of the held metadata snapshot's superblock copy; 0 when none is held. */
  heldRoot: number;
  /** Size of the metadata device, in metadata blocks. */
  metadataBlocks: number;
}

/** Why the metadata was refused: not thin metadata at all, a block failing its checksum, a structurally bad node, or no such thin device. */
export type ThinMetadataFault = 'not-thin-metadata' | 'checksum' | 'malformed' | 'no-device';

export class ThinMetadataError extends Error {
  override name = 'ThinMetadataError';
  constructor(readonly fault: ThinMetadataFault, message: string, readonly block?: number) {
    super(block === undefined ? message : `metadata block ${block}: ${message}`);
  }
}

// thin_disk_superblock (dm-thin-metadata.c), little-endian, packed.
const SUPERBLOCK_MAGIC = 27022010n;
const SB_BLOCKNR = 8;
const SB_MAGIC = 32;
const SB_TRANS_ID = 48;
const SB_HELD_ROOT = 56;
const SB_DATA_MAPPING_ROOT = 320; // after two 128-byte space map roots at 64
const SB_DEVICE_DETAILS_ROOT = 328;
const SB_DATA_BLOCK_SIZE = 336;
const SB_METADATA_BLOCK_SIZE = 340;
const SB_METADATA_NR_BLOCKS = 344;
const SB_INCOMPAT_FLAGS = 360;
const METADATA_BLOCK_SECTORS = METADATA_BLOCK_BYTES / 512;

// Per-structure salts xor'd into dm_bm_checksum (dm-thin-metadata.c, dm-btree-spine.c).
const SUPERBLOCK_CSUM_XOR = 160774;
const BTREE_CSUM_XOR = 121107;

// node_header (dm-btree-internal.h): csum, flags, blocknr, nr_entries,
// max_entries, value_size, padding; then keys[max_entries], then values.
const NODE_HEADER_BYTES = 32;
const INTERNAL_NODE = 1;
const LEAF_NODE = 2;
/** Every tree walked here holds __le64 values: child blocks, device roots, block_time. */
const VALUE_SIZE = 8;
/** dm-btree.c's MAX_SPINE_DEPTH; a real tree of 4 KiB nodes is under 10 deep. */
const MAX_DEPTH = 64;

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[i] = c >>> 0;
  }
  return table;
})();

/**
 * dm_bm_checksum(&block[4], 4092, salt): the kernel's crc32c(~0, data, len),
 * which returns the register without the final inversion, xor'd with the
 * salt; stored as __le32 in the block's first four bytes.
 */
function blockChecksum(block: Buffer, salt: number): number {
  let crc = 0xffffffff;
  for (let i = 4; i < block.length; i++) crc = CRC32C_TABLE[(crc ^ block[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ salt) >>> 0;
}

function toSafeNumber(value: bigint, what: string, block?: number): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new ThinMetadataError('malformed', `${what} ${value} is beyond 2^53`, block);
  return Number(value);
}

/**
 * Decodes the superblock at block 0, or the held snapshot's copy at
 * `location` (= held_root). Checks the magic, the block's own location, the
 * checksum, the 4 KiB metadata block size and that no incompatible feature
 * is set (the kernel supports none, __check_incompat_features).
 */
export function decodeSuperblock(block: Buffer, location = 0): ThinSuperblockInfo {
  if (block.length !== METADATA_BLOCK_BYTES) {
    throw new ThinMetadataError('not-thin-metadata', `superblock is ${block.length} bytes, not ${METADATA_BLOCK_BYTES}`, location);
  }
  const magic = block.readBigUInt64LE(SB_MAGIC);
  if (magic !== SUPERBLOCK_MAGIC) {
    throw new ThinMetadataError('not-thin-metadata', `not dm-thin metadata: superblock magic is ${magic}, wanted ${SUPERBLOCK_MAGIC}`, location);
  }
  const blocknr = block.readBigUInt64LE(SB_BLOCKNR);
  if (blocknr !== BigInt(location)) {
    throw new ThinMetadataError('malformed', `superblock says it lives in block ${blocknr}`, location);
  }
  const stored = block.readUInt32LE(0);
  const computed = blockChecksum(block, SUPERBLOCK_CSUM_XOR);
  if (stored !== computed) {
    throw new ThinMetadataError('checksum', `superblock checksum ${stored} != computed ${computed}`, location);
  }
  const metadataBlockSectors = block.readUInt32LE(SB_METADATA_BLOCK_SIZE);
  if (metadataBlockSectors !== METADATA_BLOCK_SECTORS) {
    throw new ThinMetadataError('malformed', `metadata block size is ${metadataBlockSectors} sectors, not ${METADATA_BLOCK_SECTORS}`, location);
  }
  const incompat = block.readUInt32LE(SB_INCOMPAT_FLAGS);
  if (incompat !== 0) throw new ThinMetadataError('malformed', `unknown incompatible feature flags 0x${incompat.toString(16)}`, location);
  return {
    transactionId: toSafeNumber(block.readBigUInt64LE(SB_TRANS_ID), 'transaction id', location),
    dataBlockSectors: block.readUInt32LE(SB_DATA_BLOCK_SIZE),
    dataMappingRoot: toSafeNumber(block.readBigUInt64LE(SB_DATA_MAPPING_ROOT), 'data mapping root', location),
    deviceDetailsRoot: toSafeNumber(block.readBigUInt64LE(SB_DEVICE_DETAILS_ROOT), 'device details root', location),
    heldRoot: toSafeNumber(block.readBigUInt64LE(SB_HELD_ROOT), 'held root', location),
    metadataBlocks: toSafeNumber(block.readBigUInt64LE(SB_METADATA_NR_BLOCKS), 'metadata block count', location),
  };
}

interface BtreeNode {
  block: number;
  internal: boolean;
  keys: bigint[];
  data: Buffer;
  maxEntries: number;
}

function nodeValue(node: BtreeNode, index: number): bigint {
  return node.data.readBigUInt64LE(NODE_HEADER_BYTES + node.maxEntries * 8 + index * VALUE_SIZE);
}

/**
 * Reads and checks one btree node as dm-btree-spine.c's node_check does
 * (blocknr, checksum, max_entries fits the block, nr_entries <= max_entries,
 * a node type), plus what this walker relies on: exactly one type flag,
 * 8-byte values, an internal node has children, and keys strictly increase
 * within [low, high) — the range the parent's keys give this subtree.
 */
async function readNode(read: MetadataBlockReader, block: number, low: bigint, high: bigint | undefined): Promise<BtreeNode> {
  const data = await read(block);
  if (data.length !== METADATA_BLOCK_BYTES) throw new ThinMetadataError('malformed', `read ${data.length} bytes, not ${METADATA_BLOCK_BYTES}`, block);
  const blocknr = data.readBigUInt64LE(8);
  if (blocknr !== BigInt(block)) throw new ThinMetadataError('malformed', `node says it lives in block ${blocknr}`, block);
  const stored = data.readUInt32LE(0);
  const computed = blockChecksum(data, BTREE_CSUM_XOR);
  if (stored !== computed) throw new ThinMetadataError('checksum', `btree node checksum ${stored} != computed ${computed}`, block);
  const flags = data.readUInt32LE(4);
  if (flags !== INTERNAL_NODE && flags !== LEAF_NODE) throw new ThinMetadataError('malformed', `btree node flags ${flags} are neither internal (1) nor leaf (2)`, block);
  const nrEntries = data.readUInt32LE(16);
  const maxEntries = data.readUInt32LE(20);
  const valueSize = data.readUInt32LE(24);
  if (valueSize !== VALUE_SIZE) throw new ThinMetadataError('malformed', `btree node value size ${valueSize}, wanted ${VALUE_SIZE}`, block);
  if (NODE_HEADER_BYTES + (8 + valueSize) * maxEntries > METADATA_BLOCK_BYTES) throw new ThinMetadataError('malformed', `btree node max_entries ${maxEntries} does not fit a block`, block);
  if (nrEntries > maxEntries) throw new ThinMetadataError('malformed', `btree node has ${nrEntries} entries, max_entries ${maxEntries}`, block);
  const internal = flags === INTERNAL_NODE;
  if (internal && nrEntries === 0) throw new ThinMetadataError('malformed', 'internal btree node with no entries', block);
  const keys: bigint[] = [];
  for (let i = 0; i < nrEntries; i++) {
    const key = data.readBigUInt64LE(NODE_HEADER_BYTES + i * 8);
    const previous = keys[i - 1];
    if (previous !== undefined && key <= previous) throw new ThinMetadataError('malformed', `btree keys out of order: ${key} after ${previous}`, block);
    if (key < low || (high !== undefined && key >= high)) {
      throw new ThinMetadataError('malformed', `btree key ${key} outside its parent's range [${low}, ${high ?? 'end'})`, block);
    }
    keys.push(key);
  }
  return { block, internal, keys, data, maxEntries };
}

/**
 * Visits, in key order, every leaf entry of the single-level btree at `root`
 * whose key is in [start, end), reading only the nodes whose key range meets
 * it. An internal node's key i is a lower bound of child i's keys, and
 * key i+1 an (exclusive) upper bound (dm-btree.c lower_bound lookups).
 */
async function walkRange(
  read: MetadataBlockReader, root: number, start: bigint, end: bigint,
  visit: (key: bigint, node: BtreeNode, index: number) => void,
): Promise<void> {
  const path: number[] = [];
  const descend = async (block: number, low: bigint, high: bigint | undefined): Promise<void> => {
    if (path.includes(block)) throw new ThinMetadataError('malformed', `btree loop: block ${block} is its own ancestor (path ${path.join(' > ')})`, block);
    if (path.length >= MAX_DEPTH) throw new ThinMetadataError('malformed', `btree deeper than ${MAX_DEPTH} levels`, block);
    const node = await readNode(read, block, low, high);
    path.push(block);
    const { keys } = node;
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i]!;
      if (key >= end) break;
      if (!node.internal) {
        if (key >= start) visit(key, node, i);
        continue;
      }
      const next = keys[i + 1] ?? high;
      if (next !== undefined && next <= start) continue;
      await descend(toSafeNumber(nodeValue(node, i), 'child block', block), key, next);
    }
    path.pop();
  };
  await descend(root, 0n, undefined);
}

function checkCount(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${what} must be a non-negative integer, got ${value}`);
}

/**
 * Mapped runs of device `thinId` in [startBlock, endBlock), sorted, adjacent
 * runs merged. `dataMappingRoot` is the two-level tree of the superblock (or
 * of a held snapshot's copy): thin id -> root of the device's tree, virtual
 * block -> (data block << 24 | time). Throws ThinMetadataError when the
 * device is absent or any node read does not check out.
 */
export async function mappedRuns(
  read: MetadataBlockReader, dataMappingRoot: number, thinId: number, startBlock: number, endBlock: number,
): Promise<MappedRun[]> {
  checkCount(dataMappingRoot, 'dataMappingRoot');
  checkCount(thinId, 'thinId');
  checkCount(startBlock, 'startBlock');
  checkCount(endBlock, 'endBlock');
  if (endBlock < startBlock) throw new RangeError(`endBlock ${endBlock} is before startBlock ${startBlock}`);

  let deviceRoot: bigint | undefined;
  const id = BigInt(thinId);
  await walkRange(read, dataMappingRoot, id, id + 1n, (_key, node, index) => { deviceRoot = nodeValue(node, index); });
  if (deviceRoot === undefined) throw new ThinMetadataError('no-device', `thin device ${thinId} is not in the mapping tree at block ${dataMappingRoot}`);
  if (startBlock === endBlock) return [];

  const runs: MappedRun[] = [];
  let last: MappedRun | undefined;
  await walkRange(read, toSafeNumber(deviceRoot, `root of thin device ${thinId}`), BigInt(startBlock), BigInt(endBlock), (key) => {
    const block = Number(key); // < endBlock, a safe integer
    if (last !== undefined && last.block + last.count === block) last.count++;
    else runs.push(last = { block, count: 1 });
  });
  return runs;
}
