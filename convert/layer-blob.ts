/**
 * A layer blob from a registry as the plain tar it holds, verified twice: the blob's bytes
 * against its descriptor's digest and size, and the uncompressed tar against the image
 * config's diff ID. The blob comes in ranges of RANGE bytes, the next one asked for while the
 * current one is consumed, so no more than two ranges are held at once (a 1 GB layer is not
 * held in memory) and a registry that drops the connection fails one range, with a clear error.
 *
 * The checks finish only once the whole blob has passed: `verified()` must be awaited after
 * the consumer stopped reading (it drains what is left, e.g. the tar's trailing padding), and
 * nothing made from the layer may be published before it resolved.
 */
import { createHash } from 'node:crypto';
import { pipeline, Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { IoError, NotSupportedError } from '../common/errors.js';
import type { Digest } from '../common/digests.js';
import { MEDIA, type Registry } from '../stores/registry.js';

const RANGE = 8 * 1024 * 1024;

export interface LayerDescriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  urls?: string[];
}

const GZIP = new Set([
  MEDIA.dockerLayerGzip,
  'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
]);
const PLAIN = new Set([
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
]);

export interface LayerBlob {
  /** The plain tar, as it arrives. */
  tar: AsyncIterable<Buffer>;
  /** Blob bytes received so far (compressed). */
  readonly bytesRead: number;
  /** Tar bytes produced so far (uncompressed). */
  readonly tarBytes: number;
  /** Drains the rest and checks both digests; rejects with an IoError naming what did not match. */
  verified(): Promise<void>;
}

/** Opens layer `desc` of image `label` (for messages), whose config says its tar is `diffId`. */
export function openLayerBlob(registry: Registry, desc: LayerDescriptor, diffId: Digest, label: string): LayerBlob {
  const gzip = GZIP.has(desc.mediaType);
  if (!gzip && !PLAIN.has(desc.mediaType)) {
    throw new NotSupportedError(
      `${label}: layer ${desc.digest} has media type ${desc.mediaType}; convert reads tar and tar+gzip layers ` +
        '(zstd is not supported yet)',
      { context: { image: label, layer: desc.digest, mediaType: desc.mediaType } },
    );
  }
  const blobHash = createHash('sha256');
  const tarHash = createHash('sha256');
  let bytesRead = 0;
  let tarBytes = 0;

  async function* ranges(): AsyncGenerator<Buffer> {
    const fetchRange = (offset: number): Promise<Buffer> =>
      registry.getBlob(desc.digest, { offset, length: Math.min(RANGE, desc.size - offset) }).catch((err: unknown) => {
        throw new IoError(
          `${label}: reading layer ${desc.digest} at byte ${offset} of ${desc.size} failed: ${(err as Error).message}`,
          { cause: err, context: { image: label, layer: desc.digest, offset } },
        );
      });
    let next = desc.size > 0 ? fetchRange(0) : undefined;
    for (let offset = 0; next;) {
      const piece = await next;
      next = offset + piece.length < desc.size ? fetchRange(offset + piece.length) : undefined;
      next?.catch(() => undefined); // awaited on the next turn; not unhandled if this one fails first
      if (piece.length === 0) break;
      offset += piece.length;
      bytesRead += piece.length;
      blobHash.update(piece);
      yield piece;
    }
  }

  async function* plainTar(): AsyncGenerator<Buffer> {
    // pipeline, not pipe: a failed range must fail the gunzip stream (and so this reader), not
    // be thrown as an uncaught error on a source nobody listens to.
    const source = gzip ? pipeline(Readable.from(ranges()), createGunzip(), () => undefined) : Readable.from(ranges());
    try {
      for await (const piece of source as AsyncIterable<Buffer>) {
        tarBytes += piece.length;
        tarHash.update(piece);
        yield piece;
      }
    } catch (err) {
      if (err instanceof IoError) throw err;
      throw new IoError(`${label}: layer ${desc.digest} is not a valid gzip stream: ${(err as Error).message}`, {
        cause: err,
        context: { image: label, layer: desc.digest },
      });
    }
  }

  const it = plainTar();
  let done = false;
  const tar: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]: () => ({
      next: async () => {
        const r = await it.next();
        if (r.done) done = true;
        return r;
      },
    }),
  };
  return {
    tar,
    get bytesRead() {
      return bytesRead;
    },
    get tarBytes() {
      return tarBytes;
    },
    verified: async () => {
      while (!done) if ((await it.next()).done) done = true;
      const blob = `sha256:${blobHash.digest('hex')}`;
      if (bytesRead !== desc.size || blob !== desc.digest) {
        throw new IoError(
          `${label}: layer blob ${desc.digest} is corrupt: the registry sent ${bytesRead} bytes with digest ${blob}, ` +
            `the manifest says ${desc.size} bytes`,
          { context: { image: label, layer: desc.digest, got: blob } },
        );
      }
      const tarDigest = `sha256:${tarHash.digest('hex')}`;
      if (tarDigest !== diffId) {
        throw new IoError(
          `${label}: layer ${desc.digest} unpacks to a tar with digest ${tarDigest}, but the image config says ${diffId}`,
          { context: { image: label, layer: desc.digest, diffId, got: tarDigest } },
        );
      }
    },
  };
}
