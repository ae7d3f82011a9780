/**
 * Prometheus metrics of a layer host (prom-client), for an opt-in listener (`serve --metrics`).
 * The core's own counters are read when the metrics are scraped, so nothing is counted twice and
 * the read path pays nothing; only fetch latencies are observed as they happen (a histogram
 * needs each one). Front ends count their calls through a CallObserver. Names and units follow
 * Prometheus conventions (`_total` counters, `_bytes`, `_seconds`).
 */
import { createServer, type Server } from 'node:http';
import { chmod, rm } from 'node:fs/promises';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { ConfigError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { LATENCY_BUCKETS_MS } from '../volumes/chunks/fetch-counters.js';
import type { LayerHost } from './layer-host.js';

/** A front end's call finished: its method, whether it succeeded, how long it took. */
export type CallObserver = (method: string, ok: boolean, seconds: number) => void;

export class LayerMetrics {
  readonly registry = new Registry();
  private readonly calls: Counter<'front_end' | 'method' | 'outcome'>;
  private readonly callSeconds: Histogram<'front_end' | 'method'>;
  private readonly fetchSeconds: Histogram;
  /** The layer host measured (none before a graphdriver's Init: the metrics read 0 then). */
  private host: LayerHost | undefined;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    const state = (): LayerHost | undefined => this.host;
    const counter = (name: string, help: string, read: (h: LayerHost) => number): void => {
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          const h = state();
          if (h) this.inc(read(h));
        },
      });
    };
    const gauge = (name: string, help: string, read: (h: LayerHost) => number): void => {
      new Gauge({
        name,
        help,
        registers,
        collect() {
          const h = state();
          this.set(h ? read(h) : 0);
        },
      });
    };
    counter(
      'slacker_chunk_fetches_total',
      'Chunks fetched from the backing store',
      (h) => h.manager.chunks.total.chunksFetched,
    );
    counter(
      'slacker_chunk_fetched_bytes_total',
      'Bytes of chunks fetched from the backing store',
      (h) => h.manager.chunks.total.bytesFetched,
    );
    counter(
      'slacker_chunk_fetch_errors_total',
      'Failed fetch attempts (store errors, refused verification)',
      (h) => h.manager.chunks.total.fetchErrors,
    );
    counter(
      'slacker_chunk_local_hits_total',
      'Reads of frozen chunks served locally',
      (h) => h.manager.chunks.total.localHits,
    );
    counter(
      'slacker_chunk_cache_evictions_total',
      'Fetched chunks evicted to stay under the cache size',
      (h) => h.manager.cacheStats().evictions,
    );
    counter('slacker_layer_attaches_total', 'Layers attached as block devices', (h) => h.layers.attachCount);
    gauge('slacker_chunk_cache_bytes', 'Bytes of evictable chunks held locally', (h) => h.manager.cacheStats().bytes);
    gauge('slacker_chunk_cache_limit_bytes', 'The cache size limit', (h) => h.manager.cacheStats().limitBytes);
    gauge('slacker_layers_attached', 'Layers attached or mounted now', (h) => h.layers.mountedCount);
    gauge('slacker_volumes', 'Layer volumes on this host', (h) => h.manager.list().length);
    this.fetchSeconds = new Histogram({
      name: 'slacker_chunk_fetch_duration_seconds',
      help: 'Time from a chunk being wanted to its verified arrival',
      buckets: LATENCY_BUCKETS_MS.map((ms) => ms / 1000),
      registers,
    });
    this.calls = new Counter({
      name: 'slacker_requests_total',
      help: 'Calls served by a front end (graphdriver, containerd), by method and outcome',
      labelNames: ['front_end', 'method', 'outcome'],
      registers,
    });
    this.callSeconds = new Histogram({
      name: 'slacker_request_duration_seconds',
      help: 'Time to serve a front-end call',
      labelNames: ['front_end', 'method'],
      buckets: [0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60],
      registers,
    });
  }

  /** Measures `host` from now on: the composition calls this as soon as the host exists. */
  watch(host: LayerHost): void {
    this.host = host;
    host.manager.chunks.total.onFetch = (_bytes, ms) => this.fetchSeconds.observe(ms / 1000);
  }

  /** The observer a front end reports its calls to. */
  observer(frontEnd: string): CallObserver {
    return (method, ok, seconds) => {
      this.calls.inc({ front_end: frontEnd, method, outcome: ok ? 'ok' : 'error' });
      this.callSeconds.observe({ front_end: frontEnd, method }, seconds);
    };
  }
}

/**
 * Serves GET /metrics on `address`: `unix:///PATH` (mode 0600) or `HOST:PORT` on loopback.
 * Local only: a scraper elsewhere goes through a proxy the operator sets up.
 */
export async function serveMetrics(
  registry: Registry,
  address: string,
  log: Logger,
): Promise<{ close(): Promise<void> }> {
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || req.url?.split('?')[0] !== '/metrics') {
      res.writeHead(404).end('only GET /metrics here\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: unknown) => {
        log.error({ err }, 'metrics failed');
        res.writeHead(500).end();
      },
    );
  });
  const listen = (target: { path: string } | { host: string; port: number }): Promise<void> =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(target, () => resolve());
    });
  if (address.startsWith('unix://')) {
    const path = address.slice('unix://'.length);
    await rm(path, { force: true });
    await listen({ path });
    await chmod(path, 0o600);
  } else {
    const m = /^(.*):(\d+)$/.exec(address);
    if (!m) throw new ConfigError(`--metrics wants unix:///PATH or HOST:PORT, got ${JSON.stringify(address)}`);
    const host = m[1]!.replace(/^\[|\]$/g, '');
    if (!['127.0.0.1', 'localhost', '::1'].includes(host)) {
      throw new ConfigError(`--metrics ${address}: metrics listen on loopback or a unix socket only`);
    }
    await listen({ host, port: Number(m[2]) });
  }
  log.info({ address }, 'metrics listening');
  return {
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
