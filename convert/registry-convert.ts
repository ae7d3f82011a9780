/**
 * `slacker-ts convert SRC DST --store URL` with no dockerd: an ordinary image in a registry
 * becomes a slacker image in a registry (compare nydusify convert, overlaybd's converter).
 *
 *   1. SRC's manifest (from a manifest list or index: the asked platform's), its config;
 *   2. every layer applied in order, as a layer volume of a private layer host, straight from
 *      the registry: each blob verified against its digest and each tar against its diff ID
 *      (layer-blob.ts), whiteouts, links and owners as on any slacker host (the staged apply);
 *   3. the top layer published to the backing store (its chunks, then its manifest);
 *   4. DST pushed: SRC's config with one marker layer (layers/layer-tar/marker.ts).
 * Nothing is published before every layer has been applied and verified, and DST is pushed
 * only after the snapshot is in the store: a failure leaves neither a snapshot nor an image.
 * The layer host lives in a temporary state root, removed at the end.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { ConfigError, IoError, NotFoundError } from '../common/errors.js';
import { digestOf, isDigest, type Digest } from '../common/digests.js';
import type { Logger } from '../common/logger.js';
import { openLayerHost } from '../layers/layer-host.js';
import { markerTar } from '../layers/layer-tar/marker.js';
import { MEDIA, Registry } from '../stores/registry.js';
import type { PublishCounts } from '../volumes/manager.js';
import { formatPlatform, parseImageRef, platformMatches, type ImageRef, type Platform } from './image-ref.js';
import { openLayerBlob, type LayerDescriptor } from './layer-blob.js';

export interface RegistryConvertOptions {
  src: string;
  dst: string;
  /** The backing store the snapshot's chunks go to (the one slacker hosts that pull DST use). */
  store: string;
  platform: Platform;
  /** Virtual size of the image's layers (bytes). */
  layerSize: number;
  /** Docker config file for registry credentials (default $DOCKER_CONFIG/config.json, ~/.docker/config.json). */
  dockerConfig?: string;
  /** Where the temporary state root goes (default the OS temp directory). */
  workDir?: string;
  log: Logger;
  progress?: (event: ConvertProgress) => void;
}

export type ConvertProgress =
  | { kind: 'manifest'; layers: number; platform: string; bytes: number }
  | { kind: 'layer'; index: number; layers: number; bytesRead: number; size: number; tarBytes: number; done: boolean }
  | { kind: 'publish' }
  | { kind: 'published'; chunks: number; uploaded: number; skipped: number }
  | { kind: 'push' };

export interface RegistryConvertResult {
  image: string;
  source: string;
  /** Digest of the source manifest converted (the platform's, under a list). */
  sourceManifest: Digest;
  platform: string;
  layers: number;
  /** Bytes of layer blobs read from the source registry, and of the tars they held. */
  blobBytes: number;
  tarBytes: number;
  snapshotRef: Digest;
  /** Chunks of the snapshot in the store (uploaded now or already there). */
  chunks: number;
  /** Distinct chunks stored by this conversion, and those the store already held (not taken again). */
  uploaded: number;
  skipped: number;
  diffId: Digest;
  manifest: Digest;
  seconds: number;
}

interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  platform?: Partial<Platform>;
}

interface ImageManifest {
  mediaType?: string;
  config: Descriptor;
  layers: LayerDescriptor[];
}

interface ImageConfig {
  os?: string;
  architecture?: string;
  variant?: string;
  rootfs?: { type?: string; diff_ids?: string[] };
  [key: string]: unknown;
}

export async function convertFromRegistry(o: RegistryConvertOptions): Promise<RegistryConvertResult> {
  const t0 = Date.now();
  const src = parseImageRef(o.src);
  const dst = parseImageRef(o.dst);
  if (dst.byDigest) throw new ConfigError(`DST ${o.dst} names a digest: convert pushes a tag`);
  const from = new Registry(src.target, { dockerConfig: o.dockerConfig });
  const to = new Registry(dst.target, { dockerConfig: o.dockerConfig });
  let root: string | undefined;
  try {
    const { manifest, digest: sourceManifest } = await resolveManifest(from, src, o.platform);
    const configBytes = await verifiedBlob(from, manifest.config, `${src.text}: config`);
    const config = parseJson<ImageConfig>(configBytes, `${src.text}: config ${manifest.config.digest}`);
    if (!platformMatches(config, o.platform)) {
      throw new ConfigError(
        `${src.text} is an image for ${formatPlatform(config as Platform)}, not ${formatPlatform(o.platform)}: ` +
          `pass --platform ${formatPlatform(config as Platform)} to convert it`,
      );
    }
    const diffIds = config.rootfs?.diff_ids ?? [];
    if (diffIds.length !== manifest.layers.length || !diffIds.every(isDigest)) {
      throw new IoError(
        `${src.text}: the config lists ${diffIds.length} diff IDs for ${manifest.layers.length} layers`,
        { context: { image: src.text } },
      );
    }
    if (manifest.layers.length === 0) throw new ConfigError(`${src.text} has no layers to convert`);
    const total = manifest.layers.reduce((n, l) => n + l.size, 0);
    o.progress?.({
      kind: 'manifest',
      layers: manifest.layers.length,
      platform: formatPlatform(o.platform),
      bytes: total,
    });

    root = await mkdtemp(join(o.workDir ?? tmpdir(), 'slacker-convert-'));
    const host = await openLayerHost({ root, store: o.store, layerSize: o.layerSize, attach: 'auto', log: o.log });
    let snapshotRef: Digest;
    let chunks: number;
    const counts: PublishCounts = { chunks: 0, known: 0, skipped: 0, uploaded: 0 };
    let blobBytes = 0;
    let tarBytes = 0;
    try {
      let parent: string | undefined;
      for (const [i, desc] of manifest.layers.entries()) {
        const id = `layer-${i}`;
        await host.layers.create(id, parent);
        const blob = openLayerBlob(from, desc, diffIds[i] as Digest, src.text);
        const report = (done: boolean): void =>
          o.progress?.({
            kind: 'layer',
            index: i,
            layers: manifest.layers.length,
            bytesRead: blob.bytesRead,
            size: desc.size,
            tarBytes: blob.tarBytes,
            done,
          });
        const timer = setInterval(() => report(false), 500);
        try {
          await host.layers.applyTar(id, parent, blob.tar);
          await blob.verified();
        } finally {
          clearInterval(timer);
        }
        report(true);
        blobBytes += blob.bytesRead;
        tarBytes += blob.tarBytes;
        parent = id;
      }
      o.progress?.({ kind: 'publish' });
      snapshotRef = await host.layers.publish(parent!, counts);
      chunks = host.manager.stats(parent!).chunks;
      o.progress?.({ kind: 'published', chunks: counts.chunks, ...uploadedAndSkipped(counts) });
    } finally {
      await host.close({ all: true });
    }

    o.progress?.({ kind: 'push' });
    const marker = await markerTar(snapshotRef);
    const layer = gzipSync(marker);
    const diffId = digestOf(marker);
    const newConfig = Buffer.from(
      JSON.stringify({
        ...config,
        rootfs: { type: 'layers', diff_ids: [diffId] },
        history: [{ created: new Date().toISOString(), created_by: `slacker-ts convert ${o.src}` }],
      }),
    );
    const pushed = await to.pushImage(dst.reference, newConfig, [layer]);
    return {
      image: o.dst,
      source: o.src,
      sourceManifest,
      platform: formatPlatform(o.platform),
      layers: manifest.layers.length,
      blobBytes,
      tarBytes,
      snapshotRef,
      chunks,
      ...uploadedAndSkipped(counts),
      diffId,
      manifest: pushed,
      seconds: (Date.now() - t0) / 1000,
    };
  } finally {
    from.close();
    to.close();
    if (root) await rm(root, { recursive: true, force: true });
  }
}

/** What convert reports of a publish: chunks stored now, and those the store had (known here or found there). */
function uploadedAndSkipped(c: PublishCounts): { uploaded: number; skipped: number } {
  return { uploaded: c.uploaded, skipped: c.skipped + c.known };
}

/** SRC's image manifest for the platform (through a manifest list or index), and its digest. */
async function resolveManifest(
  registry: Registry,
  src: ImageRef,
  platform: Platform,
): Promise<{ manifest: ImageManifest; digest: Digest }> {
  const accept = [MEDIA.dockerManifest, MEDIA.dockerList, MEDIA.ociManifest, MEDIA.ociIndex];
  let { body, mediaType } = await registry.getManifest(src.reference, accept);
  let digest = digestOf(body);
  if (src.byDigest && digest !== src.reference) {
    throw new IoError(`${src.text}: the registry sent a manifest with digest ${digest}`, {
      context: { image: src.text },
    });
  }
  let parsed = parseJson<{ mediaType?: string; manifests?: Descriptor[] } & Partial<ImageManifest>>(
    body,
    `${src.text}: manifest`,
  );
  mediaType = parsed.mediaType ?? mediaType;
  if (mediaType === MEDIA.dockerList || mediaType === MEDIA.ociIndex || parsed.manifests) {
    const all = parsed.manifests ?? [];
    const pick = all.find((m) => m.platform && platformMatches(m.platform, platform));
    if (!pick) {
      const have = all.map((m) => formatPlatform(m.platform as Platform)).join(', ') || 'none';
      throw new NotFoundError(
        `${src.text} has no image for ${formatPlatform(platform)} (it has: ${have}); pass --platform to choose one`,
        { context: { image: src.text, platform: formatPlatform(platform) } },
      );
    }
    ({ body, mediaType } = await registry.getManifest(pick.digest, accept));
    digest = digestOf(body);
    if (digest !== pick.digest) {
      throw new IoError(`${src.text}: the registry sent manifest ${digest} for ${pick.digest}`, {
        context: { image: src.text },
      });
    }
    parsed = parseJson(body, `${src.text}: manifest ${pick.digest}`);
  }
  if (!parsed.config?.digest || !Array.isArray(parsed.layers)) {
    throw new IoError(`${src.text}: the manifest (${mediaType || 'no media type'}) is not an image manifest`, {
      context: { image: src.text },
    });
  }
  return { manifest: parsed as ImageManifest, digest };
}

/** A small blob (a config), checked against its descriptor. */
async function verifiedBlob(registry: Registry, desc: Descriptor, what: string): Promise<Buffer> {
  if (!isDigest(desc.digest)) throw new IoError(`${what}: bad digest ${String(desc.digest)}`);
  const body = await registry.getBlob(desc.digest);
  if (digestOf(body) !== desc.digest) {
    throw new IoError(`${what}: the registry sent bytes with digest ${digestOf(body)}, not ${desc.digest}`);
  }
  return body;
}

function parseJson<T>(body: Buffer, what: string): T {
  try {
    return JSON.parse(body.toString('utf8')) as T;
  } catch (err) {
    throw new IoError(`${what} is not JSON`, { cause: err });
  }
}
