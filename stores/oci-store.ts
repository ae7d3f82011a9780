/**
 * oci:// backing store: any OCI distribution registry (Docker's registry, Harbor, Zot, cloud
 * registries), so the shared store scales with the registry's object storage.
 *
 * Layout in repository REPO:
 *   - pack blobs: each publish batch of new chunks concatenated into one blob; a chunk's
 *     location hint is `sha256:<pack>:<offset>:<length>[:br]`, read back with an HTTP Range
 *     request (a registry that ignores Range still works: the chunk is cut from the whole blob).
 *     `:br` marks a chunk stored brotli-compressed, where that pays (./chunk-codec.ts): layer
 *     data shrinks to about half (docs/BENCHMARKS.md), which roughly doubles what a 1 Gbit/s
 *     link delivers. Digests are always of the uncompressed chunk.
 *   - the snapshot manifest as a blob (its digest is the snapshot reference), referenced as the
 *     `config` of an OCI image manifest whose `layers` are the packs it uses, tagged
 *     `sha256-<hex>`: registry garbage collection then keeps everything a snapshot needs.
 *
 * URL: oci://[user:pass@]host[:port]/repository. HTTPS, except for loopback hosts (HTTP, as
 * Docker treats them); `oci+http://` forces HTTP. The registry API and its auth are registry.ts.
 */
import { ConfigError } from '../common/errors.js';
import { digestOf, type Digest } from '../common/digests.js';
import { allSettledOrThrow } from '../common/settle.js';
import type { BackingStore, PreparedChunks, StoredChunk, UploadCounts } from './backing-store.js';
import { decodeChunk, encodeChunk, type Compression } from './chunk-codec.js';
import { isRepositoryName, MEDIA, Registry, registryBase, type Credentials, type RegistryTarget } from './registry.js';

export type { Credentials } from './registry.js';

export const SNAPSHOT_MEDIA_TYPE = 'application/vnd.slacker.snapshot.v1+json';
export const PACK_MEDIA_TYPE = 'application/vnd.slacker.chunk-pack.v1';

export interface OciStoreOptions {
  credentials?: Credentials;
  /** Docker config file for credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json). */
  dockerConfig?: string;
  /** Chunk compression when publishing (default brotli). Reading handles both. */
  compression?: Compression;
  /** Connections to the registry at once (default 16). */
  maxConnections?: number;
}

interface ParsedUrl extends RegistryTarget {
  credentials?: Credentials;
}

export function parseOciUrl(url: string): Omit<ParsedUrl, 'label'> {
  const m = /^oci(\+http)?:\/\/(?:([^:@/]+):([^@/]*)@)?([^/]+)\/(.+)$/.exec(url);
  if (!m) throw new ConfigError(`bad oci store URL ${JSON.stringify(url)}: want oci://host[:port]/repository`);
  const [, forceHttp, user, pass, host, repository] = m;
  if (!isRepositoryName(repository!)) {
    throw new ConfigError(`bad repository name ${JSON.stringify(repository)} in ${url}`);
  }
  return {
    base: registryBase(host!, forceHttp !== undefined),
    host: host!,
    repository: repository!,
    credentials: user ? { username: decodeURIComponent(user), password: decodeURIComponent(pass ?? '') } : undefined,
  };
}

/** Largest span fetched with one Range request, and the largest hole bridged inside one. */
const MAX_SPAN = 8 * 1024 * 1024;
const MAX_GAP = 256 * 1024;

interface PackLocation {
  pack: Digest;
  offset: number;
  length: number;
  brotli: boolean;
}

function parseHint(hint: string): PackLocation | undefined {
  const m = /^(sha256:[0-9a-f]{64}):(\d+):(\d+)(:br)?$/.exec(hint);
  return m
    ? { pack: m[1] as Digest, offset: Number(m[2]), length: Number(m[3]), brotli: m[4] !== undefined }
    : undefined;
}

/** The chunk's bytes from what the pack holds at `at`. */
function decode(stored: Buffer, at: PackLocation): Promise<Buffer> {
  return at.brotli ? decodeChunk(stored) : Promise.resolve(stored);
}

/** Blob sizes kept at most (about 100 bytes each); beyond, the oldest are asked again. */
const MAX_KNOWN_SIZES = 100_000;

export class OciStore implements BackingStore {
  private readonly registry: Registry;
  /**
   * Sizes of blobs known to be in the repository: put here or asked once. Content-addressed, a
   * size never changes, and every manifest names all the packs its snapshot uses (an image's,
   * for each of its containers' commits): asking each one's size at every publish cost 39-57 ms
   * of a build step's commit (45 packs, docs/BENCHMARKS.md). A blob removed by registry GC
   * since is still caught: the registry checks a manifest's blobs when it is put.
   */
  private readonly knownSizes = new Map<Digest, number>();

  constructor(
    readonly url: string,
    private readonly options: OciStoreOptions = {},
  ) {
    const target = parseOciUrl(url);
    this.registry = new Registry(
      { ...target, label: url },
      { credentials: options.credentials, dockerConfig: options.dockerConfig, maxConnections: options.maxConnections },
    );
  }

  /** Closes the pooled connections to the registry. */
  close(): void {
    this.registry.close();
  }

  readonly packs = true;

  async putChunks(chunks: StoredChunk[], counts?: UploadCounts): Promise<Map<Digest, string>> {
    if (chunks.length === 0) return new Map();
    const prepared = await this.prepareChunks(chunks);
    await prepared.put(counts);
    return prepared.hints;
  }

  /** The chunks encoded (chunk-codec.ts) into one pack blob, its hints known; `put` uploads it. */
  async prepareChunks(chunks: StoredChunk[]): Promise<PreparedChunks> {
    const stored = await Promise.all(
      chunks.map(async (c) => {
        if (this.options.compression === 'none') return { bytes: c.data, suffix: '' };
        const { bytes, compressed } = await encodeChunk(c.data);
        return { bytes, suffix: compressed ? ':br' : '' };
      }),
    );
    const pack = Buffer.concat(stored.map((s) => s.bytes));
    const packDigest = digestOf(pack);
    const hints = new Map<Digest, string>();
    let offset = 0;
    chunks.forEach((c, i) => {
      const s = stored[i]!;
      hints.set(c.digest, `${packDigest}:${offset}:${s.bytes.length}${s.suffix}`);
      offset += s.bytes.length;
    });
    return {
      hints,
      put: async (counts) => {
        if (!(await this.registry.putBlob(packDigest, pack)) && counts) counts.skipped += chunks.length;
        this.knowSize(packDigest, pack.length);
      },
    };
  }

  /** Chunks of one pack: adjacent ones come in one Range request (chunks without a hint: alone). */
  requestKey(hint: string): string {
    return parseHint(hint)?.pack ?? hint;
  }

  /** Adjacent chunks of one pack are fetched with one Range request, up to MAX_SPAN bytes. */
  async getChunks(
    wanted: { digest: Digest; hint: string }[],
    signal?: AbortSignal,
    allocate?: (length: number) => Buffer,
  ): Promise<Buffer[]> {
    const located = wanted.map((w, i) => ({ i, w, at: parseHint(w.hint) }));
    const out = new Array<Buffer>(wanted.length);
    const spans: { pack: Digest; offset: number; end: number; members: typeof located }[] = [];
    const packed = located
      .filter((l) => l.at)
      .sort((x, y) => (x.at!.pack < y.at!.pack ? -1 : x.at!.pack > y.at!.pack ? 1 : x.at!.offset - y.at!.offset));
    for (const l of packed) {
      const last = spans[spans.length - 1];
      const { pack, offset, length } = l.at!;
      if (
        last &&
        last.pack === pack &&
        offset >= last.end &&
        offset - last.end <= MAX_GAP &&
        offset + length - last.offset <= MAX_SPAN
      ) {
        last.end = Math.max(last.end, offset + length);
        last.members.push(l);
      } else spans.push({ pack, offset, end: offset + length, members: [l] });
    }
    await Promise.all([
      ...spans.map(async (s) => {
        const bytes = await this.registry.getBlob(
          s.pack,
          { offset: s.offset, length: s.end - s.offset },
          signal,
          allocate,
        );
        await Promise.all(
          s.members.map(async (m) => {
            const stored = bytes.subarray(m.at!.offset - s.offset, m.at!.offset - s.offset + m.at!.length);
            out[m.i] = await decode(stored, m.at!);
          }),
        );
      }),
      ...located
        .filter((l) => !l.at)
        .map(async (l) => (out[l.i] = await this.registry.getBlob(l.w.digest, undefined, signal))),
    ]);
    return out;
  }

  /**
   * Whether the registry answers for the repository, credentials included: a blob that cannot
   * exist is asked for, and "unknown" (404) is an answer.
   */
  check(): Promise<void> {
    return this.registry.check();
  }

  async putManifest(
    manifest: Buffer,
    hints: Iterable<string> = [],
    chunksStored: Promise<void> = Promise.resolve(),
  ): Promise<Digest> {
    const ref = digestOf(manifest);
    // The manifest's blob goes up while the chunks still do; the OCI manifest after both (the
    // registry refuses one that names a blob it does not have).
    await allSettledOrThrow([this.registry.putBlob(ref, manifest), chunksStored]);
    // An OCI manifest referencing the snapshot and its packs keeps them from registry GC.
    const packs = new Set<Digest>();
    for (const hint of hints) {
      const pack = parseHint(hint)?.pack;
      if (pack) packs.add(pack);
    }
    const sizes = await Promise.all([...packs].map((p) => this.blobSize(p)));
    const oci = {
      schemaVersion: 2,
      mediaType: MEDIA.ociManifest,
      config: { mediaType: SNAPSHOT_MEDIA_TYPE, digest: ref, size: manifest.length },
      layers: [...packs].map((digest, i) => ({ mediaType: PACK_MEDIA_TYPE, digest, size: sizes[i] })),
    };
    await this.registry.putManifest(ref.replace(':', '-'), Buffer.from(JSON.stringify(oci)), MEDIA.ociManifest);
    return ref;
  }

  private async blobSize(digest: Digest): Promise<number> {
    const known = this.knownSizes.get(digest);
    if (known !== undefined) return known;
    const size = await this.registry.blobSize(digest);
    this.knowSize(digest, size);
    return size;
  }

  private knowSize(digest: Digest, size: number): void {
    if (this.knownSizes.size >= MAX_KNOWN_SIZES) this.knownSizes.delete(this.knownSizes.keys().next().value!);
    this.knownSizes.set(digest, size);
  }

  getManifest(ref: Digest): Promise<Buffer> {
    return this.registry.getBlob(ref);
  }
}
