/**
 * Reusable receive buffers ("slabs") for large transfers whose lifetime the caller knows.
 *
 * Why: a fresh multi-MiB buffer is new memory from the kernel, and every page of it faults on
 * first touch: filling a fresh buffer is an order of magnitude slower than filling a reused one,
 * and it made the single copy of a fetched body a large share of the cold read's CPU (numbers:
 * docs/BENCHMARKS.md, "Measurements behind the code"). Slabs handed back with `give` are reused instead; when none is free a new one is
 * made, so the pool never waits. Slabs idle for IDLE_MS are dropped, so a quiet process does not
 * keep its peak.
 *
 * New slabs lie on transparent huge pages where the kernel allows it (madvise, through the
 * native addon): a slab's first fill then takes one fault per 2 MiB instead of one per 4 KiB.
 * Page faults of fresh slabs were a visible share of the event loop's time in a cold read, and
 * every cold start after an idle spell begins with fresh slabs.
 */
import { fileOps } from './fileops.js';

const IDLE_MS = 30_000;
/** A transparent huge page: slabs are aligned to it, so each of their 2 MiB faults once. */
const HUGE_PAGE = 2 * 1024 * 1024;

export class BufferPool {
  private readonly free: Buffer[] = [];
  /** Slabs lent out and not given back yet, by their memory: the whole slab each came from. */
  private readonly lent = new WeakMap<ArrayBufferLike, Buffer>();
  private lastTake = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    /** Bytes per slab: takes larger than this get a buffer of their own, not pooled. */
    readonly slabBytes: number,
    /** Free slabs kept for reuse. */
    private readonly maxFree: number,
  ) {
    this.timer = setInterval(() => {
      if (Date.now() - this.lastTake >= IDLE_MS) this.free.length = 0;
    }, IDLE_MS).unref();
  }

  /** A buffer of `length` bytes (contents undefined). Give it back once nothing reads it. */
  take(length: number): Buffer {
    this.lastTake = Date.now();
    if (length > this.slabBytes) return Buffer.allocUnsafe(length);
    const slab = this.free.pop() ?? this.newSlab();
    this.lent.set(slab.buffer, slab);
    return slab.subarray(0, length);
  }

  /**
   * Hands back the slabs under these buffers (views into a slab count as the slab). Buffers the
   * pool did not lend, and slabs already given back, are ignored.
   */
  give(buffers: Iterable<Buffer>): void {
    for (const b of buffers) {
      const slab = this.lent.get(b.buffer);
      if (!slab) continue;
      this.lent.delete(b.buffer);
      if (this.free.length < this.maxFree) this.free.push(slab);
    }
  }

  /** Drops the free slabs and stops the idle timer. */
  close(): void {
    clearInterval(this.timer);
    this.free.length = 0;
  }

  /**
   * A slab of its own memory, starting on a huge page boundary when it is at least one huge page
   * (the memory before the boundary is never touched, so it costs address space, not RAM).
   */
  private newSlab(): Buffer {
    if (this.slabBytes < HUGE_PAGE) return Buffer.allocUnsafeSlow(this.slabBytes);
    const raw = Buffer.allocUnsafeSlow(this.slabBytes + HUGE_PAGE);
    const at = fileOps.adviseHugePages(raw);
    const start = at >= 0 && at + this.slabBytes <= raw.length ? at : 0;
    return raw.subarray(start, start + this.slabBytes);
  }
}
