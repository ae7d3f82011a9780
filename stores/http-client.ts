/**
 * The HTTP/1.1 client of the oci:// store: node:http(s) with keep-alive connection pools.
 *
 * Why not `fetch`: undici's fetch copies every body byte three or four times (web stream
 * chunks, their concatenation, a final ArrayBuffer copy). On the cold read path that was most of
 * the CPU: 2-2.9 s per 256 MiB against 0.8-0.9 s here, at a third of the throughput
 * (docs/BENCHMARKS.md). This client copies each body byte once, into a buffer sized by
 * Content-Length.
 *
 * It does: bounded keep-alive pools per origin; redirects of GET and HEAD (S3-backed registries
 * answer blob GETs with a 307 to a presigned URL; credentials never follow a redirect to another
 * origin); abort signals; a bound on body size; an idle timeout, so a silent server fails the
 * request instead of hanging it; one retry of a GET or HEAD whose reused connection the server
 * had already closed. It does not do proxies (neither does Node 20's fetch), HTTP/2 or content
 * encodings (chunk packs are binary, and compressed per chunk where that pays).
 */
import http from 'node:http';
import https from 'node:https';
import { IoError } from '../common/errors.js';

export interface HttpRequest {
  method?: string;
  headers?: Record<string, string>;
  body?: Buffer;
  signal?: AbortSignal;
  /** A longer body fails the request (default MAX_BODY). */
  maxBodyBytes?: number;
  /** Where a successful (2xx) body of known length goes (a pooled buffer); default a new buffer. */
  allocate?: (length: number) => Buffer;
}

export interface HttpResponse {
  status: number;
  statusText: string;
  /** Where the answer came from, after redirects. */
  url: string;
  body: Buffer;
  /** A header's value (lower-case name), joined with ", " when repeated. */
  header(name: string): string | undefined;
}

export interface HttpClientOptions {
  /** Connections per origin (default 16): enough for several 8 MiB ranges in flight. */
  maxSockets?: number;
  /** Fail a request when its connection is silent this long (default 60 s). */
  idleTimeoutMs?: number;
}

const MAX_BODY = 256 * 1024 * 1024;
const MAX_REDIRECTS = 5;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Errors of a reused keep-alive connection that the server closed while it sat idle. */
const STALE_CONNECTION = new Set(['ECONNRESET', 'EPIPE']);

export class HttpClient {
  private readonly http: http.Agent;
  private readonly https: https.Agent;
  private readonly idleTimeoutMs: number;

  constructor(options: HttpClientOptions = {}) {
    // Idle pooled sockets are unref'ed by the agent: they keep no process alive.
    const pool = { keepAlive: true, maxSockets: options.maxSockets ?? 16, scheduling: 'lifo' as const };
    this.http = new http.Agent(pool);
    this.https = new https.Agent(pool);
    this.idleTimeoutMs = options.idleTimeoutMs ?? 60_000;
  }

  /** Sends a request and reads the whole answer, following redirects of GET and HEAD. */
  async request(url: string | URL, init: HttpRequest = {}): Promise<HttpResponse> {
    const method = init.method ?? 'GET';
    let target = new URL(url);
    let headers = init.headers ?? {};
    for (let hops = 0; ; hops++) {
      const res = await this.send(target, method, headers, init);
      const location = res.header('location');
      if (!REDIRECTS.has(res.status) || !location || (method !== 'GET' && method !== 'HEAD')) return res;
      if (hops === MAX_REDIRECTS)
        throw new IoError(`${method} ${String(url)}: more than ${MAX_REDIRECTS} redirects`, {
          context: { url: String(url) },
        });
      const next = new URL(location, target);
      if (next.origin !== target.origin) headers = withoutAuthorization(headers);
      target = next;
    }
  }

  /** Closes every pooled connection. */
  close(): void {
    this.http.destroy();
    this.https.destroy();
  }

  private async send(
    url: URL,
    method: string,
    headers: Record<string, string>,
    init: HttpRequest,
  ): Promise<HttpResponse> {
    try {
      return await this.exchange(url, method, headers, init);
    } catch (err) {
      if (!(err instanceof StaleConnection)) throw err;
      return this.exchange(url, method, headers, init); // on a fresh or another pooled connection
    }
  }

  private exchange(
    url: URL,
    method: string,
    headers: Record<string, string>,
    init: HttpRequest,
  ): Promise<HttpResponse> {
    const { signal, body } = init;
    const maxBody = init.maxBodyBytes ?? MAX_BODY;
    signal?.throwIfAborted();
    return new Promise<HttpResponse>((resolve, reject) => {
      let settled = false;
      const finish = (err: unknown, res?: HttpResponse): void => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        if (err === undefined) resolve(res!);
        else reject(err);
      };
      const fail = (message: string, cause?: unknown): IoError =>
        new IoError(`${method} ${url.href}: ${message}`, { cause, context: { url: url.href, method } });

      const lib = url.protocol === 'https:' ? https : http;
      const req = lib.request(url, {
        method,
        headers: body ? { ...headers, 'content-length': String(body.length) } : headers,
        agent: url.protocol === 'https:' ? this.https : this.http,
      });
      // Settles first, then drops the connection: nothing it emits afterwards can resolve.
      const abandon = (err: unknown): void => {
        finish(err);
        req.destroy();
      };
      const onAbort = (): void => abandon(signal!.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      req.setTimeout(this.idleTimeoutMs, () =>
        abandon(fail(`no answer for ${this.idleTimeoutMs} ms (is the registry reachable?)`)),
      );

      req.on('error', (err: NodeJS.ErrnoException) => {
        const idempotent = method === 'GET' || method === 'HEAD';
        if (idempotent && req.reusedSocket && STALE_CONNECTION.has(err.code ?? ''))
          return finish(new StaleConnection());
        finish(fail(err.message, err));
      });

      req.on('response', (res) => {
        const reply = (data: Buffer): HttpResponse => ({
          status: res.statusCode ?? 0,
          statusText: res.statusMessage ?? '',
          url: url.href,
          body: data,
          header: (name) => {
            const v = res.headers[name];
            return Array.isArray(v) ? v.join(', ') : v;
          },
        });
        if (method === 'HEAD' || res.statusCode === 204 || res.statusCode === 304) {
          res.resume();
          res.on('end', () => finish(undefined, reply(Buffer.alloc(0))));
          return;
        }
        const declared = res.headers['content-length'];
        const length = declared === undefined ? undefined : Number(declared);
        if (length !== undefined && !(length >= 0 && length <= maxBody)) {
          abandon(fail(`answer of ${declared} bytes is over the ${maxBody}-byte limit`));
          return;
        }
        // One copy per byte: into a buffer of the declared length, else into pieces joined once.
        // Only a success is received into the caller's buffer: redirects and errors are not its data.
        const ok = res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 300;
        const whole = length === undefined ? undefined : (ok && init.allocate?.(length)) || Buffer.allocUnsafe(length);
        const pieces: Buffer[] = [];
        let got = 0;
        res.on('data', (piece: Buffer) => {
          if (settled) return;
          if (got + piece.length > (length ?? maxBody)) {
            abandon(fail(`answer longer than ${length ?? maxBody} bytes`));
            return;
          }
          if (whole) piece.copy(whole, got);
          else pieces.push(piece);
          got += piece.length;
        });
        res.on('end', () => {
          if (whole && got !== whole.length) return finish(fail(`answer cut short at ${got} of ${length} bytes`));
          finish(undefined, reply(whole ?? Buffer.concat(pieces, got)));
        });
        res.on('error', (err) => finish(fail(err.message, err)));
      });
      req.end(body);
    });
  }
}

/** A reused connection failed before any answer: the (idempotent) request may be sent again. */
class StaleConnection extends Error {}

function withoutAuthorization(headers: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).filter(([k]) => k.toLowerCase() !== 'authorization'));
}
