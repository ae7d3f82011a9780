/** Human byte sizes: `1073741824`, `512K`, `100M`, `1G`, `2T` (binary units; a trailing `iB`/`B` is allowed). */
import { InvalidArgumentError } from './errors.js';

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

export function parseSize(text: string): number {
  const m = /^(\d+)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  const bytes = m ? Number(m[1]) * UNITS[m[2]!.toUpperCase()]! : NaN;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new InvalidArgumentError(`bad size ${JSON.stringify(text)}: use bytes or a number with K, M, G or T`);
  }
  return bytes;
}

export function formatSize(bytes: number): string {
  for (const [unit, n] of [
    ['T', 2 ** 40],
    ['G', 2 ** 30],
    ['M', 2 ** 20],
    ['K', 2 ** 10],
  ] as const) {
    if (bytes >= n) return `${(bytes / n).toFixed(bytes % n === 0 ? 0 : 1)}${unit}iB`;
  }
  return `${bytes}B`;
}
