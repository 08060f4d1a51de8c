// A dm-flakey device over a disk (VM lane), for power cuts and I/O errors:
// `pass` lets every write through, `drop` drops them and reports them done
// (a power cut), `error` fails them with EIO. No udev runs in the guest, so
// dmsetup is told not to wait for it and makes the /dev/mapper node itself.
import { run } from './run.js';

export type FlakeyMode = 'pass' | 'drop' | 'error';

async function table(disk: string, mode: FlakeyMode): Promise<string> {
  const sectors = (await run('blockdev', ['--getsz', disk])).trim();
  if (mode === 'pass') return `0 ${sectors} flakey ${disk} 0 86400 0`;
  return `0 ${sectors} flakey ${disk} 0 0 86400 1 ${mode === 'drop' ? 'drop_writes' : 'error_writes'}`;
}

export class FlakeyDevice {
  private constructor(readonly name: string, readonly disk: string) {}

  /** Made over `disk`, passing every write. */
  static async create(name: string, disk: string): Promise<FlakeyDevice> {
    await run('dmsetup', ['create', '--noudevsync', name, '--table', await table(disk, 'pass')]);
    await run('dmsetup', ['mknodes', name]);
    return new FlakeyDevice(name, disk);
  }

  get path(): string {
    return `/dev/mapper/${this.name}`;
  }

  /**
   * Swaps the live table. Suspended with neither a flush nor a filesystem
   * freeze, so what is queued or still in the page cache meets the new table.
   */
  async swap(mode: FlakeyMode): Promise<void> {
    const next = await table(this.disk, mode);
    await run('dmsetup', ['suspend', '--noudevsync', '--nolockfs', '--noflush', this.name]);
    await run('dmsetup', ['load', this.name, '--table', next]);
    await run('dmsetup', ['resume', '--noudevsync', this.name]);
  }

  async remove(): Promise<void> {
    await run('dmsetup', ['remove', '--noudevsync', this.name]);
  }
}
