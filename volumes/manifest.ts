/**
 * Snapshot manifest: what a published snapshot reference points to. JSON, canonical (no
 * whitespace, fixed order) so that publishing the same snapshot twice yields the same
 * reference. Written as v2; v1, which earlier versions published, is still read.
 *
 *   v2 { "schema": "slacker.snapshot.v2",
 *        "size": <virtual bytes>, "chunkSize": <bytes>,
 *        "hintPrefixes": ["<prefix>", ...],            the hints' shared beginnings (a pack's
 *                                                      reference, in an oci:// store)
 *        "chunks": [[<index>, "<sha256 hex>", <prefix no. or -1>, "<rest of the hint>"], ...],
 *                                                      sorted by index; absent indices are holes
 *        "prefetch": [<index>, ...] }                  optional: a startup profile (read-trace.ts),
 *                                                      fetched in this order when opened
 *   v1 { "schema": "slacker.snapshot.v1", "size", "chunkSize",
 *        "chunks": [[<index>, "sha256:..."], ...], "hints": { "sha256:...": "<hint>" }, "prefetch" }
 *
 * A chunk's store location hint is prefix + rest; no hint is prefix -1 and rest "". v1 spelled
 * out each chunk's digest and its hint, a pack's 71-character reference included, as keys of
 * their own: ~245 bytes a chunk, 676 KB for a build step's 2,760 chunks, encoded at every commit
 * and fetched and decoded at every pull (docs/BENCHMARKS.md, "A smaller manifest"). v2 names each
 * pack once: ~100 bytes a chunk.
 *
 * The reference is `sha256:` of these bytes, so a manifest fetched by reference is verified
 * like a chunk. Decoding checks every field: a manifest is input from the network.
 */
import { IoError } from '../common/errors.js';
import { digestOf, hexOf, isDigest, type Digest } from '../common/digests.js';
import type { ChunkIndex } from './types.js';

export const MANIFEST_SCHEMA = 'slacker.snapshot.v2';
/** What earlier versions wrote; still read. */
export const MANIFEST_SCHEMA_V1 = 'slacker.snapshot.v1';

const MAX_HINT = 1024;
const SHA256 = 'sha256:';

export interface Manifest {
  size: number;
  chunkSize: number;
  chunks: Map<ChunkIndex, Digest>;
  hints: Map<Digest, string>;
  /** Chunks to fetch as soon as the snapshot is opened, in this order (absent: none). */
  prefetch?: ChunkIndex[];
}

/**
 * Where a hint's shared beginning ends: up to its first ':' after a leading "sha256:<hex>" or
 * any other first field (an oci:// hint is `sha256:<pack>:<offset>:<length>[:br]`).
 */
function prefixLength(hint: string): number {
  const cut = hint.indexOf(':', hint.startsWith(SHA256) ? SHA256.length : 0);
  return cut < 0 ? 0 : cut;
}

export function encodeManifest(m: Manifest): Buffer {
  const prefixes: string[] = [];
  const prefixNo = new Map<string, number>();
  const chunks: [ChunkIndex, string, number, string][] = [];
  for (const [idx, digest] of [...m.chunks].sort((a, b) => a[0] - b[0])) {
    const hint = m.hints.get(digest) ?? '';
    let no = -1;
    let rest = '';
    if (hint !== '') {
      const cut = prefixLength(hint);
      const prefix = hint.slice(0, cut);
      no = prefixNo.get(prefix) ?? -1;
      if (no < 0) prefixNo.set(prefix, (no = prefixes.push(prefix) - 1));
      rest = hint.slice(cut);
    }
    chunks.push([idx, hexOf(digest), no, rest]);
  }
  // No prefetch list, no key.
  const prefetch = m.prefetch?.length ? { prefetch: m.prefetch } : {};
  return Buffer.from(
    JSON.stringify({
      schema: MANIFEST_SCHEMA,
      size: m.size,
      chunkSize: m.chunkSize,
      hintPrefixes: prefixes,
      chunks,
      ...prefetch,
    }),
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
  if (o.schema !== MANIFEST_SCHEMA && o.schema !== MANIFEST_SCHEMA_V1)
    bad(`unknown schema ${JSON.stringify(o.schema)}`);
  const { size, chunkSize } = o;
  if (!Number.isSafeInteger(size) || (size as number) <= 0) bad('bad size');
  if (!Number.isSafeInteger(chunkSize) || (chunkSize as number) < 4096) bad('bad chunkSize');
  const count = Math.ceil((size as number) / (chunkSize as number));
  if (!Array.isArray(o.chunks)) bad('chunks is not a list');
  const checkIndex = (idx: unknown): void => {
    if (!Number.isSafeInteger(idx) || (idx as number) < 0 || (idx as number) >= count)
      bad(`chunk index ${String(idx)} out of range`);
  };
  const chunks = new Map<ChunkIndex, Digest>();
  const hints = new Map<Digest, string>();
  if (o.schema === MANIFEST_SCHEMA_V1) {
    for (const e of o.chunks as unknown[]) {
      if (!Array.isArray(e) || e.length !== 2) return bad('bad chunk entry');
      const [idx, digest] = e as [unknown, unknown];
      checkIndex(idx);
      if (typeof digest !== 'string' || !isDigest(digest)) bad(`bad digest ${String(digest)}`);
      chunks.set(idx as number, digest as Digest);
    }
    if (o.hints !== undefined) {
      if (typeof o.hints !== 'object' || o.hints === null) bad('hints is not an object');
      for (const [d, h] of Object.entries(o.hints as Record<string, unknown>)) {
        if (!isDigest(d) || typeof h !== 'string' || h.length > MAX_HINT) bad('bad hint');
        hints.set(d as Digest, h as string);
      }
    }
  } else {
    const prefixes = o.hintPrefixes;
    if (!Array.isArray(prefixes) || prefixes.some((p) => typeof p !== 'string' || p.length > MAX_HINT))
      bad('hintPrefixes is not a list of strings');
    let last = -1;
    for (const e of o.chunks as unknown[]) {
      if (!Array.isArray(e) || e.length !== 4) return bad('bad chunk entry');
      const [idx, hex, no, rest] = e as [unknown, unknown, unknown, unknown];
      checkIndex(idx);
      if ((idx as number) <= last) bad(`chunk ${String(idx)} out of order or twice`);
      last = idx as number;
      const digest = `${SHA256}${String(hex)}`;
      if (typeof hex !== 'string' || !isDigest(digest)) return bad(`bad digest ${String(hex)}`);
      if (!Number.isSafeInteger(no) || (no as number) < -1 || (no as number) >= (prefixes as string[]).length)
        bad(`chunk ${String(idx)} names no hint prefix ${String(no)}`);
      if (typeof rest !== 'string' || rest.length > MAX_HINT || (no === -1 && rest !== ''))
        bad(`bad hint of chunk ${String(idx)}`);
      const hint = no === -1 ? '' : (prefixes as string[])[no as number]! + (rest as string);
      const known = hints.get(digest);
      if (known !== undefined && known !== hint) bad(`chunk ${String(idx)}: two hints for ${digest}`);
      chunks.set(idx as number, digest);
      if (hint !== '') hints.set(digest, hint);
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
