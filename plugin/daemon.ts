/**
 * The plugin daemon, the graphdriver front end: serves the graphdriver API (api.ts) over the
 * layer core (a LayerHost, layers/layer-host.ts). The layers come to life at Init, when dockerd
 * says where its home is (unless a state root was configured, or a host shared with the
 * containerd front end was given).
 *
 * dockerd calls Init once, when it starts: a plugin restarted under a running dockerd would
 * never see it again. So what Init gave is kept beside the socket (NAME.slacker-init: dockerd's
 * plugin discovery ignores that extension) and a restarted plugin initialises itself from it,
 * adopting the layers the previous one left attached.
 */
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, NotInitializedError } from '../common/errors.js';
import { formatSize, parseSize } from '../common/units.js';
import type { Change } from '../layers/changes.js';
import { openLayerHost, type LayerHost, type LayerHostOptions } from '../layers/layer-host.js';
import type { HostReport, LayerStore } from '../layers/layer-store.js';
import { markerTar } from '../layers/layer-tar/marker.js';
import type { CallObserver } from '../layers/metrics.js';
import { buildApi, type GraphDriverApi } from './api.js';
import { InitLayers } from './init-layers.js';

export interface DaemonOptions extends Omit<LayerHostOptions, 'root'> {
  /** Plugin (and storage driver) name: the socket is SOCKET_DIR/NAME.sock. */
  name: string;
  socketDir: string;
  /** State root; default: the Home dockerd gives at Init. */
  root?: string;
  /** A layer host already open (shared with the containerd front end): Init then uses it. */
  host?: LayerHost;
  /** Told of every API call (metrics). */
  onCall?: CallObserver;
  /** Told of the layer host once Init made it (metrics). */
  onHost?: (host: LayerHost) => void;
}

interface Running {
  home: string;
  host: LayerHost;
  /** dockerd's init layers, as directories (init-layers.ts). */
  inits: InitLayers;
  /** Whether this daemon opened the host (and so closes it). */
  owned: boolean;
}

export class PluginDaemon implements GraphDriverApi {
  private running: Running | undefined;
  private starting: Promise<Running> | undefined;
  private readonly app;
  readonly socketPath: string;

  constructor(private readonly o: DaemonOptions) {
    this.socketPath = join(o.socketDir, `${o.name}.sock`);
    this.app = buildApi(this, o.log, o.onCall);
  }

  /** Where what Init gave is kept. */
  private get initPath(): string {
    return join(this.o.socketDir, `${this.o.name}.slacker-init`);
  }

  /** Serves the plugin API on its unix socket (mode 0600: dockerd runs as root). */
  async listen(): Promise<void> {
    await mkdir(this.o.socketDir, { recursive: true });
    // A restart under a running dockerd: initialise as dockerd did (it will not call Init again).
    const saved = await readFile(this.initPath, 'utf8').then(
      (t) => JSON.parse(t) as { home: string; opts: string[] },
      () => undefined,
    );
    if (saved) {
      await this.init(saved.home, saved.opts);
      this.o.log.info({ home: saved.home }, "driver initialised from the previous run's Init");
    }
    await rm(this.socketPath, { force: true });
    await this.app.listen({ path: this.socketPath });
    await chmod(this.socketPath, 0o600);
    this.o.log.info({ socket: this.socketPath, plugin: this.o.name }, 'graphdriver plugin listening');
  }

  /** Stops serving and closes the state; layers in use stay attached for the next start. */
  async close(): Promise<void> {
    await this.app.close();
    await rm(this.socketPath, { force: true });
    await this.stop();
  }

  async init(home: string, opts: string[]): Promise<void> {
    let layerSize = this.o.layerSize;
    for (const opt of opts) {
      const [key, value] = opt.split('=', 2) as [string, string | undefined];
      if (key === `${this.o.name}.size` || key === 'slacker.size') layerSize = parseSize(value ?? '');
      else throw new ConfigError(`unknown storage option ${JSON.stringify(opt)} (known: ${this.o.name}.size)`);
    }
    if (this.running && this.running.home !== home) await this.stop();
    if (!this.running) {
      this.starting ??= this.start(home, layerSize);
      try {
        this.running = await this.starting;
      } finally {
        this.starting = undefined;
      }
      await writeFile(this.initPath, JSON.stringify({ home, opts }), { mode: 0o600 });
    }
  }

  private async start(home: string, layerSize: number): Promise<Running> {
    if (this.o.host) return { home, host: this.o.host, inits: this.initLayersOf(this.o.host), owned: false };
    const host = await openLayerHost({ ...this.o, root: this.o.root ?? home, layerSize });
    this.o.onHost?.(host);
    this.o.log.info({ home }, 'driver initialised');
    return { home, host, inits: this.initLayersOf(host), owned: true };
  }

  private async stop(): Promise<void> {
    const r = this.running;
    this.running = undefined;
    if (!r) return;
    if (r.owned) await r.host.close(); // a shared host is closed by its owner
  }

  private initLayersOf(host: LayerHost): InitLayers {
    return new InitLayers(host.root, host.layers, this.o.log);
  }

  private get driver(): LayerStore {
    return this.initialised.host.layers;
  }

  /** The layers as dockerd sees them: the core's, with init layers as directories. */
  private get inits(): InitLayers {
    return this.initialised.inits;
  }

  private get initialised(): Running {
    if (!this.running) throw new NotInitializedError('the driver is not initialised: dockerd has not called Init');
    return this.running;
  }

  create(id: string, parent: string | undefined, storageOpt: Record<string, string>): Promise<void> {
    let size: number | undefined;
    for (const [k, v] of Object.entries(storageOpt)) {
      if (k === 'size') size = parseSize(v);
      else throw new ConfigError(`unknown storage option ${k} (known: size)`);
    }
    return this.inits.create(id, parent, size);
  }

  remove(id: string): Promise<void> {
    return this.inits.remove(id);
  }
  get(id: string): Promise<string> {
    return this.inits.get(id);
  }
  put(id: string): Promise<void> {
    return this.inits.put(id);
  }
  exists(id: string): boolean {
    return this.driver.exists(id);
  }
  /** Status: the rows `docker info` shows under the storage driver. */
  status(): [string, string][] {
    const layers = this.driver;
    const manager = layers.manager;
    const cache = manager.cacheStats();
    const total = manager.chunks.total;
    return [
      ['Backing store', manager.store?.url ?? 'none'],
      ['State root', manager.root],
      ['Attach method', layers.attachMethod],
      ['Volumes', String(manager.list().length)],
      ['Mounted layers', String(layers.mountedCount)],
      ['Chunk cache', `${formatSize(cache.bytes)} of ${formatSize(cache.limitBytes)}`],
      ['Bytes fetched', String(total.bytesFetched)],
      ['Chunks fetched', String(total.chunksFetched)],
      ['Fetch errors', String(total.fetchErrors)],
      ['Fetch latency p50/p99', `<= ${total.latencyQuantile(0.5)} ms / <= ${total.latencyQuantile(0.99)} ms`],
    ];
  }
  report(): Promise<HostReport> {
    return this.driver.report();
  }
  /** GetMetadata: what `docker inspect` shows under GraphDriver.Data (strings only). */
  metadata(id: string): Record<string, string> {
    const s = this.driver.manager.stats(id);
    return {
      VolumeId: s.id,
      Parent: s.parent ?? '',
      Frozen: String(s.frozen),
      SnapshotRef: s.snapshotRef ?? '',
      VirtualSize: String(s.virtualSize),
      ChunkSize: String(s.chunkSize),
      Chunks: String(s.chunks),
      BytesWritten: String(s.bytesWritten),
      ChunksFetched: String(s.fetch.chunksFetched),
      BytesFetched: String(s.fetch.bytesFetched),
      LocalHits: String(s.fetch.localHits),
      Mounted: String(this.driver.isMounted(id)),
    };
  }
  async cleanup(): Promise<void> {
    await this.running?.host.layers.cleanup();
  }
  /** Diff: the layer published, answered as its marker tar (metadata, not data). */
  async diff(id: string): Promise<Buffer> {
    await this.inits.settle(id);
    return markerTar(await this.driver.publish(id));
  }
  async profiledDiff(id: string, profileFrom: string): Promise<{ tar: Buffer; prefetch: number }> {
    await this.inits.settle(profileFrom);
    const { ref, prefetch } = await this.driver.publishWithProfile(id, profileFrom);
    return { tar: await markerTar(ref), prefetch };
  }
  async changes(id: string, parent: string | undefined): Promise<Change[]> {
    return (await this.inits.changes(id, parent)).changes;
  }
  applyDiff(id: string, parent: string | undefined, body: AsyncIterable<Buffer>): Promise<number> {
    return this.driver.applyTar(id, parent, body);
  }
  async diffSize(id: string, parent: string | undefined): Promise<number> {
    return (await this.inits.changes(id, parent)).size;
  }
}
