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
 * Docker treats them); `oci+http://` forces HTTP. Auth: anonymous, Basic, or Bearer tokens
 * (the WWW-Authenticate challenge), with credentials from the URL, the options, or Docker's
 * config.json (`auths`; credential helpers are not supported).
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, IoError } from '../common/errors.js';
import { digestOf, isDigest, type Digest } from '../common/digests.js';
import type { BackingStore, StoredChunk } from './backing-store.js';
import { decodeChunk, encodeChunk, type Compression } from './chunk-codec.js';
import { HttpClient, type HttpRequest, type HttpResponse } from './http-client.js';

export const SNAPSHOT_MEDIA_TYPE = 'application/vnd.slacker.snapshot.v1+json';
export const PACK_MEDIA_TYPE = 'application/vnd.slacker.chunk-pack.v1';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

export interface Credentials {
  username: string;
  password: string;
}

export interface OciStoreOptions {
  credentials?: Credentials;
  /** Docker config file for credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json). */
  dockerConfig?: string;
  /** Chunk compression when publishing (default brotli). Reading handles both. */
  compression?: Compression;
  /** Connections to the registry at once (default 16). */
  maxConnections?: number;
}

interface ParsedUrl {
  base: string; // scheme://host:port
  host: string; // host:port as Docker config keys it
  repository: string;
  credentials?: Credentials;
}

export function parseOciUrl(url: string): ParsedUrl {
  const m = /^oci(\+http)?:\/\/(?:([^:@/]+):([^@/]*)@)?([^/]+)\/(.+)$/.exec(url);
  if (!m) throw new ConfigError(`bad oci store URL ${JSON.stringify(url)}: want oci://host[:port]/repository`);
  const [, forceHttp, user, pass, host, repository] = m;
  if (!/^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/.test(repository!)) {
    throw new ConfigError(`bad repository name ${JSON.stringify(repository)} in ${url}`);
  }
  const hostname = host!.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  const loopback = hostname === 'localhost' || hostname === '::1' || /^127\./.test(hostname);
  const scheme = forceHttp || loopback ? 'http' : 'https';
  return {
    base: `${scheme}://${host}`,
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

export class OciStore implements BackingStore {
  private readonly target: ParsedUrl;
  private credentials: Credentials | undefined;
  private credentialsLoaded = false;
  /** The Authorization header that worked last (Basic or Bearer). */
  private authorization: string | undefined;
  private readonly http: HttpClient;

  constructor(
    readonly url: string,
    private readonly options: OciStoreOptions = {},
  ) {
    this.target = parseOciUrl(url);
    this.http = new HttpClient({ maxSockets: options.maxConnections });
  }

  /** Closes the pooled connections to the registry. */
  close(): void {
    this.http.close();
  }

  readonly packs = true;

  async putChunks(chunks: StoredChunk[]): Promise<Map<Digest, string>> {
    const out = new Map<Digest, string>();
    if (chunks.length === 0) return out;
    const stored = await Promise.all(
      chunks.map(async (c) => {
        if (this.options.compression === 'none') return { bytes: c.data, suffix: '' };
        const { bytes, compressed } = await encodeChunk(c.data);
        return { bytes, suffix: compressed ? ':br' : '' };
      }),
    );
    const pack = Buffer.concat(stored.map((s) => s.bytes));
    const packDigest = digestOf(pack);
    await this.putBlob(packDigest, pack);
    let offset = 0;
    chunks.forEach((c, i) => {
      const s = stored[i]!;
      out.set(c.digest, `${packDigest}:${offset}:${s.bytes.length}${s.suffix}`);
      offset += s.bytes.length;
    });
    return out;
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
        const bytes = await this.getBlob(s.pack, { offset: s.offset, length: s.end - s.offset }, signal, allocate);
        await Promise.all(
          s.members.map(async (m) => {
            const stored = bytes.subarray(m.at!.offset - s.offset, m.at!.offset - s.offset + m.at!.length);
            out[m.i] = await decode(stored, m.at!);
          }),
        );
      }),
      ...located.filter((l) => !l.at).map(async (l) => (out[l.i] = await this.getBlob(l.w.digest, undefined, signal))),
    ]);
    return out;
  }

  async putManifest(manifest: Buffer): Promise<Digest> {
    const ref = digestOf(manifest);
    await this.putBlob(ref, manifest);
    // An OCI manifest referencing the snapshot and its packs keeps them from registry GC.
    const packs = [
      ...new Set([...manifest.toString('utf8').matchAll(/"(sha256:[0-9a-f]{64}):\d+:\d+(?::br)?"/g)].map((x) => x[1]!)),
    ];
    const sizes = await Promise.all(packs.map((p) => this.blobSize(p as Digest)));
    const oci = {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: SNAPSHOT_MEDIA_TYPE, digest: ref, size: manifest.length },
      layers: packs.map((digest, i) => ({ mediaType: PACK_MEDIA_TYPE, digest, size: sizes[i] })),
    };
    const res = await this.request('PUT', `/manifests/${ref.replace(':', '-')}`, {
      body: Buffer.from(JSON.stringify(oci)),
      headers: { 'content-type': OCI_MANIFEST },
    });
    this.expect(res, [201], 'push snapshot manifest');
    return ref;
  }

  getManifest(ref: Digest): Promise<Buffer> {
    return this.getBlob(ref);
  }

  // ---- registry API ----

  private async putBlob(digest: Digest, data: Buffer): Promise<void> {
    const head = await this.request('HEAD', `/blobs/${digest}`);
    if (head.status === 200) return; // content-addressed: already there
    const start = await this.request('POST', '/blobs/uploads/');
    this.expect(start, [202], 'start blob upload');
    const location = start.header('location');
    if (!location)
      throw new IoError(`registry gave no upload location for ${digest}`, { context: { store: this.url } });
    const put = new URL(location, this.target.base);
    put.searchParams.set('digest', digest);
    const res = await this.request('PUT', put.toString(), {
      body: data,
      headers: { 'content-type': 'application/octet-stream' },
    });
    this.expect(res, [201], `upload blob ${digest}`);
  }

  /**
   * Whether the registry answers for the repository, credentials included: a blob that cannot
   * exist is asked for, and "unknown" (404) is an answer.
   */
  async check(): Promise<void> {
    const res = await this.request('HEAD', `/blobs/sha256:${'0'.repeat(64)}`);
    this.expect(res, [200, 404], 'check the repository');
  }

  private async blobSize(digest: Digest): Promise<number> {
    const res = await this.request('HEAD', `/blobs/${digest}`);
    this.expect(res, [200], `stat blob ${digest}`);
    return Number(res.header('content-length'));
  }

  private async getBlob(
    digest: Digest,
    range?: { offset: number; length: number },
    signal?: AbortSignal,
    allocate?: (length: number) => Buffer,
  ): Promise<Buffer> {
    if (!isDigest(digest)) throw new IoError(`bad blob digest ${digest}`);
    const headers: Record<string, string> = {};
    if (range) headers.range = `bytes=${range.offset}-${range.offset + range.length - 1}`;
    const res = await this.request('GET', `/blobs/${digest}`, { headers, signal, allocate });
    this.expect(res, range ? [200, 206] : [200], `fetch blob ${digest}`);
    if (range && res.status === 200) return res.body.subarray(range.offset, range.offset + range.length);
    return res.body;
  }

  private expect(res: HttpResponse, ok: number[], what: string): void {
    if (ok.includes(res.status)) return;
    const text = res.body.toString('utf8');
    throw new IoError(`${what}: registry answered ${res.status} ${res.statusText} ${text.slice(0, 300)}`.trim(), {
      context: { store: this.url, status: res.status },
    });
  }

  /** A request to the repository, answering auth challenges once (Basic or Bearer). */
  private async request(
    method: string,
    path: string,
    init: Pick<HttpRequest, 'body' | 'headers' | 'signal' | 'allocate'> = {},
  ): Promise<HttpResponse> {
    const url = path.startsWith('http') ? path : `${this.target.base}/v2/${this.target.repository}${path}`;
    const send = (authorization?: string): Promise<HttpResponse> =>
      this.http.request(url, {
        method,
        body: init.body,
        signal: init.signal,
        allocate: init.allocate,
        headers: { ...init.headers, ...(authorization ? { authorization } : {}) },
      });
    let res = await send(this.authorization);
    if (res.status !== 401) return res;
    const challenge = res.header('www-authenticate') ?? '';
    this.authorization = await this.authorize(challenge, init.signal);
    res = await send(this.authorization);
    return res;
  }

  private async authorize(challenge: string, signal?: AbortSignal): Promise<string> {
    const creds = await this.loadCredentials();
    const basic = creds ? `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}` : undefined;
    if (/^basic/i.test(challenge)) {
      if (!basic)
        throw new IoError(`registry ${this.target.host} wants credentials and none are configured`, {
          context: { store: this.url },
        });
      return basic;
    }
    if (/^bearer/i.test(challenge)) {
      const params = Object.fromEntries(
        [...challenge.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!.toLowerCase(), m[2]!]),
      );
      if (!params.realm) throw new IoError(`bad bearer challenge from ${this.target.host}: ${challenge}`);
      const tokenUrl = new URL(params.realm);
      if (params.service) tokenUrl.searchParams.set('service', params.service);
      tokenUrl.searchParams.set('scope', params.scope ?? `repository:${this.target.repository}:pull,push`);
      const res = await this.http.request(tokenUrl, { headers: basic ? { authorization: basic } : {}, signal });
      if (res.status !== 200)
        throw new IoError(`token request to ${tokenUrl.origin} failed: ${res.status}`, {
          context: { store: this.url },
        });
      let body: { token?: string; access_token?: string };
      try {
        body = JSON.parse(res.body.toString('utf8')) as typeof body;
      } catch (err) {
        throw new IoError(`token server ${tokenUrl.origin} answered something that is not JSON`, { cause: err });
      }
      const token = body.token ?? body.access_token;
      if (!token) throw new IoError(`token server ${tokenUrl.origin} returned no token`);
      return `Bearer ${token}`;
    }
    throw new IoError(`registry ${this.target.host} sent an unsupported auth challenge: ${challenge || '(none)'}`, {
      context: { store: this.url },
    });
  }

  private async loadCredentials(): Promise<Credentials | undefined> {
    if (this.credentialsLoaded) return this.credentials;
    this.credentialsLoaded = true;
    this.credentials = this.options.credentials ?? this.target.credentials;
    if (!this.credentials) {
      const path =
        this.options.dockerConfig ?? join(process.env.DOCKER_CONFIG ?? join(homedir(), '.docker'), 'config.json');
      try {
        const config = JSON.parse(await readFile(path, 'utf8')) as { auths?: Record<string, { auth?: string }> };
        const auth = config.auths?.[this.target.host]?.auth;
        if (auth) {
          const [username, ...rest] = Buffer.from(auth, 'base64').toString('utf8').split(':');
          this.credentials = { username: username!, password: rest.join(':') };
        }
      } catch {
        // no Docker config: anonymous
      }
    }
    return this.credentials;
  }
}
