/**
 * The order in which a volume first read the chunks of its frozen base: a startup profile.
 * A container's first reads are nearly the same on every host (same file system image, same
 * program), so the chunks one run read, published with the snapshot as its prefetch list, can
 * be fetched in parallel as soon as another host opens it, instead of one round trip at a
 * time as the program faults them in (compare eStargz's prioritized files and Nydus's
 * prefetch lists). Kept in memory only; bounded.
 */
import type { ChunkIndex } from './types.js';

/** Most chunks remembered: 8 GiB of 128 KiB chunks, far beyond any startup. */
export const MAX_TRACE = 65_536;

export class ReadTrace {
  private readonly seen = new Set<ChunkIndex>();

  /** Notes a read of base chunk `idx` (only its first read counts). */
  record(idx: ChunkIndex): void {
    if (this.seen.size < MAX_TRACE) this.seen.add(idx);
  }

  /** Chunks in first-read order. */
  chunks(): ChunkIndex[] {
    return [...this.seen];
  }
}
