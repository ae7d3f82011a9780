/**
 * Snapshot manifest: what a published snapshot reference points to. JSON, canonical (sorted,
 * no whitespace) so that publishing the same snapshot twice yields the same reference:
 *
 *   { "schema": "slacker.snapshot.v1",
 *     "size": <virtual bytes>, "chunkSize": <bytes>,
 *     "chunks": [[<index>, "sha256:..."], ...],      sorted by index; absent indices are holes
 *     "hints": { "sha256:...": "<store location>" },  only non-empty hints (packed stores)
 *     "prefetch": [<index>, ...] }                     optional: a startup profile (read-trace.ts),
 *                                                      fetched in this order when opened
 *
 * The reference is `sha256:` of these bytes, so a manifest fetched by reference is verified
 * like a chunk. Decoding checks every field: a manifest is input from the network.
 */
import { IoError } from '../common/errors.js';
import { digestOf, isDigest, type Digest } from '../common/digests.js';
import type { ChunkIndex } from './types.js';

export const MANIFEST_SCHEMA = 'slacker.snapshot.v1';

export interface Manifest {
  size: number;
  chunkSize: number;
  chunks: Map<ChunkIndex, Digest>;
  hints: Map<Digest, string>;
  /** Chunks to fetch as soon as the snapshot is opened, in this order (absent: none). */
  prefetch?: ChunkIndex[];
}

export function encodeManifest(m: Manifest): Buffer {
  const chunks = [...m.chunks].sort((a, b) => a[0] - b[0]);
  const hints = Object.fromEntries([...m.hints].filter(([, h]) => h !== '').sort(([a], [b]) => (a < b ? -1 : 1)));
  // No prefetch list, no key: manifests without a profile keep the references they always had.
  const prefetch = m.prefetch?.length ? { prefetch: m.prefetch } : {};
  return Buffer.from(
    JSON.stringify({ schema: MANIFEST_SCHEMA, size: m.size, chunkSize: m.chunkSize, chunks, hints, ...prefetch }),
  );
}

/** Parses and checks a manifest fetched as `ref`; throws IoError on any mismatch. */
export function decodeManifest(ref: Digest, bytes: Buffer): Manifest {
  const bad = (why: string): never => {
    throw new IoError(`snapshot manifest ${ref} is invalid: ${why}`, { context: { ref } });
  };
  if (digestOf(bytes) !== ref) bad('its content does not match the reference');
  let j: unknown;
  try {
    j = JSON.parse(bytes.toString('utf8'));
  } catch {
    return bad('not JSON');
  }
  const o = j as Record<string, unknown>;
  if (o.schema !== MANIFEST_SCHEMA) bad(`unknown schema ${JSON.stringify(o.schema)}`);
  const { size, chunkSize } = o;
  if (!Number.isSafeInteger(size) || (size as number) <= 0) bad('bad size');
  if (!Number.isSafeInteger(chunkSize) || (chunkSize as number) < 4096) bad('bad chunkSize');
  const count = Math.ceil((size as number) / (chunkSize as number));
  if (!Array.isArray(o.chunks)) bad('chunks is not a list');
  const chunks = new Map<ChunkIndex, Digest>();
  for (const e of o.chunks as unknown[]) {
    if (!Array.isArray(e) || e.length !== 2) return bad('bad chunk entry');
    const [idx, digest] = e as [unknown, unknown];
    if (!Number.isSafeInteger(idx) || (idx as number) < 0 || (idx as number) >= count)
      bad(`chunk index ${String(idx)} out of range`);
    if (typeof digest !== 'string' || !isDigest(digest)) bad(`bad digest ${String(digest)}`);
    chunks.set(idx as number, digest as Digest);
  }
  const hints = new Map<Digest, string>();
  if (o.hints !== undefined) {
    if (typeof o.hints !== 'object' || o.hints === null) bad('hints is not an object');
    for (const [d, h] of Object.entries(o.hints as Record<string, unknown>)) {
      if (!isDigest(d) || typeof h !== 'string' || h.length > 1024) bad('bad hint');
      hints.set(d as Digest, h as string);
    }
  }
  let prefetch: ChunkIndex[] | undefined;
  if (o.prefetch !== undefined) {
    if (!Array.isArray(o.prefetch) || o.prefetch.length > chunks.size) bad('prefetch is not a list of its chunks');
    for (const idx of o.prefetch as unknown[]) {
      if (typeof idx !== 'number' || !chunks.has(idx))
        bad(`prefetch names chunk ${String(idx)}, which it does not hold`);
    }
    prefetch = [...new Set(o.prefetch as ChunkIndex[])];
  }
  return { size: size as number, chunkSize: chunkSize as number, chunks, hints, prefetch };
}
