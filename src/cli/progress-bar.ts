// A one-line progress bar on a terminal (stderr), redrawn at most every 100 ms.
import { formatBytes } from '../common/bytes.js';

export class ProgressBar {
  private lastDraw = 0;
  private readonly started = Date.now();
  private drawn = false;

  constructor(private readonly stream: NodeJS.WriteStream, private readonly label: string) {}

  static forTerminal(stream: NodeJS.WriteStream, label: string): ProgressBar | undefined {
    return stream.isTTY ? new ProgressBar(stream, label) : undefined;
  }

  update(done: number, total: number, force = false): void {
    const now = Date.now();
    if (!force && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const width = Math.max(10, Math.min(40, (this.stream.columns ?? 80) - 60));
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    const filled = Math.round(fraction * width);
    const seconds = Math.max(0.001, (now - this.started) / 1000);
    const line = `${this.label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}% `
      + `${formatBytes(done)}/${formatBytes(total)} ${formatBytes(done / seconds)}/s`;
    this.stream.write(`\r${line}\x1b[K`);
    this.drawn = true;
  }

  finish(): void {
    if (this.drawn) this.stream.write('\r\x1b[K');
  }
}
