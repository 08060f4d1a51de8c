// `volagent create ID --size S --tenant T [--pool P]`: an empty sparse volume;
// with `--from-image IMAGE`, a clone of the image's Image-Volume (grown to
// --size when given), followed to its end when the pool copies.
import type { Started, Volume } from '../api-types.js';
import { segment } from '../agent-client.js';
import type { Command } from '../command.js';
import { parseCommandLine, printJson, print } from '../command.js';
import { ExitCode, UsageError } from '../exit-codes.js';
import { volumeSummary } from '../views.js';
import { holdInterrupts } from '../operation-wait.js';
import { reportClone } from './clone.js';

const usage = 'volagent create ID (--size SIZE | --from-image IMAGE [--size SIZE]) --tenant TENANT [--pool POOL] [--no-wait] [--json]';

export const createCommand: Command = {
  usage,
  summary: 'create an empty volume, or one from an image',
  async run(args, globals) {
    const cmd = parseCommandLine(args, globals, usage, {
      size: { type: 'string' }, tenant: { type: 'string' }, pool: { type: 'string' }, 'from-image': { type: 'string' }, 'no-wait': { type: 'boolean' },
    }, [1, 1]);
    const id = cmd.positionals[0]!;
    const tenant = cmd.required('tenant');
    const sizeBytes = cmd.size('size');
    const pool = cmd.string('pool');
    const image = cmd.string('from-image');
    if (image !== undefined) {
      const client = cmd.client();
      holdInterrupts();
      const reply = await client.put<Volume | Started>(`/v1/volumes/${segment(id)}`, {
        tenant, source: { image }, ...(sizeBytes !== undefined ? { sizeBytes } : {}), ...(pool !== undefined ? { pool } : {}),
      });
      await reportClone(cmd, client, id, reply, `volume ${id} from image ${image}`);
      return ExitCode.ok;
    }
    if (sizeBytes === undefined) throw new UsageError(`--size is required; usage: ${usage}`);
    const { status, body } = await cmd.client().put<Volume>(`/v1/volumes/${segment(id)}`, { tenant, sizeBytes, ...(pool !== undefined ? { pool } : {}) });
    if (cmd.json) printJson(body);
    else print(status === 200 ? `${volumeSummary(body)} (it existed already, identical)` : `created ${volumeSummary(body)}`);
    return ExitCode.ok;
  },
};
