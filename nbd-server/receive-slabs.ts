/**
 * Receive memory for NBD connections: fixed-size slabs the kernel reads socket data straight
 * into (the socket's `onread` hook), reused once every byte read into them has been consumed.
 *
 * Why: without it Node hands each socket read to JavaScript in a fresh 64 KiB buffer. Writing
 * 512 MiB through the server is 8,192 such buffers, whose external memory keeps the garbage
 * collector busy, and a 256 KiB write payload costs four reads. With slabs, a read takes as much
 * as the socket holds (up to the slab's free tail) and no memory is allocated while they cycle
 * (docs/BENCHMARKS.md, "Receive slabs").
 *
 * A slab counts its references: one for each received piece not yet released (pieces are
 * views, so a write payload is passed to pwritev where it landed). The connection's current
 * slab is also held until the next read moves on. A slab nobody holds goes back to the pool,
 * which keeps a bounded number of free ones for the next connection that needs them.
 */

export const SLAB_BYTES = 256 * 1024;
/** Free slabs the process keeps for reuse; more are left to the garbage collector. */
const KEEP_FREE = 64;

export class Slab {
  readonly buf: Buffer;
  /** Bytes received into the slab so far: the next read lands after them. */
  filled = 0;
  /** Received pieces of this slab not yet released. */
  refs = 0;
  /** True while the slab is a connection's current one (the next read may land in it). */
  current = false;

  constructor(bytes: number) {
    this.buf = Buffer.allocUnsafeSlow(bytes);
  }
}

/** The free slabs, shared by every connection of the process. */
export class SlabPool {
  private readonly free: Slab[] = [];

  constructor(
    readonly slabBytes = SLAB_BYTES,
    private readonly keepFree = KEEP_FREE,
  ) {}

  take(): Slab {
    const s = this.free.pop() ?? new Slab(this.slabBytes);
    s.filled = 0;
    s.refs = 0;
    s.current = true;
    return s;
  }

  /** Takes back a slab nobody holds any more. */
  give(s: Slab): void {
    if (this.free.length < this.keepFree) this.free.push(s);
  }

  /** Free slabs kept (for tests and metrics). */
  get kept(): number {
    return this.free.length;
  }
}

export const sharedSlabPool = new SlabPool();
