/**
 * The differ, the half of the containerd front end that makes Slacker's metadata-only commit
 * and lazy pull work through containerd (`[proxy_plugins.NAME] type = "diff"`, first in the
 * diff service's `default` list):
 *   - Apply: a marker layer (layers/layer-tar/marker.ts) applied to one of our active
 *     snapshots makes it the published snapshot the marker names, opened lazily: no file is
 *     written, nothing but metadata is fetched. Any other layer is not ours to apply
 *     (NotSupported, which containerd reads as "try the next differ": its own walking differ).
 *   - Compare: the upper snapshot is published to the backing store and the answer is its
 *     marker, written to containerd's content store: `docker commit` and build steps push a
 *     layer of a few hundred bytes whatever the container wrote.
 * Knows nothing of gRPC framing (diff-service.ts); containerd's content store comes in as an
 * interface.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import { InvalidArgumentError, NotSupportedError } from '../common/errors.js';
import { digestOf, isDigest, type Digest } from '../common/digests.js';
import type { Logger } from '../common/logger.js';
import { markerTar, readMarker } from '../layers/layer-tar/marker.js';
import { readTar } from '../layers/layer-tar/tar-reader.js';
import type { ContentContext, ContentStore } from './containerd-client.js';
import type { MountSpec, Snapshotter } from './snapshotter.js';

/** containerd.types.Descriptor */
export interface Descriptor {
  media_type: string;
  digest: string;
  size: number;
}

/** A marker blob is a few hundred bytes: anything larger is an ordinary layer, never read here. */
export const MARKER_MAX_BLOB = 64 * 1024;
/** Its tar is 2.5 KiB; a gzip'ed blob of at most MARKER_MAX_BLOB may not inflate beyond this. */
const MARKER_MAX_TAR = 1 << 20;
export const LABEL_UNCOMPRESSED = 'containerd.io/uncompressed';
export const MEDIA_TAR = 'application/vnd.oci.image.layer.v1.tar';
export const MEDIA_TAR_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';

/** Whether a layer media type is gzip'ed; undefined for those we leave to containerd (zstd, ...). */
function gzipped(mediaType: string): boolean | undefined {
  switch (mediaType) {
    case MEDIA_TAR:
    case 'application/vnd.docker.image.rootfs.diff.tar':
      return false;
    case MEDIA_TAR_GZIP:
    case 'application/vnd.docker.image.rootfs.diff.tar.gzip':
      return true;
    default:
      return undefined;
  }
}

/** What containerd passes on of the request that caused a differ call (1.7 passes nothing). */
export interface CallHeaders {
  namespace?: string;
  lease?: string;
}

/** containerd names backend snapshots `<namespace>/<n>/<key>`. */
function namespaceOf(key: string, given: string | undefined): string {
  const ns = given ?? key.slice(0, Math.max(0, key.indexOf('/')));
  if (!ns) throw new InvalidArgumentError(`snapshot ${JSON.stringify(key)} is not named by containerd: no namespace`);
  return ns;
}

const notOurs = (why: string): NotSupportedError => new NotSupportedError(`left to containerd's differ: ${why}`);

export class Differ {
  constructor(
    private readonly snapshotter: Snapshotter,
    private readonly content: ContentStore,
    private readonly log: Logger,
  ) {}

  async apply(diff: Descriptor, mounts: MountSpec[], call: CallHeaders): Promise<Descriptor> {
    const s = this.snapshotter.snapshotOfMounts(mounts);
    if (!s) throw notOurs('the mounts are not a slacker snapshot');
    const gzip = gzipped(diff.media_type);
    if (gzip === undefined) throw notOurs(`media type ${diff.media_type}`);
    if (diff.size > MARKER_MAX_BLOB) throw notOurs('an ordinary layer');
    if (!isDigest(diff.digest)) throw new InvalidArgumentError(`bad layer digest ${JSON.stringify(diff.digest)}`);
    const context: ContentContext = { namespace: namespaceOf(s.key, call.namespace) };
    const blob = await this.content.read(diff.digest, 0, 0, context);
    if (blob.length !== diff.size || digestOf(blob) !== diff.digest) {
      throw new InvalidArgumentError(
        `layer ${diff.digest} read back as ${blob.length} bytes of ${digestOf(blob)}: the content store holds ` +
          'something else',
        { context: { digest: diff.digest } },
      );
    }
    const tar = gzip ? gunzipSync(blob, { maxOutputLength: MARKER_MAX_TAR }) : blob;
    const ref = await markerOf(tar);
    if (!ref) throw notOurs('an ordinary layer');
    await this.snapshotter.applyMarker(s.key, ref);
    return { media_type: MEDIA_TAR, digest: digestOf(tar), size: tar.length };
  }

  async compare(
    lower: MountSpec[],
    upper: MountSpec[],
    options: { mediaType: string; ref: string; labels: Record<string, string> },
    call: CallHeaders,
  ): Promise<Descriptor> {
    const s = this.snapshotter.snapshotOfMounts(upper);
    if (!s) throw notOurs('the upper mounts are not a slacker snapshot');
    const mediaType = options.mediaType || MEDIA_TAR_GZIP;
    const gzip = gzipped(mediaType);
    if (gzip === undefined) throw notOurs(`media type ${mediaType}`);
    // The marker is the whole upper file system, so `lower` needs no reading: applied on any
    // parent, it gives the upper snapshot.
    const namespace = namespaceOf(s.key, call.namespace);
    const context: ContentContext = { namespace, lease: call.lease ?? (await this.content.holdingLease(namespace)) };
    const ref = await this.snapshotter.publish(s.key);
    const tar = await markerTar(ref);
    const blob = gzip ? gzipSync(tar) : tar;
    const digest = digestOf(blob);
    const labels = { ...options.labels, [LABEL_UNCOMPRESSED]: digestOf(tar) };
    await this.content.write(
      options.ref || `slacker-diff-${randomBytes(8).toString('hex')}`,
      blob,
      digest,
      labels,
      context,
    );
    this.log.info({ snapshot: s.key, ref, digest, bytes: blob.length, lower: lower.length }, 'diff: marker written');
    return { media_type: mediaType, digest, size: blob.length };
  }
}

/** The snapshot reference if `tar` is a marker layer. */
async function markerOf(tar: Buffer): Promise<Digest | undefined> {
  return readMarker(readTar(Readable.from([tar])), []);
}
