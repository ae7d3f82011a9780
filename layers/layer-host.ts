/**
 * Everything a host needs to serve layers, built in one place for every front end: the
 * backing store, the volumes under ROOT/volumes, this host's NBD server (ROOT/nbd.sock), the NBD
 * relay the block devices' clients connect through (ROOT/nbd-relay.sock, its own process), the
 * attacher, the layer mounts (what a predecessor left attached is adopted, or torn down) and the
 * layer store over them. `close` stops serving; layers in use stay attached and mounted, for the
 * next start to adopt (a restart or an upgrade does not break running containers).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { AttachMethod } from '../attach/attacher.js';
import { chooseAttacher } from '../attach/choose-attacher.js';
import type { Logger } from '../common/logger.js';
import { NbdServer } from '../nbd-server/server.js';
import type { BackingStore } from '../stores/backing-store.js';
import type { Compression } from '../stores/chunk-codec.js';
import { openStore } from '../stores/open-store.js';
import { VolumeManager } from '../volumes/manager.js';
import { LayerMounts } from './layer-mounts.js';
import { LayerStore } from './layer-store.js';
import { ensureRelay } from '../nbd-relay/launch.js';

export const DEFAULT_LAYER_SIZE = 10 * 2 ** 30;

export interface LayerHostOptions {
  /** State root: volumes, chunks, mounts, the NBD socket. */
  root: string;
  /** Backing store URL; default dir://ROOT/store. */
  store?: string;
  /** How layers published to an oci:// store keep their chunks (default brotli where it pays). */
  compression?: Compression;
  /** Virtual size of new base layers (bytes). */
  layerSize: number;
  attach: AttachMethod | 'auto';
  cacheBytes?: number;
  /** How long a chunk fetch may retry before the read fails (ms). */
  fetchDeadlineMs?: number;
  /** Chunks prefetched ahead of sequential readers (default 0). */
  readahead?: number;
  /** The kernel's readahead window on attached layers, KiB (default attach/read-ahead.ts's). */
  deviceReadaheadKib?: number;
  /** Chunks between two nearby misses fetched with the second: the widest gap (volumes/miss-gaps.ts). */
  gapFillBytes?: number;
  log: Logger;
}

export interface CloseOptions {
  /** Detach and unmount everything, in use or not (default: layers in use stay attached). */
  all?: boolean;
}

export interface LayerHost {
  readonly root: string;
  readonly layers: LayerStore;
  readonly manager: VolumeManager;
  readonly store: BackingStore;
  close(options?: CloseOptions): Promise<void>;
}

export async function openLayerHost(o: LayerHostOptions): Promise<LayerHost> {
  await mkdir(o.root, { recursive: true });
  // The default store lives in the state root, so it is made here; a store given by URL never is
  // (a shared directory that is not mounted must show as missing, not be created locally).
  if (!o.store) await mkdir(join(o.root, 'store'), { recursive: true });
  const store = openStore(o.store ?? `dir://${join(o.root, 'store')}`, { compression: o.compression });
  const manager = await VolumeManager.open(join(o.root, 'volumes'), {
    store,
    cacheBytes: o.cacheBytes,
    fetchPolicy: o.fetchDeadlineMs ? { deadlineMs: o.fetchDeadlineMs } : undefined,
    readahead: o.readahead,
    gapFillBytes: o.gapFillBytes,
    log: o.log,
  });
  const nbd = new NbdServer({ log: o.log });
  const nbdSocket = join(o.root, 'nbd.sock');
  await nbd.listen(`unix://${nbdSocket}`);
  const relay = await ensureRelay({
    socket: join(o.root, 'nbd-relay.sock'),
    upstream: nbdSocket,
    logFile: join(o.root, 'nbd-relay.log'),
  });
  const attacher = chooseAttacher(o.attach, { readaheadKib: o.deviceReadaheadKib });
  const mounts = new LayerMounts({
    manager,
    nbd,
    nbdSocket: relay.socket,
    serverSocket: nbdSocket,
    attacher,
    dir: o.root,
    log: o.log,
    abandon: (exports) => relay.abandon(exports),
  });
  await mounts.recover();
  mounts.warm();
  const layers = new LayerStore({ manager, mounts, layerSize: o.layerSize, attachMethod: attacher.method, log: o.log });
  await layers.removeLeftoverCopies();
  o.log.info({ root: o.root, store: store.url, attach: attacher.method, layerSize: o.layerSize }, 'layer host ready');
  return {
    root: o.root,
    layers,
    manager,
    store,
    close: async (options = {}) => {
      if (options.all) await layers.cleanup();
      else await mounts.release();
      await nbd.close();
      await manager.close();
      store.close?.();
      relay.release();
    },
  };
}
