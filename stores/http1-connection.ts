/**
 * One HTTP/1.1 client connection (TCP or TLS) that receives with the socket's `onread` hook:
 * the kernel reads a response body of known length straight into the buffer it is returned in.
 * No JS copy of the body, and no fresh 64 KiB buffer per socket read for the garbage collector.
 *
 * Why not node:http: its parser hands each socket read to JS as a new Buffer, which is then
 * copied into place. Fetching 256 MiB of packs with 2 MiB Range requests on loopback took
 * 0.77-0.89 s of CPU through node:http and 0.14-0.22 s here (docs/BENCHMARKS.md).
 *
 * One request at a time per connection (no pipelining). Responses are framed by Content-Length,
 * by chunked transfer coding, or by the connection closing; 1xx interim answers are skipped.
 * The connection knows nothing of pools, redirects or retries: http-client.ts does those.
 */
import net from 'node:net';
import tls from 'node:tls';
import { InvalidArgumentError, ProtocolError, TransportError, type SlackerErrorOptions } from '../common/errors.js';

export interface Http1Request {
  method: string;
  /** The request target: path and query. */
  target: string;
  /** Header names and values (checked for line breaks). Host and Content-Length are added. */
  headers: Record<string, string>;
  body?: Buffer;
  /** A longer body fails the exchange. */
  maxBodyBytes: number;
  /** Where a 2xx body of declared length goes; by default a new buffer. */
  allocate?: (length: number) => Buffer;
}

export interface Http1Response {
  status: number;
  statusText: string;
  /** Lower-case names; repeated headers joined with ", ". */
  headers: Map<string, string>;
  body: Buffer;
}

/** Why an exchange failed; `beforeAnswer` when not one byte of an answer had arrived. */
export class Http1Failure extends TransportError {
  constructor(
    message: string,
    readonly beforeAnswer: boolean,
    readonly errno?: string,
    options?: SlackerErrorOptions,
  ) {
    super(message, options);
  }
}

/** Status line and headers together may not be longer (Node's own default limit). */
const HEAD_LIMIT = 16 * 1024;
/** Scratch for heads and for bodies that are not received in place. */
const SCRATCH_BYTES = 64 * 1024;
const HEADER_VALUE_OK = /^[^\r\n\0]*$/;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

type Phase =
  | { kind: 'idle' }
  | { kind: 'head' }
  | { kind: 'length'; body: Buffer; got: number }
  | { kind: 'chunked'; decoder: ChunkedDecoder }
  | { kind: 'close'; pieces: Buffer[]; got: number };

interface Pending {
  request: Http1Request;
  resolve: (res: Http1Response) => void;
  reject: (err: Http1Failure) => void;
  answered: boolean;
  status?: number;
  statusText?: string;
  headers?: Map<string, string>;
  keepAlive?: boolean;
}

export class Http1Connection {
  /** Usable for another exchange: open, idle, and the last answer allowed keep-alive. */
  get reusable(): boolean {
    return this.open && !this.socket.destroyed && this.phase.kind === 'idle' && !this.closeAfter;
  }
  /** Exchanges completed on this connection. */
  exchanges = 0;
  /** When the last exchange completed (Date.now()). */
  idleSince = 0;
  /** How long the server keeps an idle connection, if its last answer said (Keep-Alive: timeout=N). */
  serverKeepAliveMs: number | undefined;

  private readonly socket: net.Socket;
  private readonly scratch = Buffer.allocUnsafeSlow(SCRATCH_BYTES);
  /** Bytes of `scratch` holding data not yet consumed. */
  private held = 0;
  private phase: Phase = { kind: 'idle' };
  private pending: Pending | undefined;
  private open = true;
  private closeAfter = false;
  private readonly connected: Promise<void>;

  /** Called once the connection is closed, whatever closed it. */
  onClose: () => void = () => undefined;
  private onTimeout: () => void = () => undefined;

  constructor(url: URL, options: { ca?: string | Buffer } = {}) {
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1'); // IPv6 literals come bracketed
    // callback's true: keep reading (false would pause the socket).
    const onread = { buffer: () => this.nextBuffer(), callback: (n: number) => (this.received(n), true) };
    if (url.protocol === 'https:') {
      // tls.connect takes onread as net.connect does (its typings lack it).
      this.socket = tls.connect({
        host,
        port: Number(url.port || 443),
        servername: net.isIP(host) ? undefined : host,
        ALPNProtocols: ['http/1.1'],
        ca: options.ca,
        onread,
      } as tls.ConnectionOptions);
    } else {
      this.socket = net.connect({ host, port: Number(url.port || 80), onread });
    }
    this.socket.setNoDelay(true);
    this.connected = new Promise((resolve, reject) => {
      this.socket.once(url.protocol === 'https:' ? 'secureConnect' : 'connect', () => resolve());
      this.socket.once('error', reject);
    });
    this.connected.catch(() => undefined);
    this.socket.on('error', (err: NodeJS.ErrnoException) => this.fail(err.message, err.code, err));
    this.socket.on('end', () => this.ended());
    this.socket.on('timeout', () => this.pending && this.onTimeout());
    this.socket.on('close', () => {
      this.open = false;
      this.fail('connection closed');
      this.onClose();
    });
  }

  /** Sends a request and resolves with the whole answer. One exchange at a time. */
  async exchange(request: Http1Request, host: string): Promise<Http1Response> {
    if (this.pending || !this.open) throw new Http1Failure('connection is busy or closed', true);
    for (const [name, value] of Object.entries(request.headers)) {
      if (!TOKEN.test(name) || !HEADER_VALUE_OK.test(value))
        throw new InvalidArgumentError(`header ${JSON.stringify(name)} has a name or value HTTP cannot carry`, {
          context: { header: name },
        });
    }
    await this.connected.catch((err: NodeJS.ErrnoException) => {
      throw new Http1Failure(err.message, true, err.code, { cause: err });
    });
    const lines = [`${request.method} ${request.target} HTTP/1.1`, `host: ${host}`];
    for (const [name, value] of Object.entries(request.headers)) {
      if (name.toLowerCase() !== 'host' && name.toLowerCase() !== 'content-length') lines.push(`${name}: ${value}`);
    }
    const hasBody = request.body !== undefined || !['GET', 'HEAD', 'DELETE', 'OPTIONS'].includes(request.method);
    if (hasBody) lines.push(`content-length: ${request.body?.length ?? 0}`);
    const head = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
    return new Promise<Http1Response>((resolve, reject) => {
      this.pending = { request, resolve, reject, answered: false };
      this.phase = { kind: 'head' };
      this.held = 0;
      this.socket.ref(); // an idle pooled connection keeps no process alive; a busy one does
      this.socket.cork();
      this.socket.write(head);
      if (request.body && request.body.length > 0) this.socket.write(request.body);
      this.socket.uncork();
    });
  }

  /** Closes the connection; an exchange in progress fails. */
  destroy(): void {
    this.socket.destroy();
  }

  /** Calls `onTimeout` if the peer is silent for `ms` during the next exchange. */
  setIdleTimeout(ms: number, onTimeout: () => void): void {
    this.onTimeout = onTimeout;
    this.socket.setTimeout(ms);
  }

  /** Where the kernel puts the next bytes it reads from the socket. */
  private nextBuffer(): Buffer {
    if (this.phase.kind === 'length') return this.phase.body.subarray(this.phase.got);
    if (this.held === SCRATCH_BYTES) this.held = 0; // only when a head overflowed: failed already
    return this.scratch.subarray(this.held);
  }

  private received(n: number): void {
    const p = this.pending;
    if (!p) {
      // Bytes while idle: a server speaking out of turn. The connection cannot be trusted.
      this.socket.destroy();
      return;
    }
    p.answered = true;
    if (this.phase.kind === 'length') {
      this.phase.got += n;
      if (this.phase.got === this.phase.body.length) this.complete(this.phase.body);
      return;
    }
    this.held += n;
    try {
      this.consume();
    } catch (err) {
      this.settle(new Http1Failure((err as Error).message, false, undefined, { cause: err })); // closes it
    }
  }

  /** Parses what `scratch` holds, in the current phase. */
  private consume(): void {
    const p = this.pending!;
    while (this.held > 0 && this.pending === p) {
      const data = this.scratch.subarray(0, this.held);
      if (this.phase.kind === 'head') {
        const end = data.indexOf('\r\n\r\n');
        if ((end < 0 ? this.held : end + 4) > HEAD_LIMIT)
          throw new ProtocolError(`answer head longer than ${HEAD_LIMIT} bytes`);
        if (end < 0) return;
        const head = data.toString('latin1', 0, end);
        this.shift(end + 4); // before startBody: an answer without a body completes in it
        this.startBody(head);
      } else if (this.phase.kind === 'length') {
        // Body bytes that came with the head: copied once, the rest is received in place.
        const phase = this.phase;
        const k = Math.min(this.held, phase.body.length - phase.got);
        data.copy(phase.body, phase.got, 0, k);
        phase.got += k;
        this.shift(k);
        if (phase.got === phase.body.length) this.complete(phase.body);
      } else if (this.phase.kind === 'chunked') {
        const used = this.phase.decoder.push(data);
        this.shift(used);
        if (this.phase.decoder.done) this.complete(this.phase.decoder.body());
        else if (used === 0) return; // a partial size line: wait for more
      } else if (this.phase.kind === 'close') {
        const phase = this.phase;
        if (phase.got + this.held > p.request.maxBodyBytes)
          throw new ProtocolError(`answer longer than ${p.request.maxBodyBytes} bytes`);
        phase.pieces.push(Buffer.from(data));
        phase.got += this.held;
        this.held = 0;
      } else {
        throw new ProtocolError('bytes after the end of an answer');
      }
    }
  }

  /** Reads a status line and headers, and chooses how the body is framed. */
  private startBody(head: string): void {
    const p = this.pending!;
    const [statusLine, ...fields] = head.split('\r\n');
    const m = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(statusLine ?? '');
    if (!m) throw new ProtocolError(`not an HTTP/1.x status line: ${JSON.stringify(statusLine?.slice(0, 80))}`);
    const status = Number(m[2]);
    const headers = new Map<string, string>();
    for (const line of fields) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).toLowerCase();
      if (colon <= 0 || !TOKEN.test(name))
        throw new ProtocolError(`malformed header line: ${JSON.stringify(line.slice(0, 80))}`);
      const value = line.slice(colon + 1).trim();
      const before = headers.get(name);
      if (name === 'content-length' && before !== undefined && before !== value)
        throw new ProtocolError('conflicting Content-Length headers');
      headers.set(name, before === undefined || name === 'content-length' ? value : `${before}, ${value}`);
    }
    if (status >= 100 && status < 200) return; // interim (100 Continue): the real answer follows
    const connection = (headers.get('connection') ?? '').toLowerCase();
    const keepAlive = m[1] === '1' ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection);
    Object.assign(p, { status, statusText: m[3] ?? '', headers, keepAlive });
    const chunked = /\bchunked\b/i.test(headers.get('transfer-encoding') ?? '');
    const declared = headers.get('content-length');
    if (p.request.method === 'HEAD' || status === 204 || status === 304) {
      this.complete(Buffer.alloc(0));
    } else if (chunked) {
      if (declared !== undefined) p.keepAlive = false; // both framings: chunked wins, then close (RFC 9112 6.3)
      this.phase = { kind: 'chunked', decoder: new ChunkedDecoder(p.request.maxBodyBytes) };
    } else if (declared !== undefined) {
      if (!/^\d+$/.test(declared)) throw new ProtocolError(`malformed Content-Length ${JSON.stringify(declared)}`);
      const length = Number(declared);
      if (length > p.request.maxBodyBytes)
        throw new ProtocolError(`answer of ${length} bytes is over the ${p.request.maxBodyBytes}-byte limit`);
      const ok = status >= 200 && status < 300;
      const body = (ok && p.request.allocate?.(length)) || Buffer.allocUnsafe(length);
      if (body.length !== length)
        throw new ProtocolError(`a ${body.length}-byte buffer was lent for a ${length}-byte body`);
      this.phase = { kind: 'length', body, got: 0 };
      if (length === 0) this.complete(body);
    } else {
      p.keepAlive = false;
      this.phase = { kind: 'close', pieces: [], got: 0 };
    }
  }

  /** Drops the first `n` held bytes. */
  private shift(n: number): void {
    if (n < this.held) this.scratch.copy(this.scratch, 0, n, this.held);
    this.held -= n;
  }

  private ended(): void {
    if (this.phase.kind === 'close' && this.pending) {
      const phase = this.phase;
      this.complete(Buffer.concat(phase.pieces, phase.got));
      return;
    }
    if (this.phase.kind === 'length' && this.pending)
      this.fail(`answer cut short at ${this.phase.got} of ${this.phase.body.length} bytes`);
    else this.fail('connection closed by the server');
    this.socket.destroy();
  }

  private complete(body: Buffer): void {
    const p = this.pending!;
    this.phase = { kind: 'idle' };
    if (!p.keepAlive) this.closeAfter = true;
    if (this.held > 0) this.closeAfter = true; // bytes beyond the answer: not a connection to reuse
    this.exchanges++;
    this.idleSince = Date.now();
    const announced = /\btimeout=(\d+)/i.exec(p.headers?.get('keep-alive') ?? '');
    this.serverKeepAliveMs = announced ? Number(announced[1]) * 1000 : undefined;
    this.socket.unref();
    this.settle(undefined, {
      status: p.status!,
      statusText: p.statusText!,
      headers: p.headers!,
      body,
    });
    if (this.closeAfter) this.socket.destroy();
  }

  private fail(message: string, errno?: string, cause?: unknown): void {
    const p = this.pending;
    if (!p) return;
    this.settle(new Http1Failure(message, !p.answered, errno, cause === undefined ? undefined : { cause }));
  }

  private settle(err: Http1Failure | undefined, res?: Http1Response): void {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    this.socket.setTimeout(0);
    if (err) {
      this.open = false; // a failed exchange leaves the stream in an unknown state
      this.phase = { kind: 'idle' };
      p.reject(err);
      this.socket.destroy();
    } else p.resolve(res!);
  }
}

/** Decodes a chunked body (RFC 9112 7.1) fed in pieces; trailers are read and dropped. */
class ChunkedDecoder {
  done = false;
  private readonly pieces: Buffer[] = [];
  private total = 0;
  /** Data bytes left in the current chunk; -1 while a size line is expected. */
  private left = -1;
  /** The CRLF after a chunk's data is still to come. */
  private crlf = false;
  private trailers = false;

  constructor(private readonly maxBody: number) {}

  /** Consumes what it can of `data`; returns how many bytes it used (0: needs more). */
  push(data: Buffer): number {
    let at = 0;
    while (at < data.length && !this.done) {
      if (this.left > 0) {
        const k = Math.min(this.left, data.length - at);
        this.pieces.push(Buffer.from(data.subarray(at, at + k)));
        this.total += k;
        this.left -= k;
        at += k;
        if (this.left === 0) this.crlf = true;
        continue;
      }
      const eol = data.indexOf('\r\n', at);
      if (eol < 0) {
        if (data.length - at > 4096) throw new ProtocolError('chunk size line too long');
        return at;
      }
      const line = data.toString('latin1', at, eol);
      at = eol + 2;
      if (this.crlf) {
        if (line !== '') throw new ProtocolError('chunk data not followed by CRLF');
        this.crlf = false;
        this.left = -1;
      } else if (this.trailers) {
        if (line === '') this.done = true;
      } else {
        const m = /^([0-9A-Fa-f]{1,12})(?:[ \t]*;.*)?$/.exec(line);
        if (!m) throw new ProtocolError(`malformed chunk size line ${JSON.stringify(line.slice(0, 40))}`);
        const size = parseInt(m[1]!, 16);
        if (this.total + size > this.maxBody) throw new ProtocolError(`answer longer than ${this.maxBody} bytes`);
        if (size === 0) this.trailers = true;
        else this.left = size;
      }
    }
    return at;
  }

  body(): Buffer {
    return Buffer.concat(this.pieces, this.total);
  }
}
