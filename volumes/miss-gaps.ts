/**
 * A volume's recent cold reads (chunks it had to fetch), for fetching the gaps between them.
 *
 * ext4 lays a file out as a run of blocks, and a program reads its libraries in no order a
 * sequential reader would show: the loader and the page faults of mapped code jump about the
 * file. On MultiMake's fresh worker, the start of a compiled program missed libc's 16 adjacent
 * chunks in 12 round trips (2332, then 2346-2347, then 2333, 2334, ... in the order its faults
 * came), ~190 ms of its ~460 ms of fetching (docs/BENCHMARKS.md, "Filling the gaps between
 * misses"). Two misses a short distance apart most likely fall in one file: the chunks between
 * them are fetched at once, in the store request the second miss makes (one Range of a pack).
 * Misses far apart, or adjacent, add nothing; a sequential reader has its own readahead.
 */
import type { ChunkIndex } from './types.js';

/** Two misses at most this far apart have the chunks between them fetched (2 MiB: 16 chunks). */
export const GAP_FILL_BYTES = 2 * 1024 * 1024;
/** The misses a new one is measured against: the last few (an older one is another file's). */
const RECENT_MISSES = 4;

export class MissGaps {
  private readonly recent: ChunkIndex[] = [];
  private readonly span: number;

  /** `chunkSize`: the volume's; `gapBytes`: the widest gap filled (0: none). */
  constructor(chunkSize: number, gapBytes = GAP_FILL_BYTES) {
    this.span = Math.floor(gapBytes / chunkSize);
  }

  /**
   * Notes that chunk `idx` missed; returns the chunks strictly between it and each recent miss
   * at most the span away, in ascending order (the caller fetches those it does not have).
   */
  note(idx: ChunkIndex): ChunkIndex[] {
    const fill = new Set<ChunkIndex>();
    for (const m of this.recent) {
      const lo = Math.min(m, idx);
      const hi = Math.max(m, idx);
      if (hi - lo > 1 && hi - lo <= this.span) for (let i = lo + 1; i < hi; i++) fill.add(i);
    }
    if (!this.recent.includes(idx)) {
      this.recent.push(idx);
      if (this.recent.length > RECENT_MISSES) this.recent.shift();
    }
    return [...fill].sort((a, b) => a - b);
  }
}
