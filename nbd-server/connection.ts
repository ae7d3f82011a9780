/**
 * One client connection: handshake, then the transmission phase. Requests are read one at a
 * time, validated (validate.ts), and run concurrently against the export's backend; each reply
 * is written in one go when its request completes, so replies go out of order but never
 * interleave. Data is fetched before a reply header is sent, so a failing read is always
 * reported as an error and never as a truncated success.
 *
 * Memory stays bounded: a request's payload or reply counts against a per-connection and a
 * server-wide ByteBudget until the kernel has taken the reply; the number of requests in flight
 * is capped; and reading stops while the peer is not draining our replies (slow reader).
 */
import type { Socket } from 'node:net';
import { ShutdownError, ProtocolError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { Backend, Extent } from '../block/backend.js';
import { ByteBudget } from './budget.js';
import { errnoName, toNbdErrno } from './errno.js';
import type { Export, ExportRegistry } from './exports.js';
import { negotiate, type Negotiated } from './handshake.js';
import {
  CMD,
  CMD_FLAG,
  CMD_NAMES,
  NBD_ERR,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  STATE_HOLE,
  STATE_ZERO,
} from './protocol.js';
import * as replies from './replies.js';
import { fileOps } from '../common/fileops.js';
import { allCached, sendDirect, socketFd } from './direct-reply.js';
import { PeerClosedError, SocketReader, type Lent } from './socket-reader.js';
import { validateRequest, type ExportState, type Request } from './validate.js';

export interface ConnectionLimits {
  /** Requests one connection may have in flight. */
  maxInflight: number;
  /** Bytes of payloads and replies one connection may hold. */
  budgetBytes: number;
  /** Time allowed from connect to the end of the handshake. */
  handshakeTimeoutMs: number;
  /**
   * SO_SNDBUF asked for in transmission (the kernel caps it at net.core.wmem_max). The default
   * 208 KiB holds less than one 256 KiB read reply, so a direct reply would mostly be queued as
   * a copy (what 4 MiB bought: docs/BENCHMARKS.md). 0 keeps the system default.
   */
  sendBufferBytes: number;
}

export interface ConnectionDeps {
  exports: ExportRegistry;
  /** Server-wide byte budget shared by all connections. */
  serverBudget: ByteBudget;
  limits: ConnectionLimits;
  shuttingDown(): boolean;
  log: Logger;
  /** Send cached file data with sendfile(2) when the backend offers fileSlices (direct-reply.ts). */
  zeroCopy: boolean;
  /** Counts of how read replies left (server-wide). */
  stats: { direct: number; directBytesQueued: number; copied: number };
}

/** Most descriptors one BLOCK_STATUS reply carries (the spec lets us return fewer). */
const MAX_DESCRIPTORS = 4096;
/** Structured reads report zero runs at least this long as holes rather than data. */
const MIN_HOLE_REPLY = 4096;
/**
 * Only reads at least this long ask the backend for holes: for small reads the extents lookup
 * (two lseeks on a file) costs more than sending the zeroes.
 */
const MIN_SPARSE_READ = 64 * 1024;
/**
 * Replies smaller than this wait for the end of the event-loop turn and leave together in one
 * writev; larger ones are written at once (holding them back only added latency: measured in
 * docs/BENCHMARKS.md, "Measurements behind the code").
 */
const BATCH_BELOW = 64 * 1024;
/** How long a closing connection may take to hand its last replies to a peer. */
const CLOSE_GRACE_MS = 5000;

/** A reply: frames written back to back, never interleaved with another reply's. */
interface Reply {
  frames: Buffer[];
}

/** A reply already sent straight to the socket (direct-reply.ts): nothing left to write. */
const SENT: Reply = { frames: [] };

export class Connection {
  private readonly reader: SocketReader;
  private readonly budget: ByteBudget;
  private readonly log: Logger;
  private inflight = 0;
  private slotWaiter: (() => void) | undefined;
  private idleWaiter: (() => void) | undefined;
  private stopping = false;
  /** True while replies of this event-loop turn are being collected for one writev. */
  private corked = false;
  private phase: 'handshake' | 'transmission' = 'handshake';
  private readonly closed: Promise<void>;
  /** Replies handed to socket.write whose bytes the kernel has not taken yet. */
  private unsent = 0;
  private sentWaiters: (() => void)[] = [];
  /** The socket's descriptor, for zero-copy replies and its send buffer (set in transmission). */
  private fd: number | undefined;

  constructor(
    private readonly socket: Socket,
    private readonly deps: ConnectionDeps,
    readonly id: number,
    reader?: SocketReader,
  ) {
    socket.setNoDelay(true);
    this.reader = reader ?? new SocketReader(socket);
    this.budget = new ByteBudget(deps.limits.budgetBytes);
    this.log = deps.log.child({ conn: id, peer: socket.remoteAddress ?? 'unix' });
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        for (const wake of this.sentWaiters.splice(0)) wake();
        resolve();
      }),
    );
  }

  /** Runs the connection to its end; never rejects. */
  async run(): Promise<void> {
    const timer = setTimeout(() => {
      this.log.info('handshake timed out');
      this.socket.destroy();
    }, this.deps.limits.handshakeTimeoutMs);
    let negotiated: Negotiated | undefined;
    try {
      negotiated = await negotiate({
        reader: this.reader,
        send: (buf) => this.socket.write(buf),
        exports: this.deps.exports,
        shuttingDown: () => this.stopping || this.deps.shuttingDown(),
        log: this.log,
      });
    } catch (err) {
      this.logEnd(err, 'handshake');
      this.close();
      return;
    } finally {
      clearTimeout(timer);
    }
    if (!negotiated) {
      this.close(); // client sent NBD_OPT_ABORT
      return;
    }
    const e = negotiated.export;
    e.attached++;
    this.fd = socketFd(this.socket);
    this.enlargeSendBuffer();
    this.phase = 'transmission';
    this.log.debug({ export: e.name, structured: negotiated.structuredReplies }, 'transmission');
    try {
      await this.transmission(negotiated);
    } catch (err) {
      this.logEnd(err, 'transmission');
    }
    // Requests already accepted still complete and their replies go out before we hang up.
    await this.idle();
    e.attached--;
    this.close();
  }

  /**
   * Graceful stop. In transmission: read no more requests, let those in flight finish and their
   * replies go out, then close. In the handshake: options are answered with ERR_SHUTDOWN, and a
   * client that does not hang up within `graceMs` is cut off.
   */
  async shutdown(graceMs = CLOSE_GRACE_MS): Promise<void> {
    this.stopping = true;
    if (this.phase === 'transmission') {
      this.reader.abort(new ShutdownError('server shutting down'));
    } else {
      const timer = setTimeout(() => this.socket.destroy(), graceMs);
      void this.closed.then(() => clearTimeout(timer));
    }
    await this.closed;
  }

  private async transmission(n: Negotiated): Promise<void> {
    const e = n.export;
    const state: ExportState = {
      size: e.backend.size,
      caps: e.caps,
      readOnly: e.readOnly,
      blockSizes: e.blockSizes,
      structuredReplies: n.structuredReplies,
      metaContextSelected: n.metaContextId !== 0,
    };
    for (;;) {
      if (this.stopping) return;
      const h = await this.reader.read(REQUEST_HEADER_SIZE);
      if (h.readUInt32BE(0) !== REQUEST_MAGIC) {
        throw new ProtocolError('bad request magic', { context: { magic: h.readUInt32BE(0) } });
      }
      const offset = h.readBigUInt64BE(16);
      const req: Request = {
        flags: h.readUInt16BE(4),
        type: h.readUInt16BE(6),
        handle: Buffer.from(h.subarray(8, 16)),
        offset: offset > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(offset),
        length: h.readUInt32BE(24),
      };
      if (req.type === CMD.DISC) return;

      const error = validateRequest(req, state);
      let payload: Lent | undefined;
      if (req.type === CMD.WRITE) {
        if (error !== 0) {
          // Keep the stream in step without holding the payload: even 4 GiB costs nothing.
          await this.reader.skip(req.length);
        } else {
          await this.reserve(req.length);
          try {
            // Lent where it landed in the receive slab, and released once written.
            payload = e.backend.pwritev
              ? await this.reader.lendChunks(req.length)
              : { chunks: [await this.reader.read(req.length)], release: () => undefined };
          } catch (err) {
            this.unreserve(req.length);
            throw err;
          }
        }
      }
      if (error !== 0) {
        this.logRequestError(e, req, error, 'rejected');
        this.send(this.errorReply(req, n, error, `request rejected: ${errnoName(error)}`), 0);
        continue;
      }
      const reserved = req.type === CMD.READ || req.type === CMD.WRITE ? req.length : 0;
      if (req.type === CMD.READ) await this.reserve(reserved);
      this.start(e, n, req, payload, reserved);

      if (this.inflight >= this.deps.limits.maxInflight) {
        await new Promise<void>((resolve) => (this.slotWaiter = resolve));
      }
      if (this.socket.writableNeedDrain) await this.drained();
    }
  }

  private start(e: Export, n: Negotiated, req: Request, payload: Lent | undefined, reserved: number): void {
    this.inflight++;
    this.execute(e, n, req, payload?.chunks)
      .finally(() => payload?.release())
      .catch((err: unknown) => {
        const errno = toNbdErrno(err);
        this.logRequestError(e, req, errno, 'failed', err);
        return this.errorReply(req, n, errno, err instanceof Error ? err.message : String(err));
      })
      .then((reply) => this.send(reply, reserved))
      .finally(() => {
        this.inflight--;
        const slot = this.slotWaiter;
        this.slotWaiter = undefined;
        slot?.();
        if (this.inflight === 0) {
          const idle = this.idleWaiter;
          this.idleWaiter = undefined;
          idle?.();
        }
      });
  }

  private async execute(e: Export, n: Negotiated, req: Request, payload: Buffer[] | undefined): Promise<Reply> {
    const b = e.backend;
    const fua = (req.flags & CMD_FLAG.FUA) !== 0;
    switch (req.type) {
      case CMD.READ:
        return this.read(e, n, req);
      case CMD.WRITE:
        if (payload!.length === 1) await b.pwrite!(payload![0]!, req.offset, { fua });
        else await b.pwritev!(payload!, req.offset, { fua });
        break;
      case CMD.FLUSH:
        await b.flush?.();
        break;
      case CMD.TRIM:
        await b.trim!(req.offset, req.length, { fua });
        break;
      case CMD.WRITE_ZEROES: {
        const fast = (req.flags & CMD_FLAG.FAST_ZERO) !== 0;
        const mayTrim = (req.flags & CMD_FLAG.NO_HOLE) === 0;
        if (b.zero) await b.zero(req.offset, req.length, { fua, fast, mayTrim });
        else await this.writeZeroes(e, req.offset, req.length, fua);
        break;
      }
      case CMD.CACHE:
        await b.cache?.(req.offset, req.length);
        break;
      case CMD.BLOCK_STATUS:
        return this.blockStatus(e, n, req);
    }
    return { frames: [n.structuredReplies ? replies.structuredNone(req.handle) : replies.simpleReply(req.handle, 0)] };
  }

  private async read(e: Export, n: Negotiated, req: Request): Promise<Reply> {
    const b = e.backend;
    const mode = { structured: n.structuredReplies, fragment: (req.flags & CMD_FLAG.DF) === 0 };
    if (b.fileSlices && this.deps.zeroCopy && this.fd !== undefined) {
      // A lazily fetching backend brings the range into its files first, and the reply leaves
      // from them like any other: no copy into a buffer, and then into the socket.
      const localizing = b.localize?.(req.offset, req.length);
      if (localizing) await localizing;
      if ((await this.readDirectWhenIdle(this.fd, b, req, mode)) === 'sent') return SENT;
    }
    this.deps.stats.copied++;
    const pieces =
      b.extents && mode.structured && mode.fragment && req.length >= MIN_SPARSE_READ
        ? readPieces(await b.extents(req.offset, req.length), req.offset, req.length)
        : [{ offset: req.offset, length: req.length, zero: false }];
    const data = await Promise.all(
      pieces.map((p) => (p.zero ? { kind: 'zero' as const, length: p.length } : b.pread(p.length, p.offset))),
    );
    return { frames: replies.readReply(req.handle, req.offset, data, mode) };
  }

  /**
   * Once nothing is queued on the socket (direct bytes must not overtake queued replies), sends
   * a read reply with sendfile if the backend has the range in files in the page cache. Says
   * what happened; nothing is sent unless 'sent'.
   */
  private async readDirectWhenIdle(
    fd: number,
    b: Backend,
    req: Request,
    mode: replies.ReadMode,
  ): Promise<'sent' | 'not-local' | 'not-cached'> {
    while (this.unsent > 0 && !this.socket.destroyed) await this.allSent();
    if (this.socket.destroyed) return 'not-cached';
    // Synchronous from here: the descriptors fileSlices lends are open only until this task ends.
    const slices = b.fileSlices!(req.offset, req.length);
    if (!slices) return 'not-local';
    const frames = replies.readReply(req.handle, req.offset, slices, mode);
    if (!allCached(frames)) return 'not-cached';
    let rest: Buffer[];
    try {
      rest = sendDirect(fd, frames);
    } catch (err) {
      // The peer is gone: what it asked for can no longer be delivered.
      this.log.debug({ err }, 'direct reply failed');
      this.socket.destroy();
      return 'sent';
    }
    this.deps.stats.direct++;
    // The kernel's buffer filled: the rest of this reply queues behind, as a reply of its own.
    if (rest.length > 0) {
      this.deps.stats.directBytesQueued += rest.reduce((k, b) => k + b.length, 0);
      this.send({ frames: rest }, 0);
    }
    return 'sent';
  }

  private enlargeSendBuffer(): void {
    if (this.fd === undefined || this.deps.limits.sendBufferBytes <= 0) return;
    try {
      fileOps.setSendBuffer(this.fd, this.deps.limits.sendBufferBytes);
    } catch (err) {
      this.log.debug({ err }, 'could not set the send buffer size'); // only a speed matter
    }
  }

  /** Resolves once every reply handed to socket.write has reached the kernel (or the socket closed). */
  private allSent(): Promise<void> {
    if (this.unsent === 0 || this.socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => this.sentWaiters.push(resolve));
  }

  private async blockStatus(e: Export, n: Negotiated, req: Request): Promise<Reply> {
    const extents = e.backend.extents
      ? await e.backend.extents(req.offset, req.length)
      : [{ offset: req.offset, length: req.length, hole: false, zero: false }];
    const descriptors: replies.Descriptor[] = [];
    let covered = 0;
    for (const x of extents) {
      const length = Math.min(x.length, req.length - covered);
      if (length <= 0) break;
      const flags = (x.hole ? STATE_HOLE : 0) | (x.zero ? STATE_ZERO : 0);
      const last = descriptors[descriptors.length - 1];
      if (last && last.flags === flags) last.length += length;
      else descriptors.push({ length, flags });
      covered += length;
    }
    if (descriptors.length === 0) descriptors.push({ length: req.length, flags: 0 });
    const limit = (req.flags & CMD_FLAG.REQ_ONE) !== 0 ? 1 : MAX_DESCRIPTORS;
    return { frames: [replies.blockStatus(req.handle, n.metaContextId, descriptors.slice(0, limit))] };
  }

  /** WRITE_ZEROES for backends without a zero operation. */
  private async writeZeroes(e: Export, offset: number, length: number, fua: boolean): Promise<void> {
    for (let done = 0; done < length;) {
      const k = Math.min(replies.ZEROES.length, length - done);
      await e.backend.pwrite!(replies.ZEROES.subarray(0, k), offset + done, { fua: false });
      done += k;
    }
    if (fua) await e.backend.flush?.();
  }

  private errorReply(req: Request, n: Negotiated, errno: number, message: string): Reply {
    // Structured clients get the message; the spec also requires a structured reply to READ.
    return {
      frames: [
        n.structuredReplies
          ? replies.structuredError(req.handle, errno, message)
          : replies.simpleReply(req.handle, errno),
      ],
    };
  }

  /**
   * Writes one reply contiguously, then frees its budget once the kernel has it. Small replies
   * that complete in the same event-loop turn are corked together and leave in one writev: with
   * many requests in flight this saves a syscall per reply.
   */
  private send(reply: Reply, reserved: number): void {
    this.unsent++;
    const release = once(() => {
      this.unreserve(reserved);
      if (--this.unsent === 0) for (const wake of this.sentWaiters.splice(0)) wake();
    });
    if (this.socket.destroyed || reply.frames.length === 0) {
      release();
      return;
    }
    const last = reply.frames.length - 1;
    const write = (): void => reply.frames.forEach((f, i) => this.socket.write(f, i === last ? release : undefined));
    if (this.corked) {
      write(); // joins the batch already being collected: order is kept
    } else if (reply.frames.reduce((n, f) => n + f.length, 0) >= BATCH_BELOW) {
      this.socket.cork(); // header and data in one writev, now
      write();
      this.socket.uncork();
    } else {
      this.corked = true;
      this.socket.cork();
      setImmediate(() => {
        this.corked = false;
        this.socket.uncork();
      });
      write();
    }
  }

  private async reserve(n: number): Promise<void> {
    if (n === 0) return;
    await this.budget.acquire(n);
    await this.deps.serverBudget.acquire(n);
  }

  private unreserve(n: number): void {
    if (n === 0) return;
    this.deps.serverBudget.release(n);
    this.budget.release(n);
  }

  /** Flushes what is queued, then closes; a peer that stops reading is cut off after a while. */
  private close(): void {
    if (this.socket.destroyed) return;
    this.reader.abort(new ShutdownError('connection closing'));
    this.socket.end();
    setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS).unref();
  }

  private drained(): Promise<void> {
    if (this.socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  private idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const previous = this.idleWaiter;
      this.idleWaiter = () => {
        previous?.();
        resolve();
      };
    });
  }

  private logRequestError(e: Export, req: Request, errno: number, what: string, err?: unknown): void {
    // Client mistakes are the client's business (debug); backend failures are ours (warn).
    const level = what === 'failed' && errno !== NBD_ERR.ENOTSUP ? 'warn' : 'debug';
    this.log[level](
      {
        export: e.name,
        cmd: CMD_NAMES[req.type] ?? req.type,
        offset: req.offset,
        length: req.length,
        errno: errnoName(errno),
        err,
      },
      `nbd request ${what}`,
    );
  }

  private logEnd(err: unknown, phase: string): void {
    if (err instanceof PeerClosedError || err instanceof ShutdownError) {
      this.log.debug({ phase }, 'connection closed');
    } else {
      this.log.info({ phase, err }, 'connection dropped');
    }
  }
}

/** Splits a read into data pieces and zero pieces (reported as holes) from the backend's extents. */
export function readPieces(
  extents: Extent[],
  offset: number,
  length: number,
): { offset: number; length: number; zero: boolean }[] {
  const end = offset + length;
  const out: { offset: number; length: number; zero: boolean }[] = [];
  let pos = offset;
  for (const x of extents) {
    if (pos >= end) break;
    const xEnd = Math.min(x.offset + x.length, end);
    if (xEnd <= pos) continue;
    const zero = x.zero && xEnd - pos >= MIN_HOLE_REPLY;
    const last = out[out.length - 1];
    if (last && last.zero === zero) last.length += xEnd - pos;
    else out.push({ offset: pos, length: xEnd - pos, zero });
    pos = xEnd;
  }
  if (pos < end) {
    const last = out[out.length - 1];
    if (last && !last.zero) last.length += end - pos;
    else out.push({ offset: pos, length: end - pos, zero: false });
  }
  return out;
}

function once(fn: () => void): () => void {
  let called = false;
  return () => {
    if (!called) {
      called = true;
      fn();
    }
  };
}
