/**
 * One repository of an OCI distribution registry, as a client: blobs (HEAD, ranged GET, upload),
 * manifests (GET with the media types asked for, PUT), and auth. HTTPS, except for loopback
 * hosts (HTTP, as Docker treats them). Auth: anonymous, Basic, or Bearer tokens (the
 * WWW-Authenticate challenge), with credentials given, or from Docker's config.json (`auths`;
 * credential helpers are not supported). Used by the oci:// store (oci-store.ts) and by
 * `convert` from a registry.
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { IoError, NotFoundError } from '../common/errors.js';
import { digestOf, isDigest, type Digest } from '../common/digests.js';
import { HttpClient, type HttpRequest, type HttpResponse } from './http-client.js';

/** The manifest, config and layer media types of Docker's schema 2 and of OCI images. */
export const MEDIA = {
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
} as const;

export interface Credentials {
  username: string;
  password: string;
}

export interface RegistryTarget {
  base: string; // scheme://host:port
  host: string; // host:port as Docker config keys it
  repository: string;
  /** How errors name it (the store URL, or the image reference). */
  label?: string;
}

export interface RegistryOptions {
  credentials?: Credentials;
  /** Docker config file for credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json). */
  dockerConfig?: string;
  /** Connections to the registry at once (default 16). */
  maxConnections?: number;
}

/** Docker's rule for repository names (lower-case path components). */
export function isRepositoryName(s: string): boolean {
  return /^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/.test(s);
}

/** scheme://host of a registry: HTTP for loopback hosts (as Docker), or when forced; HTTPS otherwise. */
export function registryBase(host: string, forceHttp = false): string {
  const hostname = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  const loopback = hostname === 'localhost' || hostname === '::1' || /^127\./.test(hostname);
  return `${forceHttp || loopback ? 'http' : 'https'}://${host}`;
}

export class Registry {
  private credentials: Credentials | undefined;
  private credentialsLoaded = false;
  /** The Authorization header that worked last (Basic or Bearer). */
  private authorization: string | undefined;
  private readonly http: HttpClient;

  constructor(
    private readonly target: RegistryTarget & { credentials?: Credentials },
    private readonly options: RegistryOptions = {},
  ) {
    this.http = new HttpClient({ maxSockets: options.maxConnections });
  }

  private get label(): string {
    return this.target.label ?? `${this.target.host}/${this.target.repository}`;
  }

  /** Closes the pooled connections. */
  close(): void {
    this.http.close();
  }

  /**
   * A manifest by tag or digest, asking for the given media types; its bytes and media type.
   * NotFoundError when the registry has none by that name.
   */
  async getManifest(reference: string, accept: string[]): Promise<{ body: Buffer; mediaType: string }> {
    const res = await this.request('GET', `/manifests/${reference}`, { headers: { accept: accept.join(', ') } });
    if (res.status === 404) {
      throw new NotFoundError(`${this.label}: no manifest ${reference}`, { context: { image: this.label, reference } });
    }
    this.expect(res, [200], `fetch manifest ${reference}`);
    return { body: res.body, mediaType: (res.header('content-type') ?? '').split(';')[0]!.trim() };
  }

  async putManifest(reference: string, body: Buffer, mediaType: string): Promise<void> {
    const res = await this.request('PUT', `/manifests/${reference}`, { body, headers: { 'content-type': mediaType } });
    this.expect(res, [201], `push manifest ${reference}`);
  }

  /**
   * Pushes an image: its gzip'ed layer blobs and its config, then a Docker schema 2 manifest
   * naming them under `reference`. Returns the manifest's digest.
   */
  async pushImage(reference: string, config: Buffer, gzipLayers: Buffer[]): Promise<Digest> {
    for (const layer of gzipLayers) await this.putBlob(digestOf(layer), layer);
    await this.putBlob(digestOf(config), config);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA.dockerManifest,
        config: { mediaType: MEDIA.dockerConfig, size: config.length, digest: digestOf(config) },
        layers: gzipLayers.map((l) => ({ mediaType: MEDIA.dockerLayerGzip, size: l.length, digest: digestOf(l) })),
      }),
    );
    await this.putManifest(reference, manifest, MEDIA.dockerManifest);
    return digestOf(manifest);
  }

  /** Uploads a blob unless the registry has it; true if it was uploaded. */
  async putBlob(digest: Digest, data: Buffer): Promise<boolean> {
    const head = await this.request('HEAD', `/blobs/${digest}`);
    if (head.status === 200) return false; // content-addressed: already there
    const start = await this.request('POST', '/blobs/uploads/');
    this.expect(start, [202], 'start blob upload');
    const location = start.header('location');
    if (!location)
      throw new IoError(`registry gave no upload location for ${digest}`, { context: { store: this.label } });
    const put = new URL(location, this.target.base);
    put.searchParams.set('digest', digest);
    const res = await this.request('PUT', put.toString(), {
      body: data,
      headers: { 'content-type': 'application/octet-stream' },
    });
    this.expect(res, [201], `upload blob ${digest}`);
    return true;
  }

  /**
   * Whether the registry answers for the repository, credentials included: a blob that cannot
   * exist is asked for, and "unknown" (404) is an answer.
   */
  async check(): Promise<void> {
    const res = await this.request('HEAD', `/blobs/sha256:${'0'.repeat(64)}`);
    this.expect(res, [200, 404], 'check the repository');
  }

  async blobSize(digest: Digest): Promise<number> {
    const res = await this.request('HEAD', `/blobs/${digest}`);
    this.expect(res, [200], `stat blob ${digest}`);
    return Number(res.header('content-length'));
  }

  async getBlob(
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
      context: { store: this.label, status: res.status },
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
          context: { store: this.label },
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
          context: { store: this.label },
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
      context: { store: this.label },
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
