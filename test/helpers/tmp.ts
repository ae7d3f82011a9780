import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A unique temporary directory, removed by the returned cleanup. */
export async function tempDir(prefix = 'slacker-test-'): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

/** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
export function prng(seed: number): () => number {
  let x = (Math.imul(seed, 2654435761) + 1) >>> 0 || 1; // distinct for every 32-bit seed, never 0
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

export function randomBytes(n: number, seed: number): Buffer {
  const next = prng(seed);
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i + 4 <= n; i += 4) out.writeUInt32LE(next(), i);
  for (let i = n - (n % 4); i < n; i++) out[i] = next() & 0xff;
  return out;
}
