/**
 * The eviction bound of the chunk store (it holds no chunks itself): chunks the backing store also has (fetched from it,
 * or published to it) may be evicted, least recently used first, to keep them under a size
 * limit; they are fetched again if needed. Chunks that exist only here (frozen but unpublished)
 * are never admitted, so never evicted.
 *
 * The LRU order lives in memory (a Map in use order) and is written to the metadata every
 * PERSIST_INTERVAL_MS and at close, never on the read path: neither a cache hit nor an
 * eviction costs a database write (synced SQLite commits on the read path cost much of the warm
 * read throughput: docs/BENCHMARKS.md, "Measurements behind the code"). The order is a
 * hint: after a crash the last saved one is used, and rows of chunks evicted since go at the
 * next eviction of theirs (removing an absent chunk does nothing).
 */
import type { Digest } from '../../common/digests.js';

/** Where the use order is saved (the volume metadata). */
export interface EvictionCatalog {
  cachedChunks(): { digest: Digest; size: number }[];
  touchCached(entries: { digest: Digest; size: number; lastUsed: number }[]): void;
  forgetCached(digests: readonly Digest[]): void;
}

/** How often the use order is saved (also at close). */
const PERSIST_INTERVAL_MS = 30_000;

export class EvictionBound {
  /** Evictable chunks in least- to most-recently-used order, with their sizes. */
  private readonly lru = new Map<Digest, number>();
  private readonly dirty = new Set<Digest>();
  /** Evicted since the last persist: their rows go then. */
  private readonly evicted = new Set<Digest>();
  private used = 0;
  evictions = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly metadata: EvictionCatalog,
    /** Deletes an evicted chunk's bytes. */
    private readonly local: { remove(digest: Digest): Promise<void> },
    readonly limitBytes: number,
  ) {
    for (const { digest, size } of metadata.cachedChunks()) {
      this.lru.set(digest, size);
      this.used += size;
    }
    this.timer = setInterval(() => this.persist(), PERSIST_INTERVAL_MS).unref();
  }

  get bytes(): number {
    return this.used;
  }

  get count(): number {
    return this.lru.size;
  }

  /**
   * Makes a chunk found stored locally evictable, without evicting now: a fetched chunk whose
   * entry here was not saved before a crash would otherwise stay forever.
   */
  adopt(digest: Digest, size: number): void {
    if (this.lru.has(digest)) return;
    this.used += size;
    this.use(digest, size);
  }

  /** A read hit: the chunk becomes the most recently used (no-op for local-only chunks). */
  touch(digest: Digest): void {
    const size = this.lru.get(digest);
    if (size !== undefined) this.use(digest, size);
  }

  /** Makes a locally stored chunk evictable (the store has it), then evicts down to the limit. */
  async admit(digest: Digest, size: number): Promise<void> {
    if (!this.lru.has(digest)) this.used += size;
    this.use(digest, size);
    await this.evict(digest);
  }

  /** Saves the use order now; stops the periodic save when `final`. */
  persist(final = false): void {
    if (final) clearInterval(this.timer);
    this.metadata.forgetCached([...this.evicted]);
    this.evicted.clear();
    if (this.dirty.size === 0) return;
    // Use times that preserve the in-memory order: older entries get earlier times.
    const now = Date.now();
    const n = this.lru.size;
    const entries: { digest: Digest; size: number; lastUsed: number }[] = [];
    let position = 0;
    for (const [digest, size] of this.lru) {
      if (this.dirty.has(digest)) entries.push({ digest, size, lastUsed: now - (n - position) });
      position++;
    }
    this.metadata.touchCached(entries);
    this.dirty.clear();
  }

  /** Makes the chunk the most recently used; its use time is saved at the next persist. */
  private use(digest: Digest, size: number): void {
    this.lru.delete(digest);
    this.lru.set(digest, size);
    this.dirty.add(digest);
    this.evicted.delete(digest); // evicted, then fetched again before the rows were saved
  }

  /** Evicts least recently used chunks until under the limit, sparing `keep`. */
  private async evict(keep: Digest): Promise<void> {
    for (const [digest, size] of this.lru) {
      if (this.used <= this.limitBytes) return;
      if (digest === keep) continue;
      this.lru.delete(digest);
      this.dirty.delete(digest);
      this.used -= size;
      this.evictions++;
      this.evicted.add(digest);
      await this.local.remove(digest);
    }
  }
}
