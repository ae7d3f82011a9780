/**
 * Images pushed straight into a registry through its HTTP API, with no dockerd: layer tars
 * (gzip'ed on the way), a config, a Docker schema 2 manifest, and optionally a manifest list
 * naming it for chosen platforms. For tests of `convert` from a registry, including images no
 * builder would make (wrong diff IDs, unsafe entries).
 */
import { gzipSync } from 'node:zlib';
import { digestOf, type Digest } from '../common/digests.js';
import { MEDIA, Registry, registryBase } from '../stores/registry.js';

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
    const config = Buffer.from(
      JSON.stringify({
        architecture: o.architecture ?? 'amd64',
        os: 'linux',
        config: o.config ?? {},
        rootfs: { type: 'layers', diff_ids: o.diffIds ?? tars.map((t) => digestOf(t)) },
        history: tars.map(() => ({ created: new Date(0).toISOString(), created_by: 'pushImage' })),
      }),
    );
    const manifest = await registry.pushImage(tag, config, blobs);
    return { manifest, layers: blobs.map((b) => digestOf(b)), config: digestOf(config) };
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
      mediaType: MEDIA.dockerList,
      manifests: platforms.map((platform) => ({
        mediaType: MEDIA.dockerManifest,
        digest: entry.digest,
        size: entry.size,
        platform,
      })),
    };
    await registry.putManifest(tag, Buffer.from(JSON.stringify(list)), MEDIA.dockerList);
  } finally {
    registry.close();
  }
}
