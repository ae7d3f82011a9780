/** What reads of frozen chunks cost, per volume and in total: fetched chunks and bytes, errors, local hits, latency. */

/** Upper bounds (ms) of the fetch latency histogram buckets; the last bucket is open. */
export const LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

/** What one volume's reads cost: shown by `volume stats`, the plugin's GetMetadata and Status. */
export class FetchCounters {
  chunksFetched = 0;
  bytesFetched = 0;
  fetchErrors = 0;
  /** Reads of frozen chunks served from the local store. */
  localHits = 0;
  readonly latency = new Array<number>(LATENCY_BUCKETS_MS.length + 1).fill(0);
  /** Told of every fetch (bytes, ms), for a metrics histogram; unset, it costs nothing. */
  onFetch: ((bytes: number, ms: number) => void) | undefined;

  /** Upper bound (ms) of the bucket holding the q-quantile of fetch latencies (Infinity: the open bucket). */
  latencyQuantile(q: number): number {
    const total = this.latency.reduce((a, b) => a + b, 0);
    let seen = 0;
    for (let i = 0; i < this.latency.length; i++) {
      seen += this.latency[i]!;
      if (total > 0 && seen >= q * total) return LATENCY_BUCKETS_MS[i] ?? Infinity;
    }
    return 0;
  }

  recordFetch(bytes: number, ms: number): void {
    this.chunksFetched++;
    this.bytesFetched += bytes;
    const i = LATENCY_BUCKETS_MS.findIndex((b) => ms <= b);
    this.latency[i < 0 ? LATENCY_BUCKETS_MS.length : i]!++;
    this.onFetch?.(bytes, ms);
  }
}
