/**
 * Pull-style reading of exact byte counts from a socket, with backpressure: the socket is paused
 * whenever more than `highWaterMark` bytes are buffered (or than the pending read needs), so a
 * peer can never make us buffer more than one frame plus a small window. `skip` discards bytes
 * as they arrive, so even a 4 GiB payload we refuse costs no memory.
 *
 * A socket made with the reader's `onread` hook (see `receiveIntoSlabs`) has the kernel read
 * into reused slabs (receive-slabs.ts) instead of a fresh buffer per read; `lendChunks` then
 * lends a payload where it landed, until its consumer releases it.
 */
import { Socket } from 'node:net';
import { ProtocolError } from '../common/errors.js';
import { sharedSlabPool, type Slab, type SlabPool } from './receive-slabs.js';

/** The peer closed the connection before the bytes we needed arrived. */
export class PeerClosedError extends ProtocolError {}

/** Bytes lent by `lendChunks`: valid until `release()`, which must be called exactly once. */
export interface Lent {
  chunks: Buffer[];
  release(): void;
}

/** The outstanding read (`take` gives its bytes in the form asked for), or skip. */
type Waiter =
  | {
      kind: 'take';
      need: number;
      take: (n: number) => unknown;
      resolve: (v: never) => void;
      reject: (err: Error) => void;
    }
  | { kind: 'skip'; resolve: () => void; reject: (err: Error) => void };

/** A received piece, and the slab it lies in (undefined: a buffer of its own). */
interface Piece {
  buf: Buffer;
  slab: Slab | undefined;
}

/** A lent slab's free tail shorter than this is not worth a read: the next slab is taken. */
const MIN_TAIL = 16 * 1024;
/** Slabs one connection may hold at once; beyond, reads get buffers of their own. */
const MAX_SLABS_HELD = 16;
/** A read's buffer when no slab is lent (the size Node itself uses). */
const OWN_BUFFER_BYTES = 64 * 1024;

const NO_RELEASE = (): void => undefined;

export class SocketReader {
  private pieces: Piece[] = [];
  private buffered = 0;
  private waiter: Waiter | undefined;
  /** Bytes still to discard for the outstanding skip(). */
  private skipping = 0;
  private failure: Error | undefined;
  private paused = false;
  private socket: Socket | undefined;
  /** The slab reads land in now. */
  private slab: Slab | undefined;
  /** The slab of the buffer lent for the next read (undefined: a buffer of its own). */
  private lentSlab: Slab | undefined;
  /** Slabs taken from the pool and not yet given back. */
  private held = 0;

  /** The socket's `onread` option: pass it when making the socket (receiveIntoSlabs does). */
  readonly onread = {
    buffer: (): Buffer => this.nextBuffer(),
    callback: (n: number, buf: Buffer): boolean => {
      this.onReceived(n, buf);
      return true;
    },
  };

  constructor(
    socket?: Socket,
    private readonly highWaterMark = 1024 * 1024,
    private readonly pool: SlabPool = sharedSlabPool,
  ) {
    if (socket) this.attach(socket);
  }

  /** Starts reading `socket`: one made with `onread`, or an ordinary one (its 'data' events). */
  attach(socket: Socket): void {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => this.onData({ buf: chunk, slab: undefined }));
    socket.on('end', () => this.fail(new PeerClosedError('peer closed the connection')));
    socket.on('close', () => this.fail(new PeerClosedError('connection closed')));
    socket.on('error', (err) => this.fail(err));
  }

  /** Bytes received but not yet consumed. */
  get pending(): number {
    return this.buffered;
  }

  /** Slabs this reader holds (its current one, and those with pieces not yet released). */
  get slabsHeld(): number {
    return this.held;
  }

  /** Resolves with exactly `n` bytes, the caller's to keep. Only one read or skip may be outstanding. */
  read(n: number): Promise<Buffer> {
    return this.when(n, (k) => this.take(k));
  }

  /**
   * Resolves with exactly `n` bytes as the pieces they arrived in, the caller's to keep: no copy
   * to join them, for consumers that keep the bytes and can write a vector.
   */
  readChunks(n: number): Promise<Buffer[]> {
    return this.when(n, (k) => this.takeOwned(k));
  }

  /**
   * Resolves with exactly `n` bytes as the pieces they arrived in, lent where they landed: the
   * caller writes them out and then releases them (their slab is reused after that).
   */
  lendChunks(n: number): Promise<Lent> {
    return this.when(n, (k) => this.lend(k));
  }

  /** `take(n)` of the next `n` bytes, now if they are here, else once they have arrived. */
  private when<T>(n: number, take: (n: number) => T): Promise<T> {
    if (this.buffered >= n) return Promise.resolve(take(n));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<T>((resolve, reject) => {
      this.waiter = { kind: 'take', need: n, take, resolve: resolve as (v: never) => void, reject };
      this.updateFlow();
    });
  }

  /** Discards exactly `n` bytes without buffering them. */
  skip(n: number): Promise<void> {
    const now = Math.min(n, this.buffered);
    this.releaseAll(this.takePieces(now));
    if (now === n) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    this.skipping = n - now;
    return new Promise((resolve, reject) => {
      this.waiter = { kind: 'skip', resolve, reject };
      this.updateFlow();
    });
  }

  /** Fails the outstanding and all later reads with `err` (used to stop a connection). */
  abort(err: Error): void {
    this.fail(err);
  }

  /** The buffer the kernel reads into next: the current slab's free tail, or a new slab. */
  private nextBuffer(): Buffer {
    let s = this.slab;
    // A slab whose pieces were all released starts over: reads keep landing in one warm slab.
    if (s && s.refs === 0) s.filled = 0;
    if (s && s.buf.length - s.filled < MIN_TAIL) {
      this.retire(s);
      s = undefined;
    }
    if (!s && this.held < MAX_SLABS_HELD && !this.failure) {
      s = this.pool.take();
      this.held++;
      this.slab = s;
    }
    this.lentSlab = s;
    return s ? s.buf.subarray(s.filled) : Buffer.allocUnsafe(OWN_BUFFER_BYTES);
  }

  private onReceived(n: number, buf: Buffer): void {
    const s = this.lentSlab;
    if (s) {
      s.filled += n;
      s.refs++;
    }
    // A buffer of our own: the piece keeps what was read and the rest is left to the collector.
    this.onData({ buf: n === buf.length ? buf : buf.subarray(0, n), slab: s });
  }

  private onData(p: Piece): void {
    if (this.failure) return this.release(p.slab); // nobody will read it: discard
    if (this.skipping > 0) {
      const n = Math.min(this.skipping, p.buf.length);
      this.skipping -= n;
      p = { buf: p.buf.subarray(n), slab: p.slab };
      if (this.skipping === 0) (this.settle() as { resolve: () => void } | undefined)?.resolve();
      if (p.buf.length === 0) return this.release(p.slab);
    }
    this.pieces.push(p);
    this.buffered += p.buf.length;
    const w = this.waiter;
    if (w?.kind === 'take' && this.buffered >= w.need) {
      this.waiter = undefined;
      w.resolve(w.take(w.need) as never);
    }
    this.updateFlow();
  }

  private updateFlow(): void {
    if (!this.socket) return;
    const need = this.waiter?.kind === 'take' ? this.waiter.need : 0;
    const full = this.skipping === 0 && this.buffered >= Math.max(this.highWaterMark, need);
    if (full && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!full && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /** Exactly `n` bytes as one buffer of the caller's: zero-copy when they arrived in one own piece. */
  private take(n: number): Buffer {
    const parts = this.takePieces(n);
    if (parts.length === 1 && !parts[0]!.slab) return parts[0]!.buf;
    const out = Buffer.concat(
      parts.map((p) => p.buf),
      n,
    );
    this.releaseAll(parts);
    return out;
  }

  private takeOwned(n: number): Buffer[] {
    const parts = this.takePieces(n);
    const out = parts.map((p) => (p.slab ? Buffer.from(p.buf) : p.buf));
    this.releaseAll(parts);
    return out;
  }

  private lend(n: number): Lent {
    const parts = this.takePieces(n);
    if (parts.every((p) => !p.slab)) return { chunks: parts.map((p) => p.buf), release: NO_RELEASE };
    let released = false;
    return {
      chunks: parts.map((p) => p.buf),
      release: () => {
        if (released) return;
        released = true;
        this.releaseAll(parts);
      },
    };
  }

  /** The next `n` bytes' pieces; a piece split in two holds its slab twice. */
  private takePieces(n: number): Piece[] {
    const out: Piece[] = [];
    let left = n;
    while (left > 0) {
      const c = this.pieces[0]!;
      if (c.buf.length <= left) {
        out.push(c);
        this.pieces.shift();
        left -= c.buf.length;
      } else {
        out.push({ buf: c.buf.subarray(0, left), slab: c.slab });
        if (c.slab) c.slab.refs++;
        this.pieces[0] = { buf: c.buf.subarray(left), slab: c.slab };
        left = 0;
      }
    }
    this.buffered -= n;
    this.updateFlow();
    return out;
  }

  private releaseAll(parts: readonly Piece[]): void {
    for (const p of parts) this.release(p.slab);
  }

  private release(s: Slab | undefined): void {
    if (!s) return;
    s.refs--;
    if (s.refs === 0 && !s.current) this.giveBack(s);
  }

  /** Reads stop landing in `s`; it goes back to the pool once its pieces are released. */
  private retire(s: Slab): void {
    s.current = false;
    if (this.slab === s) this.slab = undefined;
    if (s.refs === 0) this.giveBack(s);
  }

  private giveBack(s: Slab): void {
    this.held--;
    this.pool.give(s);
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.skipping = 0;
    // Drop what is buffered and let the socket flow again: a paused socket would never see the
    // peer's FIN, and a closing connection would linger until it is destroyed.
    this.releaseAll(this.pieces);
    this.pieces = [];
    this.buffered = 0;
    // The current slab is not given back: the kernel may still read into its lent tail.
    if (this.paused) {
      this.paused = false;
      this.socket?.resume();
    }
    this.settle()?.reject(err);
  }

  /** Removes and returns the outstanding waiter. */
  private settle(): { resolve: (value: never) => void; reject: (err: Error) => void } | undefined {
    const w = this.waiter;
    this.waiter = undefined;
    return w;
  }
}

/**
 * Moves an accepted connection onto a socket that receives into slabs. net.Server has no way
 * to give its sockets an `onread` hook, so the accepted socket (paused: the server listens with
 * `pauseOnConnect`) hands its handle to a new socket made with the hook, and is then destroyed
 * without it: that closes nothing, and the server stops counting it.
 */
export function receiveIntoSlabs(
  accepted: Socket,
  highWaterMark?: number,
  pool?: SlabPool,
): { socket: Socket; reader: SocketReader } {
  const reader = new SocketReader(undefined, highWaterMark, pool);
  const a = accepted as unknown as { _handle: unknown };
  const handle = a._handle;
  if (!handle) throw new ProtocolError('connection closed before it was set up');
  a._handle = null;
  accepted.destroy();
  const socket = new Socket({ handle, onread: reader.onread, readable: true, writable: true } as never);
  reader.attach(socket);
  return { socket, reader };
}
