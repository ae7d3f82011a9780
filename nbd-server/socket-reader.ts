/**
 * Pull-style reading of exact byte counts from a socket, with backpressure: the socket is paused
 * whenever more than `highWaterMark` bytes are buffered (or than the pending read needs), so a
 * peer can never make us buffer more than one frame plus a small window. `skip` discards bytes
 * as they arrive, so even a 4 GiB payload we refuse costs no memory.
 */
import type { Socket } from 'node:net';
import { ProtocolError } from '../common/errors.js';

/** The peer closed the connection before the bytes we needed arrived. */
export class PeerClosedError extends ProtocolError {}

type Waiter =
  | { kind: 'read'; need: number; resolve: (buf: Buffer) => void; reject: (err: Error) => void }
  | { kind: 'chunks'; need: number; resolve: (bufs: Buffer[]) => void; reject: (err: Error) => void }
  | { kind: 'skip'; resolve: () => void; reject: (err: Error) => void };

export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: Waiter | undefined;
  /** Bytes still to discard for the outstanding skip(). */
  private skipping = 0;
  private failure: Error | undefined;
  private paused = false;

  constructor(
    private readonly socket: Socket,
    private readonly highWaterMark = 1024 * 1024,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.fail(new PeerClosedError('peer closed the connection')));
    socket.on('close', () => this.fail(new PeerClosedError('connection closed')));
    socket.on('error', (err) => this.fail(err));
  }

  /** Bytes received but not yet consumed. */
  get pending(): number {
    return this.buffered;
  }

  /** Resolves with exactly `n` bytes. Only one read or skip may be outstanding. */
  read(n: number): Promise<Buffer> {
    if (this.buffered >= n) return Promise.resolve(this.take(n));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { kind: 'read', need: n, resolve, reject };
      this.updateFlow();
    });
  }

  /**
   * Resolves with exactly `n` bytes as the pieces they arrived in: no copy to join them, for
   * consumers that can write a vector (a large write payload spans several socket reads).
   */
  readChunks(n: number): Promise<Buffer[]> {
    if (this.buffered >= n) return Promise.resolve(this.takeChunks(n));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { kind: 'chunks', need: n, resolve, reject };
      this.updateFlow();
    });
  }

  /** Discards exactly `n` bytes without buffering them. */
  skip(n: number): Promise<void> {
    const now = Math.min(n, this.buffered);
    this.takeChunks(now);
    if (now === n) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    this.skipping = n - now;
    return new Promise((resolve, reject) => {
      this.waiter = { kind: 'skip', resolve, reject };
      this.updateFlow();
    });
  }

  private onData(chunk: Buffer): void {
    if (this.failure) return; // nobody will read it: discard
    if (this.skipping > 0) {
      const n = Math.min(this.skipping, chunk.length);
      this.skipping -= n;
      chunk = chunk.subarray(n);
      if (this.skipping === 0) (this.settle() as { resolve: () => void } | undefined)?.resolve();
      if (chunk.length === 0) return;
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const w = this.waiter;
    if (w && w.kind !== 'skip' && this.buffered >= w.need) {
      this.waiter = undefined;
      if (w.kind === 'read') w.resolve(this.take(w.need));
      else w.resolve(this.takeChunks(w.need));
    }
    this.updateFlow();
  }

  private updateFlow(): void {
    const need = this.waiter && this.waiter.kind !== 'skip' ? this.waiter.need : 0;
    const full = this.skipping === 0 && this.buffered >= Math.max(this.highWaterMark, need);
    if (full && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!full && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /** Exactly `n` bytes as one buffer: zero-copy when they arrived in one piece (the usual case for headers). */
  private take(n: number): Buffer {
    const parts = this.takeChunks(n);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  private takeChunks(n: number): Buffer[] {
    const out: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const c = this.chunks[0]!;
      if (c.length <= left) {
        out.push(c);
        this.chunks.shift();
        left -= c.length;
      } else {
        out.push(c.subarray(0, left));
        this.chunks[0] = c.subarray(left);
        left = 0;
      }
    }
    this.buffered -= n;
    this.updateFlow();
    return out;
  }

  /** Fails the outstanding and all later reads with `err` (used to stop a connection). */
  abort(err: Error): void {
    this.fail(err);
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.skipping = 0;
    // Drop what is buffered and let the socket flow again: a paused socket would never see the
    // peer's FIN, and a closing connection would linger until it is destroyed.
    this.chunks = [];
    this.buffered = 0;
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
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
