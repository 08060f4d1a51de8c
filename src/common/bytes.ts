// Byte counts: parsing of human sizes ("64KiB", "200GiB") and formatting.

const BINARY_UNITS: Record<string, number> = {
  B: 1, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30, TIB: 2 ** 40, PIB: 2 ** 50,
  K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50,
  KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, PB: 1e15,
};

/** Parses "4096", "64KiB", "1.5 GiB", "10G" (binary), "10GB" (decimal) into whole bytes. */
export function parseBytes(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(text);
  const unit = match?.[2]?.toUpperCase() || 'B';
  const factor = BINARY_UNITS[unit];
  if (!match || factor === undefined) throw new RangeError(`not a size: ${JSON.stringify(text)} (use bytes or a unit like 64KiB, 10GiB)`);
  const bytes = Number(match[1]) * factor;
  if (!Number.isSafeInteger(bytes)) throw new RangeError(`not a whole number of bytes: ${JSON.stringify(text)}`);
  return bytes;
}

const SUFFIXES = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1536 -> "1.5 KiB"; exact bytes below 1 KiB. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < SUFFIXES.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(value >= 100 ? 0 : 1)} ${SUFFIXES[unit]}`;
}
