/**
 * Content addresses: the `Digest` type (`sha256:<64 hex>`), checking one, and computing them:
 * of one buffer on the spot, or of many buffers off the event loop in one libuv threadpool job
 * (native/digests.c), for verifying a fetched batch of chunks without hashing on the loop.
 */
import { createHash } from 'node:crypto';
import { loadAddon } from './native-addon.js';

/** Content address of a chunk, blob or layer: `sha256:<64 hex>`. */
export type Digest = string & { readonly __brand: 'Digest' };

const DIGEST = /^sha256:[0-9a-f]{64}$/;
const PREFIX = 'sha256:';

export function isDigest(s: string): s is Digest {
  return DIGEST.test(s);
}

/** The digest of one buffer, hashed now on this thread (small or rare buffers). */
export function digestOf(data: Buffer): Digest {
  return `${PREFIX}${createHash('sha256').update(data).digest('hex')}` as Digest;
}

/** The 64 hex digits of a digest (file names, registry blob names). */
export function hexOf(digest: Digest): string {
  return digest.slice(PREFIX.length);
}

interface DigestsAddon {
  sha256Batch(buffers: Buffer[], originals?: number[]): Promise<Buffer>;
}

const addon = loadAddon<DigestsAddon>('digests');
const DIGEST_BYTES = 32;

/**
 * The digest of each buffer, in order, hashed on the threadpool. The buffers must not change
 * until the promise settles (they are hashed in place, on another thread).
 */
export async function digestsOf(buffers: Buffer[]): Promise<Digest[]> {
  const raw = await addon.sha256Batch(buffers);
  return buffers.map((_, i) => digestAt(raw, i));
}

/** The i-th digest of a batch's raw result. */
function digestAt(raw: Buffer, i: number): Digest {
  return rawDigestAt(raw, i * DIGEST_BYTES);
}

/** The digest whose 32 raw bytes start at `offset` of `buffer`. */
export function rawDigestAt(buffer: Buffer, offset: number): Digest {
  return `${PREFIX}${buffer.toString('hex', offset, offset + DIGEST_BYTES)}` as Digest;
}

/** Writes the digest's 32 raw bytes into `buffer` at `offset` (rawDigestAt reads them back). */
export function writeRawDigest(digest: Digest, buffer: Buffer, offset: number): void {
  buffer.write(hexOf(digest), offset, DIGEST_BYTES, 'hex');
}

/** Where a buffer's original bytes lie: an open file and the position in it. */
export interface OriginalBytes {
  fd: number;
  position: number;
}

/**
 * digestsOf, except that a buffer equal to its original bytes (at hand in the page cache) is
 * not hashed: its entry is undefined ("unchanged"). The descriptors need to stay open only
 * until this returns its promise (the addon duplicates them).
 */
export async function digestsUnlessSame(
  buffers: Buffer[],
  originals: readonly (OriginalBytes | undefined)[],
): Promise<(Digest | undefined)[]> {
  const pairs = originals.flatMap((o) => (o ? [o.fd, o.position] : [-1, 0]));
  const raw = await addon.sha256Batch(buffers, pairs);
  return buffers.map((_, i) =>
    raw.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES).every((b) => b === 0) ? undefined : digestAt(raw, i),
  );
}

/**
 * An image's chain ID from its layers' diff IDs (OCI image spec): the first layer's diff ID,
 * then sha256 of "<chain> <diffID>" for each next layer. containerd names an image's committed
 * snapshots by it.
 */
export function chainIdOf(diffIds: readonly Digest[]): Digest {
  if (diffIds.length === 0) throw new Error('an image without layers has no chain ID');
  let chain = diffIds[0]!;
  for (const d of diffIds.slice(1)) chain = digestOf(Buffer.from(`${chain} ${d}`));
  return chain;
}
