/**
 * The HTTP/1.1 client of the oci:// store: bounded keep-alive pools of Http1Connection per
 * origin (http1-connection.ts: bodies received in place, straight from the kernel).
 *
 * Why not `fetch` or node:http: undici's fetch copies every body byte three or four times, and
 * node:http hands every socket read to JS as a new buffer to copy from. On the cold read path
 * that was most of the CPU: per 256 MiB of packs, 2-2.9 s through fetch, 0.8-0.9 s through
 * node:http, 0.14-0.22 s here (docs/BENCHMARKS.md).
 *
 * It does: bounded keep-alive pools per origin; redirects of GET and HEAD (S3-backed registries
 * answer blob GETs with a 307 to a presigned URL; credentials never follow a redirect to another
 * origin); abort signals; a bound on body size; an idle timeout, so a silent server fails the
 * request instead of hanging it; one retry of a GET or HEAD whose reused connection the server
 * had already closed. It does not do proxies (neither does Node 20's fetch), HTTP/2 or content
 * encodings (chunk packs are binary, and compressed per chunk where that pays).
 */
import { IoError, TransportError } from '../common/errors.js';
import { Http1Connection, Http1Failure, type Http1Response } from './http1-connection.js';

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
  /**
   * Reuse an idle connection only within this long (default 4 s), and within the server's
   * announced Keep-Alive timeout less a second: a request sent just as the server closes the
   * connection fails, and only GET and HEAD may be sent again.
   */
  keepAliveMs?: number;
  /** Certificates (PEM) to trust for https instead of Node's default store (which NODE_EXTRA_CA_CERTS extends). */
  ca?: string | Buffer;
}

const MAX_BODY = 256 * 1024 * 1024;
const MAX_REDIRECTS = 5;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Errors of a reused keep-alive connection that the server closed while it sat idle. */
const STALE_CONNECTION = new Set(['ECONNRESET', 'EPIPE']);
/** Idle connections kept per origin. */
const MAX_IDLE = 16;

/** One origin's connections: idle ones (most recently used last), and callers waiting for one. */
interface Origin {
  idle: Http1Connection[];
  /** Connections open, idle or busy. */
  count: number;
  waiting: (() => void)[];
}

export class HttpClient {
  private readonly origins = new Map<string, Origin>();
  private readonly maxSockets: number;
  private readonly idleTimeoutMs: number;
  private readonly keepAliveMs: number;
  private readonly ca: string | Buffer | undefined;
  private closed = false;

  constructor(options: HttpClientOptions = {}) {
    this.maxSockets = options.maxSockets ?? 16;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 60_000;
    this.keepAliveMs = options.keepAliveMs ?? 4_000;
    this.ca = options.ca;
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
    this.closed = true;
    for (const o of this.origins.values()) for (const c of o.idle.splice(0)) c.destroy();
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
      // Its idle siblings are likely stale too (the server restarted, or timed them all out):
      // the retry goes on a new connection, so it cannot fail this way again.
      for (const c of this.originOf(url).idle.splice(0)) c.destroy();
      return this.exchange(url, method, headers, init);
    }
  }

  private async exchange(
    url: URL,
    method: string,
    headers: Record<string, string>,
    init: HttpRequest,
  ): Promise<HttpResponse> {
    const { signal } = init;
    signal?.throwIfAborted();
    if (url.protocol !== 'http:' && url.protocol !== 'https:')
      throw new IoError(`${url.href}: only http and https URLs are supported`, { context: { url: url.href } });
    const fail = (message: string, cause?: unknown): IoError =>
      new IoError(`${method} ${url.href}: ${message}`, { cause, context: { url: url.href, method } });
    const origin = this.originOf(url);
    const conn = await this.connection(url, origin, signal);
    const reused = conn.exchanges > 0;
    let answer: Http1Response;
    try {
      answer = await new Promise<Http1Response>((resolve, reject) => {
        const onAbort = (): void => {
          reject(signal!.reason);
          conn.destroy();
        };
        signal?.addEventListener('abort', onAbort, { once: true });
        conn.setIdleTimeout(this.idleTimeoutMs, () => {
          reject(fail(`no answer for ${this.idleTimeoutMs} ms (is the registry reachable?)`));
          conn.destroy();
        });
        conn
          .exchange(
            {
              method,
              target: `${url.pathname}${url.search}`,
              headers,
              body: init.body,
              maxBodyBytes: init.maxBodyBytes ?? MAX_BODY,
              allocate: init.allocate,
            },
            url.host,
          )
          .then(resolve, reject)
          .finally(() => signal?.removeEventListener('abort', onAbort));
      });
    } catch (err) {
      this.release(origin, conn); // closed by the failure, unless nothing was sent (a refused header)
      if (!(err instanceof Http1Failure)) throw err;
      const idempotent = method === 'GET' || method === 'HEAD';
      if (idempotent && reused && err.beforeAnswer && (err.errno === undefined || STALE_CONNECTION.has(err.errno)))
        throw new StaleConnection();
      throw fail(err.message, err.cause ?? err);
    }
    this.release(origin, conn);
    return {
      status: answer.status,
      statusText: answer.statusText,
      url: url.href,
      body: answer.body,
      header: (name) => answer.headers.get(name),
    };
  }

  private originOf(url: URL): Origin {
    const key = `${url.protocol}//${url.host}`;
    let o = this.origins.get(key);
    if (!o) this.origins.set(key, (o = { idle: [], count: 0, waiting: [] }));
    return o;
  }

  /** An idle connection to the origin, a new one, or the next one freed (at most maxSockets). */
  private async connection(url: URL, o: Origin, signal?: AbortSignal): Promise<Http1Connection> {
    for (;;) {
      const idle = o.idle.pop();
      if (idle?.reusable && !this.idleTooLong(idle)) return idle;
      if (idle) {
        idle.destroy(); // idle too long, or closed while idle (then already uncounted)
        continue;
      }
      if (o.count < this.maxSockets) {
        o.count++;
        const c = new Http1Connection(url, { ca: this.ca });
        c.onClose = () => {
          o.count--;
          const i = o.idle.indexOf(c);
          if (i >= 0) o.idle.splice(i, 1);
          o.waiting.shift()?.();
        };
        return c;
      }
      await new Promise<void>((resolve, reject) => {
        const wake = (): void => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = (): void => {
          const i = o.waiting.indexOf(wake);
          if (i >= 0) o.waiting.splice(i, 1); // a wake-up must not go to a caller that left
          reject(signal!.reason);
        };
        o.waiting.push(wake);
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
  }

  private idleTooLong(c: Http1Connection): boolean {
    const limit = Math.min(this.keepAliveMs, (c.serverKeepAliveMs ?? Infinity) - 1000);
    return Date.now() - c.idleSince >= limit;
  }

  /** Back to the pool (or closed), waking one waiter either way. */
  private release(o: Origin, c: Http1Connection): void {
    if (c.reusable && !this.closed && o.idle.length < MAX_IDLE) {
      o.idle.push(c);
      o.waiting.shift()?.();
    } else {
      c.destroy(); // its onClose wakes a waiter
    }
  }
}

/** A reused connection failed before any answer: the (idempotent) request may be sent again. */
/** A kept-alive connection the server had closed: the request goes again on a new one (never surfaces). */
class StaleConnection extends TransportError {
  constructor() {
    super('stale kept-alive connection');
  }
}

function withoutAuthorization(headers: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).filter(([k]) => k.toLowerCase() !== 'authorization'));
}
