/**
 * Images pushed straight into a registry through its HTTP API, with no dockerd: layer tars
 * (gzip'ed on the way), a config, a Docker schema 2 manifest, and optionally a manifest list
 * naming it for chosen platforms. For tests of `convert` from a registry, including images no
 * builder would make (wrong diff IDs, unsafe entries).
 */
import { gzipSync } from 'node:zlib';
import { digestOf, type Digest } from '../common/digests.js';
import { Registry, registryBase } from '../stores/registry.js';

export interface PushedImage {
  manifest: Digest;
  /** Digests of the (gzip'ed) layer blobs, in order. */
  layers: Digest[];
  config: Digest;
}

export interface PushOptions {
  /** The container config (Cmd, Env...). */
  config?: Record<string, unknown>;
  /** Override the diff IDs the image config lists (default: the tars' digests). */
  diffIds?: string[];
  architecture?: string;
}

export async function pushImage(
  host: string,
  repository: string,
  tag: string,
  tars: Buffer[],
  o: PushOptions = {},
): Promise<PushedImage> {
  const registry = new Registry({ base: registryBase(host), host, repository });
  try {
    const blobs = tars.map((t) => gzipSync(t));
    for (const b of blobs) await registry.putBlob(digestOf(b), b);
    const config = Buffer.from(
      JSON.stringify({
        architecture: o.architecture ?? 'amd64',
        os: 'linux',
        config: o.config ?? {},
        rootfs: { type: 'layers', diff_ids: o.diffIds ?? tars.map((t) => digestOf(t)) },
        history: tars.map(() => ({ created: new Date(0).toISOString(), created_by: 'pushImage' })),
      }),
    );
    await registry.putBlob(digestOf(config), config);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
        config: {
          mediaType: 'application/vnd.docker.container.image.v1+json',
          size: config.length,
          digest: digestOf(config),
        },
        layers: blobs.map((b) => ({
          mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
          size: b.length,
          digest: digestOf(b),
        })),
      }),
    );
    await registry.putManifest(tag, manifest, 'application/vnd.docker.distribution.manifest.v2+json');
    return { manifest: digestOf(manifest), layers: blobs.map((b) => digestOf(b)), config: digestOf(config) };
  } finally {
    registry.close();
  }
}

/** A manifest list under `tag` naming manifest `digest` (of `size` bytes) for each platform given. */
export async function pushManifestList(
  host: string,
  repository: string,
  tag: string,
  entry: { digest: Digest; size: number },
  platforms: { os: string; architecture: string }[],
): Promise<void> {
  const registry = new Registry({ base: registryBase(host), host, repository });
  try {
    const list = {
      schemaVersion: 2,
      mediaType: 'application/vnd.docker.distribution.manifest.list.v2+json',
      manifests: platforms.map((platform) => ({
        mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
        digest: entry.digest,
        size: entry.size,
        platform,
      })),
    };
    await registry.putManifest(
      tag,
      Buffer.from(JSON.stringify(list)),
      'application/vnd.docker.distribution.manifest.list.v2+json',
    );
  } finally {
    registry.close();
  }
}
