// Guest-only tap file: the addon's device-mapper calls against the guest's
// kernel, run by test/vm/device-mapper.test.ts with two virtio disks (vda
// data, vdb metadata). A thin-pool is made, a thin volume and a snapshot of
// it; the snapshot keeps the origin's first pattern after the origin is
// rewritten. Errors name the command and the device.
import { open, readFile, unlink } from 'node:fs/promises';

import t from 'tap';

import { native } from '../../../src/native/binding.js';
import { parseThinPoolStatus, parseThinStatus, thinPoolMessage, thinPoolTarget, thinTarget } from '../../../src/devices/dm-thin.js';
import type { DeviceNumber } from '../../../src/devices/dm-thin.js';
import { inVmGuest } from '../../helpers/vm.js';

const MiB = 1024 * 1024;
const PREFIX = 'volagent-test-';
const POOL = `${PREFIX}pool`;
const THIN = [`${PREFIX}thin0`, `${PREFIX}thin1`];
const THIN_SECTORS = (8 * MiB) / 512;

async function devNumber(disk: string): Promise<string> {
  return (await readFile(`/sys/block/${disk}/dev`, 'utf8')).trim();
}

async function sectors(disk: string): Promise<number> {
  return Number((await readFile(`/sys/block/${disk}/size`, 'utf8')).trim());
}

async function writePattern(node: string, byte: number): Promise<void> {
  const handle = await open(node, 'r+');
  try {
    await handle.write(Buffer.alloc(MiB, byte), 0, MiB, 0);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function readHead(node: string): Promise<Buffer> {
  const handle = await open(node, 'r');
  try {
    const buffer = Buffer.alloc(MiB);
    await handle.read(buffer, 0, MiB, 0);
    return buffer;
  } finally {
    await handle.close();
  }
}

/** Tears down whatever a run made, in dependency order; absent is fine. */
async function cleanup(): Promise<void> {
  for (const name of [...THIN].reverse()) {
    await native.dmRemove(name).catch(() => undefined);
    await unlink(`/dev/${name}`).catch(() => undefined);
  }
  await native.dmRemove(POOL).catch(() => undefined);
}

if (!inVmGuest()) {
  t.plan(0, 'guest-only file: runs inside the VM through runGuestTests() from test/vm/device-mapper.test.ts');
} else {
  t.teardown(cleanup);
  const data = await devNumber('vda');
  const meta = await devNumber('vdb');
  const dataSectors = await sectors('vda');
  // A thin-pool formats metadata whose first block is zero.
  const metaHandle = await open('/dev/vdb', 'r+');
  await metaHandle.write(Buffer.alloc(4096), 0, 4096, 0);
  await metaHandle.sync();
  await metaHandle.close();
  let poolDev = '';

  await t.test('create, load and resume a thin-pool; its info, table and status', async (t) => {
    const created = await native.dmCreate(POOL, `${PREFIX}uuid-pool`);
    t.match(created, { name: POOL, uuid: `${PREFIX}uuid-pool`, activeTable: false, inactiveTable: false, openCount: 0 });
    t.ok(created.major > 0, 'a device number');
    const loaded = await native.dmLoad(POOL, [thinPoolTarget(meta as DeviceNumber, data as DeviceNumber, dataSectors, {
      blockSectors: 128, lowWaterBlocks: 0, errorIfNoSpace: true, skipBlockZeroing: true,
    })]);
    t.match(loaded, { inactiveTable: true, activeTable: false });
    const resumed = await native.dmResume(POOL);
    t.match(resumed, { activeTable: true, inactiveTable: false, suspended: false, targetCount: 1 });
    poolDev = `${resumed.major}:${resumed.minor}`;
    const [status] = await native.dmTable(POOL);
    t.match(status, { start: 0, length: dataSectors, type: 'thin-pool' });
    t.match(parseThinPoolStatus(status!.params), {
      state: 'working', transactionId: 0, data: { used: 0, total: dataSectors / 128 }, mode: 'rw', noSpace: 'error', needsCheck: false,
    }, 'parsed: transaction id 0, no data block used, error_if_no_space');
    const [table] = await native.dmTable(POOL, true);
    t.match(table!.params, new RegExp(`^${meta} ${data} 128 0 `), 'the table as loaded, devices by major:minor');
    t.ok((await native.dmListDevices()).some((d) => d.name === POOL && `${d.major}:${d.minor}` === poolDev), 'listed');
    t.match(await native.dmInfo(POOL), { name: POOL, activeTable: true, openCount: 0 });
  });

  await t.test('a thin volume and its snapshot: the snapshot keeps the first pattern', async (t) => {
    t.equal(await native.dmMessage(POOL, 0, thinPoolMessage.createThin(0)), '', 'no answer text');
    const activate = async (name: string, id: number): Promise<string> => {
      await native.dmCreate(name);
      await native.dmLoad(name, [thinTarget(poolDev as DeviceNumber, id, THIN_SECTORS)]);
      const info = await native.dmResume(name);
      const node = `/dev/${name}`;
      await native.mknodBlock(node, info.major, info.minor, 0o600);
      return node;
    };
    const origin = await activate(THIN[0]!, 0);
    await writePattern(origin, 0xa1);
    // create_snap of an active origin: suspended around the message, resumed after.
    t.match(await native.dmSuspend(THIN[0]!), { suspended: true });
    await native.dmMessage(POOL, 0, thinPoolMessage.createSnap(1, 0));
    t.match(await native.dmResume(THIN[0]!), { suspended: false });
    const snapshot = await activate(THIN[1]!, 1);
    await writePattern(origin, 0xb2);
    t.same(await readHead(snapshot), Buffer.alloc(MiB, 0xa1), 'the snapshot reads the first pattern');
    t.same(await readHead(origin), Buffer.alloc(MiB, 0xb2), 'the origin reads the second');
    await native.dmMessage(POOL, 0, thinPoolMessage.setTransactionId(0, 1));
    t.match(parseThinPoolStatus((await native.dmTable(POOL))[0]!.params), { transactionId: 1, data: { used: 32 } }, 'transaction id 1; 32 blocks of 64 KiB: the snapshot keeps the first MiB, the rewrite took new blocks');
    t.match(parseThinStatus((await native.dmTable(THIN[0]!))[0]!.params), { state: 'working', mappedSectors: 2048 }, 'the origin maps 1 MiB');
  });

  await t.test('errors are Node-shaped and name the command and the device', async (t) => {
    await t.rejects(native.dmInfo(`${PREFIX}absent`), { code: 'ENXIO', syscall: 'DM_DEV_STATUS', path: `${PREFIX}absent` });
    await t.rejects(native.dmCreate(POOL), { code: 'EBUSY', syscall: 'DM_DEV_CREATE', path: POOL });
    await t.rejects(native.dmMessage(POOL, 0, 'set_transaction_id 5 6'), { code: 'EINVAL', syscall: 'DM_TARGET_MSG', path: POOL }, 'a wrong old transaction id');
    await t.rejects(native.dmMessage(POOL, 0, 'create_thin 0'), { name: 'Error', syscall: 'DM_TARGET_MSG', path: POOL }, 'a thin id in use');
    await t.rejects(native.dmRemove(POOL), { code: 'EBUSY', syscall: 'DM_DEV_REMOVE', path: POOL }, 'the pool is held by its thin devices');
    await native.dmCreate(`${PREFIX}bad`);
    await t.rejects(native.dmLoad(`${PREFIX}bad`, [{ start: 0, length: 8, type: 'thin-pool', params: 'nonsense' }]), { code: 'EINVAL', syscall: 'DM_TABLE_LOAD' });
    await native.dmRemove(`${PREFIX}bad`);
    await t.rejects(native.dmInfo('x'.repeat(128)), { name: 'TypeError' }, 'a name longer than DM_NAME_LEN never reaches the kernel');
    await t.rejects(native.dmLoad(POOL, [{ start: 0, length: 8, type: 'a-type-name-too-long', params: '' }]), { name: 'TypeError' });
  });

  await t.test('teardown: thin devices, their ids, then the pool; nothing of ours is left', async (t) => {
    for (const name of [...THIN].reverse()) {
      await native.dmRemove(name);
      await unlink(`/dev/${name}`);
    }
    await native.dmMessage(POOL, 0, 'delete 1');
    await native.dmMessage(POOL, 0, 'delete 0');
    t.match(parseThinPoolStatus((await native.dmTable(POOL))[0]!.params), { transactionId: 1, data: { used: 0 } }, 'every data block free again');
    await native.dmRemove(POOL);
    t.same((await native.dmListDevices()).filter((d) => d.name.startsWith(PREFIX)), []);
  });
}
