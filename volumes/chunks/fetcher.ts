/**
 * Fetching chunks from the backing store, for the chunk store (chunk-store.ts): once per digest
 * however many readers want it at the same time, in batches the store can serve with one
 * request, verified against the digest before any byte is used, and kept in the local store.
 *
 * Store errors are retried with exponential backoff until a deadline, then the read fails
 * with IoError (EIO to the NBD client) rather than hang. Data that fails verification is not
 * retried: it is reported (log + IoError) and never returned.
 */
import { BufferPool } from '../../common/buffer-pool.js';
import { IoError } from '../../common/errors.js';
import { silentLogger, type Logger } from '../../common/logger.js';
import type { BackingStore, StoredChunk } from '../../stores/backing-store.js';
import type { EvictionBound } from './eviction.js';
import { FetchCounters } from './fetch-counters.js';
import type { LocalStore } from './local-store.js';
import { digestsOf, type Digest } from '../../common/digests.js';

export interface FetchPolicy {
  /** Give up on a chunk after this long (all attempts together). */
  deadlineMs: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
}

export const DEFAULT_FETCH_POLICY: FetchPolicy = { deadlineMs: 15_000, initialBackoffMs: 100, maxBackoffMs: 2_000 };

/** Where the store has chunks: the location hint recorded for each digest ('' for none). */
export interface ChunkLocations {
  hintsOf(digests: readonly Digest[]): string[];
}

/** Where the store has a chunk (ChunkFetcher.locate). */
export interface Location {
  hint: string;
  /** The store's request key for it (BackingStore.requestKey), or '' without one. */
  requestKey: string;
}

interface Queued extends Location {
  digest: Digest;
  counters: FetchCounters;
  resolve: (data: Buffer) => void;
  reject: (err: Error) => void;
  queuedAt: number;
  /** A reader waits for it (not a prefetch): it goes ahead of prefetches, and may use URGENT_SLOTS. */
  urgent: boolean;
  /** Ends the fetch's in-flight entry (once its chunk is stored locally, or failed). */
  settled: () => void;
}

/** Most chunks asked of the store in one batch. */
const MAX_BATCH = 64;
/**
 * Batches asked of the store at once; later fetches queue and join the next batch. Bounds the
 * receive memory in flight (fresh memory costs page faults) and makes batches larger, so a
 * pack store coalesces more of them into one Range request.
 */
const MAX_BATCHES_IN_FLIGHT = 4;
/**
 * Batches beyond MAX_BATCHES_IN_FLIGHT that chunks a reader waits for may use: a read arriving
 * while prefetches (a startup profile, readahead) fill every slot is sent at once instead of
 * waiting for one of them to finish.
 */
const URGENT_SLOTS = 2;

/**
 * Receive buffers: a slab holds the largest range a pack store asks for at once (8 MiB: a
 * batch of 64 chunks of 128 KiB); 16 free slabs cover the fetches a sequential reader keeps in
 * flight.
 */
const SLAB_BYTES = 8 * 1024 * 1024;
const FREE_SLABS = 16;

export class ChunkFetcher {
  /** Everything fetched, whichever volume asked (volumes come and go). */
  readonly total = new FetchCounters();
  private readonly inflight = new Map<Digest, Promise<Buffer>>();
  private readonly queue: Queued[] = [];
  private flushScheduled = false;
  private batchesInFlight = 0;
  /** Fetched chunks being written to the local store, by digest. */
  private readonly landing = new Map<Digest, Promise<void>>();
  /**
   * Buffers the store receives into, reused batch after batch (a fresh buffer's page faults
   * cost more than the copy into it). Safe because a fetched chunk's bytes are used only by
   * `keep` (awaited) and by readers copying them in the continuation of their await, which runs
   * before the batch's buffers are given back (see fetchBatch).
   */
  private readonly buffers = new BufferPool(SLAB_BYTES, FREE_SLABS);

  constructor(
    private readonly local: LocalStore,
    private readonly store: BackingStore | undefined,
    private readonly locations: ChunkLocations,
    private readonly policy: FetchPolicy = DEFAULT_FETCH_POLICY,
    private readonly log: Logger = silentLogger(),
    private readonly bound?: EvictionBound,
  ) {}

  /** Whether a fetch of the chunk is under way (it is not local yet, whatever a stat says). */
  isFetching(digest: Digest): boolean {
    return this.inflight.has(digest);
  }

  /** Resolves once a fetched chunk is stored locally (or failed to be); at once if none is landing. */
  async stored(digest: Digest): Promise<void> {
    await this.landing.get(digest);
  }

  /** Resolves once every chunk fetched so far is stored locally (or failed to be). */
  async landed(): Promise<void> {
    while (this.landing.size > 0) await Promise.all(this.landing.values());
  }

  /** Waits for fetched chunks to land, then frees the receive buffers. */
  async close(): Promise<void> {
    await this.landed();
    this.buffers.close();
  }

  /**
   * Where the store has a chunk, and which store request its fetch would ride on
   * (BackingStore.requestKey; '' when the store does not say). One metadata lookup: pass the
   * result on to prefetch rather than looking it up again.
   */
  locate(digest: Digest): Location {
    return this.locateAll([digest])[0]!;
  }

  /** locate for several chunks, with one metadata lookup for all of them. */
  locateAll(digests: readonly Digest[]): Location[] {
    return this.locations.hintsOf(digests).map((hint) => ({ hint, requestKey: this.store?.requestKey?.(hint) ?? '' }));
  }

  /**
   * Starts fetching a chunk (the caller knows it is not local); errors only logged. `at`: its
   * location, if known. Queued behind the chunks readers wait for.
   */
  prefetch(digest: Digest, c: FetchCounters, at?: Location): Promise<void> {
    return this.enqueue(digest, c, at, false).then(
      () => undefined,
      (err: unknown) => this.log.debug({ err, digest }, 'prefetch failed'),
    );
  }

  /**
   * The chunk's bytes, fetched once however many callers ask at the same time. Fetches asked
   * for in the same event-loop turn go to the store as one batch, which it may coalesce (one
   * Range request for adjacent chunks of a pack): per-request overhead, not bandwidth, is what
   * limits small fetches. A reader's fetch goes ahead of queued prefetches, also when it asks
   * for a chunk a prefetch queued.
   */
  fetch(digest: Digest, c: FetchCounters, at?: Location): Promise<Buffer> {
    return this.enqueue(digest, c, at, true);
  }

  private enqueue(digest: Digest, c: FetchCounters, at: Location | undefined, urgent: boolean): Promise<Buffer> {
    let p = this.inflight.get(digest);
    if (!p) {
      // The entry outlives the promise's resolution until the chunk is stored locally: readers
      // meanwhile get these bytes instead of fetching them again.
      const settled = (): void => void this.inflight.delete(digest);
      p = new Promise<Buffer>((resolve, reject) => {
        const { hint, requestKey } = at ?? this.locate(digest);
        this.queue.push({
          digest,
          hint,
          requestKey,
          counters: c,
          resolve,
          reject,
          queuedAt: Date.now(),
          urgent,
          settled,
        });
        this.scheduleFlush();
      });
      p.catch(settled);
      this.inflight.set(digest, p);
    } else if (urgent) {
      const queued = this.queue.find((q) => q.digest === digest);
      if (queued && !queued.urgent) {
        queued.urgent = true;
        this.scheduleFlush();
      }
    }
    return p;
  }

  /** Keeps verified fetched chunks locally (never rejects: a chunk not kept is fetched again). */
  private async keep(chunks: StoredChunk[]): Promise<void> {
    try {
      await this.local.putFetched(chunks); // the store has them: not synced
    } catch (err) {
      this.log.warn({ err, chunks: chunks.length }, 'fetched chunks not kept locally: they will be fetched again');
    }
    // What was stored is evictable, also when part of the batch failed to be.
    const kept = chunks.filter((c) => this.local.has(c.digest));
    try {
      await Promise.all(kept.map((c) => this.bound?.admit(c.digest, c.data.length)));
    } catch (err) {
      this.log.warn({ err, chunks: kept.length }, 'fetched chunks kept but not admitted to the cache bound');
    }
  }

  /** Sends what is queued at the end of this event-loop turn (so that one turn's fetches batch). */
  private scheduleFlush(): void {
    if (this.flushScheduled || this.queue.length === 0) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      while (
        this.queue.length > 0 &&
        (this.batchesInFlight < MAX_BATCHES_IN_FLIGHT ||
          (this.batchesInFlight < MAX_BATCHES_IN_FLIGHT + URGENT_SLOTS && this.queue.some((q) => q.urgent)))
      ) {
        this.batchesInFlight++;
        void this.fetchBatch(this.nextBatch()).finally(() => {
          this.batchesInFlight--;
          this.scheduleFlush();
        });
      }
    });
  }

  /**
   * Takes the next batch from the queue: the oldest chunk a reader waits for (else the oldest
   * prefetch), and the chunks queued that the store fetches in the same request (its pack), up
   * to MAX_BATCH, those readers wait for first. Cut in arrival order instead, a batch mixed the
   * packs of every stream reading at once (nbdcopy's connections read separate regions):
   * several Range requests per batch, and the registry spends a fixed CPU cost on each whatever
   * its size (docs/BENCHMARKS.md, "Measurements behind the code").
   */
  private nextBatch(): Queued[] {
    const key = (this.queue.find((q) => q.urgent) ?? this.queue[0]!).requestKey;
    const batch: Queued[] = [];
    for (const urgent of [true, false]) {
      for (const q of this.queue) {
        if (batch.length < MAX_BATCH && q.urgent === urgent && q.requestKey === key) batch.push(q);
      }
    }
    const taken = new Set(batch);
    const rest = this.queue.filter((q) => !taken.has(q)); // in the order they came
    this.queue.splice(0, this.queue.length, ...rest);
    return batch;
  }

  private async fetchBatch(batch: Queued[]): Promise<void> {
    const store = this.store;
    if (!store) {
      for (const q of batch) {
        q.reject(
          new IoError(`chunk ${q.digest} is not local and no backing store is configured`, {
            context: { digest: q.digest },
          }),
        );
      }
      return;
    }
    // The deadline counts from when a chunk was first wanted, time spent queued included.
    const firstQueuedAt = Math.min(...batch.map((q) => q.queuedAt));
    const deadline = firstQueuedAt + this.policy.deadlineMs;
    let backoff = this.policy.initialBackoffMs;
    let datas: Buffer[];
    for (let attempt = 1; ; attempt++) {
      try {
        const signal = AbortSignal.timeout(Math.max(1, deadline - Date.now()));
        datas = await store.getChunks(
          batch.map((q) => ({ digest: q.digest, hint: q.hint })),
          signal,
          (length) => this.buffers.take(length),
        );
        break;
      } catch (err) {
        for (const q of batch) {
          q.counters.fetchErrors++;
          this.total.fetchErrors++;
        }
        if (Date.now() + backoff >= deadline) {
          this.log.error(
            { err, chunks: batch.length, store: store.url, attempts: attempt },
            'chunk fetch failed: giving up',
          );
          for (const q of batch) {
            q.reject(
              new IoError(
                `backing store ${store.url} did not deliver chunk ${q.digest} within ${this.policy.deadlineMs} ms`,
                {
                  cause: err,
                  context: { digest: q.digest, store: store.url, attempts: attempt },
                },
              ),
            );
          }
          return;
        }
        this.log.warn(
          { err, chunks: batch.length, store: store.url, attempt, retryInMs: backoff },
          'chunk fetch failed: retrying',
        );
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, this.policy.maxBackoffMs);
      }
    }
    if (this.log.isLevelEnabled('debug')) {
      this.log.debug(
        {
          chunks: batch.length,
          urgent: batch.filter((q) => q.urgent).length,
          bytes: datas.reduce((n, d) => n + d.length, 0),
          waitedMs: Date.now() - firstQueuedAt,
          key: batch[0]!.requestKey,
        },
        'chunks fetched',
      );
    }
    const verified: Queued[] = [];
    const chunks: StoredChunk[] = [];
    // Hashed off the event loop, the batch in one threadpool job: hashing on the loop was the
    // largest cost of a cold read there (docs/BENCHMARKS.md).
    let hashes: Digest[];
    try {
      hashes = await digestsOf(datas);
    } catch (err) {
      const failure = new IoError(`could not verify ${batch.length} chunks fetched from ${store.url}`, { cause: err });
      for (const q of batch) q.reject(failure);
      setImmediate(() => this.buffers.give(datas));
      return;
    }
    batch.forEach((q, i) => {
      const data = datas[i]!;
      const got = hashes[i]!;
      if (got !== q.digest) {
        q.counters.fetchErrors++;
        this.total.fetchErrors++;
        this.log.error(
          { digest: q.digest, got, bytes: data.length, store: store.url },
          'chunk failed verification: refusing it',
        );
        q.reject(
          new IoError(`chunk ${q.digest} from ${store.url} failed verification (got ${got})`, {
            context: { digest: q.digest, got, store: store.url },
          }),
        );
        return;
      }
      q.counters.recordFetch(data.length, Date.now() - q.queuedAt);
      this.total.recordFetch(data.length, Date.now() - q.queuedAt);
      verified.push(q);
      chunks.push({ digest: q.digest, data });
    });
    // The batch's chunks are stored together: one write per run of them in a cache segment.
    const landed = this.keep(chunks);
    for (const q of verified) this.landing.set(q.digest, landed);
    for (const [i, q] of verified.entries()) q.resolve(chunks[i]!.data); // readers that copy need not wait
    await landed;
    for (const q of verified) {
      this.landing.delete(q.digest);
      q.settled();
    }
    // Every chunk of the batch is stored (or refused) and no longer in `inflight`; readers that
    // got one have copied it in their continuation, which ran before this next turn.
    setImmediate(() => this.buffers.give(datas));
  }
}
