// `volagent image SUBCOMMAND`: volume-backed images (docs/api.md "Images").
//   register IMAGE --volume V --tenant T [--mode clone|adopt] [--public] [--internal]
//   ls [--tenant T] | show IMAGE | rm IMAGE
//   upload IMAGE FILE|- --tenant T [--pool P] [--public] [--cache]
//   download IMAGE FILE|- [--tenant T]
// Upload streams the file (Content-Length and Expect: 100-continue, so a
// refusal comes before the data; `-` reads stdin, chunked). Download writes a
// new file sparsely (all-zero blocks stay holes), or stdout for `-`; a
// failed download removes its partial file. Both show a progress bar on a
// terminal; Ctrl-C stops them (the agent keeps nothing of a broken upload).
import { createReadStream } from 'node:fs';
import { open, stat, unlink } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';

import { writeSparse } from '../../pools/sparse-writer.js';
import type { Image, Started } from '../api-types.js';
import { segment } from '../agent-client.js';
import type { Command, GlobalOptions } from '../command.js';
import { parseCommandLine, print, printJson } from '../command.js';
import { ExitCode, UsageError } from '../exit-codes.js';
import { completeStarted, holdInterrupts } from '../operation-wait.js';
import { ProgressBar } from '../progress-bar.js';
import { imageFields, imageSummary, imageTable } from '../views.js';

const USAGES = {
  register: 'volagent image register IMAGE --volume VOLUME --tenant TENANT [--mode clone|adopt] [--public] [--internal] [--no-wait] [--json]',
  ls: 'volagent image ls [--tenant TENANT] [--json]',
  show: 'volagent image show IMAGE [--json]',
  rm: 'volagent image rm IMAGE [--json]',
  upload: 'volagent image upload IMAGE FILE|- --tenant TENANT [--pool POOL] [--public] [--cache] [--json]',
  download: 'volagent image download IMAGE FILE|- [--tenant TENANT] [--json]',
} as const;

type Subcommand = keyof typeof USAGES;

const usage = Object.values(USAGES).join('\n  ');

function imagePath(id: string, data = false): string {
  return `/v1/images/${segment(id)}${data ? '/data' : ''}`;
}

/** An AbortSignal that Ctrl-C fires while `work` runs. */
async function interruptible<T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSignal = (): void => controller.abort(new Error('interrupted'));
  process.once('SIGINT', onSignal);
  try {
    return await work(controller.signal);
  } finally {
    process.off('SIGINT', onSignal);
  }
}

const run: Record<Subcommand, (args: string[], globals: GlobalOptions) => Promise<ExitCode>> = {
  async register(args, globals) {
    const cmd = parseCommandLine(args, globals, USAGES.register, {
      volume: { type: 'string' }, tenant: { type: 'string' }, mode: { type: 'string' }, public: { type: 'boolean' }, internal: { type: 'boolean' },
      'no-wait': { type: 'boolean' },
    }, [1, 1]);
    const mode = cmd.string('mode') ?? 'clone';
    if (mode !== 'clone' && mode !== 'adopt') throw new UsageError(`--mode must be clone or adopt; usage: ${USAGES.register}`);
    const id = cmd.positionals[0]!;
    const definition = {
      volume: cmd.required('volume'), tenant: cmd.required('tenant'), mode,
      visibility: cmd.flag('public') ? 'public' : 'private', internal: cmd.flag('internal'),
    };
    const client = cmd.client();
    holdInterrupts();
    const { status, body } = await client.put<Image | Started>(imagePath(id), definition);
    if (status === 202) {
      await completeStarted(client, {
        json: cmd.json,
        noWait: cmd.flag('no-wait'),
        what: `registration of image ${id} (a copy of volume ${definition.volume})`,
        label: `image ${id}`,
        started: body as Started,
        // The same registration again, waiting: answered once the image is available.
        result: async () => (await client.put<Image>(`${imagePath(id)}?wait=true`, definition)).body,
        describe: (image) => `registered ${imageSummary(image)}`,
      });
      return ExitCode.ok;
    }
    const image = body as Image;
    if (cmd.json) printJson(image);
    else print(status === 200 ? `${imageSummary(image)} (it was registered already, identically)` : `registered ${imageSummary(image)}`);
    return ExitCode.ok;
  },

  async ls(args, globals) {
    const cmd = parseCommandLine(args, globals, USAGES.ls, { tenant: { type: 'string' } }, [0, 0]);
    const tenant = cmd.string('tenant');
    const { body } = await cmd.client().get<Image[]>(`/v1/images${tenant !== undefined ? `?tenant=${encodeURIComponent(tenant)}` : ''}`);
    if (cmd.json) printJson(body);
    else print(body.length === 0 ? 'no images' : imageTable(body));
    return ExitCode.ok;
  },

  async show(args, globals) {
    const cmd = parseCommandLine(args, globals, USAGES.show, {}, [1, 1]);
    const { body } = await cmd.client().get<Image>(imagePath(cmd.positionals[0]!));
    if (cmd.json) printJson(body);
    else print(imageFields(body));
    return ExitCode.ok;
  },

  async rm(args, globals) {
    const cmd = parseCommandLine(args, globals, USAGES.rm, {}, [1, 1]);
    const id = cmd.positionals[0]!;
    await cmd.client().delete(imagePath(id));
    if (cmd.json) printJson({ imageId: id, deleted: true });
    else print(`deleted image ${id} (its Image-Volume goes once nothing reads it)`);
    return ExitCode.ok;
  },

  async upload(args, globals) {
    const cmd = parseCommandLine(args, globals, USAGES.upload, {
      tenant: { type: 'string' }, pool: { type: 'string' }, public: { type: 'boolean' }, cache: { type: 'boolean' },
    }, [2, 2]);
    const [id, file] = cmd.positionals as [string, string];
    const query = new URLSearchParams({ tenant: cmd.required('tenant'), visibility: cmd.flag('public') ? 'public' : 'private' });
    const pool = cmd.string('pool');
    if (pool !== undefined) query.set('pool', pool);
    if (cmd.flag('cache')) query.set('cache', 'true');
    const fromStdin = file === '-';
    const sizeBytes = fromStdin ? undefined : (await stat(file)).size; // ENOENT: exit 3, nothing sent
    const data = fromStdin ? process.stdin : createReadStream(file, { highWaterMark: 1024 * 1024 });
    const bar = cmd.json ? undefined : ProgressBar.forTerminal(process.stderr, `upload ${id}`);
    const started = Date.now();
    const { body } = await interruptible((signal) => cmd.client().upload<Image>(`${imagePath(id, true)}?${query.toString()}`, data, {
      signal,
      ...(sizeBytes !== undefined ? { contentLength: sizeBytes } : {}),
      ...(bar ? { onProgress: (sent: number) => bar.update(sent, sizeBytes ?? sent) } : {}),
    })).finally(() => bar?.finish());
    if (cmd.json) printJson(body);
    else print(`uploaded ${imageSummary(body)} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return ExitCode.ok;
  },

  async download(args, globals) {
    const cmd = parseCommandLine(args, globals, USAGES.download, { tenant: { type: 'string' } }, [2, 2]);
    const [id, file] = cmd.positionals as [string, string];
    const tenant = cmd.string('tenant');
    const toStdout = file === '-';
    const client = cmd.client();
    const started = Date.now();
    const received = await interruptible(async (signal) => {
      const response = await client.download(`${imagePath(id, true)}${tenant !== undefined ? `?tenant=${encodeURIComponent(tenant)}` : ''}`, {}, { signal });
      const total = Number(response.headers['content-length'] ?? 0);
      const bar = cmd.json || toStdout ? undefined : ProgressBar.forTerminal(process.stderr, `download ${id}`);
      try {
        if (toStdout) {
          await pipeline(response, process.stdout);
          return total;
        }
        const handle = await open(file, 'wx', 0o644); // never overwrites: EEXIST is exit 4
        try {
          const { sizeBytes } = await writeSparse(handle.fd, file, response, bar ? { onProgress: (n) => bar.update(n, total) } : {});
          if (sizeBytes !== total) throw new Error(`the download ended after ${sizeBytes} of ${total} bytes`);
          await handle.truncate(sizeBytes);
          await handle.sync();
          return sizeBytes;
        } catch (error) {
          await unlink(file).catch(() => undefined);
          throw error;
        } finally {
          await handle.close();
        }
      } finally {
        bar?.finish();
      }
    });
    if (cmd.json) printJson({ imageId: id, file, bytes: received });
    else if (!toStdout) print(`downloaded image ${id} to ${file}: ${received} bytes in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return ExitCode.ok;
  },
};

export const imageCommand: Command = {
  usage,
  summary: `volume-backed images: ${Object.keys(USAGES).join(', ')} (volagent image SUBCOMMAND --help)`,
  async run(args, globals) {
    const [name, ...rest] = args;
    if (name === undefined || !(name in USAGES)) {
      throw new UsageError(`usage: ${usage}`);
    }
    return run[name as Subcommand](rest, globals);
  },
};
