// curl on the control socket as another user (setpriv), for the tests of who
// may do what: the agent sees that uid and those groups through SO_PEERCRED.
// Needs root (setpriv).
import { spawn } from 'node:child_process';

export interface CurlOutcome {
  /** curl's exit code. */
  code: number | null;
  status: number;
  body: any;
  stderr: string;
}

export interface CurlOptions {
  /** A file sent as the raw body (`--data-binary @FILE`), instead of JSON. */
  dataFile?: string;
}

/** curl on `socket` as `uid` (primary gid = uid, supplementary `groups`); a JSON `body` when given. */
export function curlAs(socket: string, uid: number, groups: number[], method: string, url: string, body?: unknown, options: CurlOptions = {}): Promise<CurlOutcome> {
  const payload = options.dataFile !== undefined ? ['-H', 'content-type: application/octet-stream', '--data-binary', `@${options.dataFile}`]
    : body === undefined ? [] : ['-H', 'content-type: application/json', '-d', JSON.stringify(body)];
  const args = [`--reuid=${uid}`, `--regid=${uid}`, `--groups=${groups.join(',')}`, '--', 'curl', '-s', '-S', '-X', method, '--unix-socket', socket,
    '-w', '\n%{http_code}', ...payload, `http://volagent${url}`];
  const child = spawn('setpriv', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const stdout: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout.push(d); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve) => child.once('close', (code) => {
    const text = Buffer.concat(stdout).toString('latin1');
    const at = text.lastIndexOf('\n');
    const content = text.slice(0, at);
    let parsed: unknown;
    try { parsed = content ? JSON.parse(content) : undefined; } catch { parsed = content; }
    resolve({ code, status: Number(text.slice(at + 1)), body: parsed, stderr });
  }));
}
