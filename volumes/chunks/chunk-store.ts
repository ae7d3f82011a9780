/**
 * The chunk store: the one place volumes and the manager get frozen chunks from. It owns where
 * a chunk is (local-store.ts: files and cache segments), fetching what is not here from the
 * backing store (fetcher.ts: once per digest, batched, verified), and the bound on what may be
 * evicted (eviction.ts). Volumes know chunk indexes and digests, nothing of packs or files:
 * `follow` is where the store's request structure (a pack, one Range request) is used for a
 * sequential reader.
 *
 * Layout under DIR: chunk files `ab/cdef...`, cache segments in `segments/` and the packs of
 * staged freezes in `packs/` (each owned by one process at a time: see cache-segments.ts).
 * Where the store has each chunk comes through `ChunkLocations` (the manager's metadata).
 */
import { join } from 'node:path';
import { NotSupportedError } from '../../common/errors.js';
import type { Digest } from '../../common/digests.js';
import { silentLogger, type Logger } from '../../common/logger.js';
import type { BackingStore } from '../../stores/backing-store.js';
import { CacheSegments, type PackChunk, type SegmentCatalog } from './cache-segments.js';
import { EvictionBound, type EvictionCatalog } from './eviction.js';
import type { FetchCounters } from './fetch-counters.js';
import { ChunkFetcher, DEFAULT_FETCH_POLICY, type ChunkLocations, type FetchPolicy } from './fetcher.js';
import { LocalStore } from './local-store.js';

export interface ChunkStoreOptions {
  /** Where segment places and the eviction order are recorded (the volume metadata). */
  catalog: SegmentCatalog & EvictionCatalog;
  /** Where pack places are recorded; without it, chunks made here are all files of their own. */
  packCatalog?: SegmentCatalog;
  /** Where missing chunks come from; without one, only local chunks can be read. */
  store?: BackingStore;
  locations: ChunkLocations;
  fetchPolicy?: Partial<FetchPolicy>;
  /** Bytes of evictable chunks kept (default 10 GiB). */
  cacheBytes?: number;
  log?: Logger;
}

/** A chunk's bytes in an open file, lent for a zero-copy reply until the current task ends. */
export interface LentChunk {
  fd: number;
  position: number;
}

export class ChunkStore {
  private constructor(
    private readonly local: LocalStore,
    private readonly bound: EvictionBound,
    private readonly fetcher: ChunkFetcher,
  ) {}

  static async open(dir: string, o: ChunkStoreOptions): Promise<ChunkStore> {
    const log = o.log ?? silentLogger();
    const segments = await CacheSegments.open(join(dir, 'segments'), o.catalog, { log });
    if (!segments) {
      log.info(
        { dir },
        'another process owns the fetched-chunk cache of this state root: chunks this one fetches are kept as files of their own',
      );
    }
    // Pack chunks exist only here until published: never adopted by the eviction bound.
    const packs = o.packCatalog ? await CacheSegments.open(join(dir, 'packs'), o.packCatalog, { log }) : undefined;
    const local = new LocalStore(dir, segments, packs);
    const bound = new EvictionBound(o.catalog, local, o.cacheBytes ?? 10 * 2 ** 30);
    // Fetched chunks are all evictable: also those a crash kept the bound from saving.
    for (const { digest, length } of segments?.entries() ?? []) bound.adopt(digest, length);
    const policy = { ...DEFAULT_FETCH_POLICY, ...o.fetchPolicy };
    return new ChunkStore(local, bound, new ChunkFetcher(local, o.store, o.locations, policy, log, bound));
  }

  /** Everything fetched, whichever volume asked. */
  get total(): FetchCounters {
    return this.fetcher.total;
  }

  /** The cache segments, for inspection (undefined when another process owns them). */
  get segments(): CacheSegments | undefined {
    return this.local.segments;
  }

  /** The packs of staged freezes, for inspection (undefined when another process owns them). */
  get packs(): CacheSegments | undefined {
    return this.local.packs;
  }

  /** Evictable bytes held, the limit, evictions so far. */
  stats(): { bytes: number; chunks: number; limitBytes: number; evictions: number } {
    const b = this.bound;
    return { bytes: b.bytes, chunks: b.count, limitBytes: b.limitBytes, evictions: b.evictions };
  }

  /**
   * Whether a chunk is stored here. One being fetched is not, and saying so costs no stat (a
   * cold read asks this of every chunk while it is on its way).
   */
  isLocal(digest: Digest): boolean {
    return !this.fetcher.isFetching(digest) && this.local.has(digest);
  }

  /** Copies `length` bytes at `offset` of chunk `digest` into `out` at `at`, fetching it if needed. */
  async read(digest: Digest, offset: number, length: number, out: Buffer, at: number, c: FetchCounters): Promise<void> {
    if (await this.local.read(digest, offset, length, out, at)) {
      this.countHit(digest, c);
      return;
    }
    const data = await this.fetcher.fetch(digest, c);
    data.copy(out, at, offset, offset + length);
  }

  /**
   * The open file of a local chunk at least `length` bytes long and where in it the chunk starts,
   * for a zero-copy reply (valid until the current task returns to the event loop), or undefined.
   * Counts nothing: the read was accounted for before (countHit, ensureLocal).
   */
  lend(digest: Digest, length: number): LentChunk | undefined {
    return this.local.descriptor(digest, length);
  }

  /** A read served from here: counted, and the chunk becomes the most recently used. */
  countHit(digest: Digest, c: FetchCounters): void {
    c.localHits++;
    this.bound.touch(digest);
  }

  /**
   * Makes a chunk local: fetched if missing, resolved once it is stored (a keep that failed
   * leaves it missing: the caller then reads it another way). Rejects as a read would.
   */
  async ensureLocal(digest: Digest, c: FetchCounters): Promise<void> {
    if (this.isLocal(digest)) return this.countHit(digest, c);
    await this.fetcher.fetch(digest, c);
    await this.fetcher.stored(digest);
  }

  /** Starts fetching a chunk that is not local yet (readahead, NBD CACHE, profiles); errors only logged. */
  prefetch(digest: Digest, c: FetchCounters): Promise<void> {
    return this.isLocal(digest) ? Promise.resolve() : this.fetcher.prefetch(digest, c);
  }

  /**
   * A sequential reader just read chunk `current`: prefetches, in order, the chunks `next()`
   * lists that ride on the same store request (its pack), and returns how many. Undefined when
   * the store says nothing of its requests (dir://); `next` is then not even asked.
   */
  follow(current: Digest, next: () => Digest[], c: FetchCounters): number | undefined {
    const key = this.fetcher.locate(current).requestKey;
    if (key === '') return undefined;
    const ahead = next();
    const located = this.fetcher.locateAll(ahead);
    let n = 0;
    for (; n < located.length && located[n]!.requestKey === key; n++) {
      if (!this.isLocal(ahead[n]!)) void this.fetcher.prefetch(ahead[n]!, c, located[n]);
    }
    return n;
  }

  /**
   * Stores a chunk made here, whose digest the caller computed from `data` just now, without
   * syncing it: call sync() before anything refers to it.
   */
  putUnsynced(digest: Digest, data: Buffer): Promise<void> {
    return this.local.putUnsynced(digest, data);
  }

  /** Whether keepPack can take a staged file in (this process owns the packs). */
  get keepsPacks(): boolean {
    return this.local.packs !== undefined;
  }

  /**
   * Keeps the chunks listed where they lie in file `path` (a staged freeze's file, moved in as
   * a pack: see cache-segments.ts adopt), durably, before resolving; chunks stored here
   * already are not kept twice. Only when keepsPacks. Resolves with the chunks kept.
   */
  keepPack(path: string, chunks: readonly PackChunk[]): Promise<number> {
    if (!this.local.packs) {
      return Promise.reject(new NotSupportedError('another process owns the chunk packs of this state root'));
    }
    return this.local.packs.adopt(path, chunks);
  }

  /** Makes the chunks stored with putUnsynced durable. */
  sync(): Promise<void> {
    return this.local.sync();
  }

  /** A chunk made here is now in the backing store too: it may be evicted. */
  admitPublished(digest: Digest, size: number): Promise<void> {
    return this.bound.admit(digest, size);
  }

  /** Resolves once every chunk fetched so far is stored locally (or failed to be). */
  landed(): Promise<void> {
    return this.fetcher.landed();
  }

  /** Waits for fetches to land, saves the eviction order, closes the files. */
  async close(): Promise<void> {
    await this.fetcher.close();
    this.bound.persist(true);
    await this.local.close();
  }
}
