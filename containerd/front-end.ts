/**
 * The containerd front end, composed: the snapshot metadata (ROOT/containerd/snapshots.db), the
 * snapshotter over the host's layer store, the differ over the snapshotter and containerd's
 * content store, and the gRPC services on one unix socket: containerd's config names it for a
 * snapshot and a diff proxy plugin alike; slacker-ts status and convert use our control API there.
 */
import * as grpc from '@grpc/grpc-js';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../common/logger.js';
import type { LayerHost } from '../layers/layer-host.js';
import { InitScratches } from '../layers/init-scratch.js';
import type { CallObserver } from '../layers/metrics.js';
import { ContainerdClient } from './containerd-client.js';
import { addControlService } from './control-service.js';
import { addDiffService } from './diff-service.js';
import { Differ } from './differ.js';
import { listenUnix } from './grpc-server.js';
import { addSnapshotsService } from './snapshot-service.js';
import { SnapshotMetastore } from './snapshot-metastore.js';
import { Snapshotter } from './snapshotter.js';

/** Where containerd listens when nothing else is said. */
export const DEFAULT_CONTAINERD_ADDRESS = '/run/containerd/containerd.sock';

export interface ContainerdFrontEnd {
  readonly socket: string;
  close(): Promise<void>;
}

export interface ContainerdOptions {
  /** Our socket, for containerd's [proxy_plugins]. */
  socket: string;
  /** containerd's own socket: the differ reads and writes layer blobs in its content store. */
  containerdAddress?: string;
  log: Logger;
  onCall?: CallObserver;
}

export async function serveContainerd(host: LayerHost, o: ContainerdOptions): Promise<ContainerdFrontEnd> {
  await mkdir(join(host.root, 'containerd'), { recursive: true });
  const meta = new SnapshotMetastore(join(host.root, 'containerd', 'snapshots.db'));
  const content = new ContainerdClient(o.containerdAddress ?? DEFAULT_CONTAINERD_ADDRESS);
  try {
    const snapshotter = new Snapshotter(host.layers, meta, o.log, new InitScratches(host.root));
    // In the background: the first pull's first Prepare would otherwise wait for it.
    const template = host.layers
      .prepareTemplate()
      .catch((err: unknown) => o.log.warn({ err }, 'making the empty ext4 template ahead failed'));
    const server = new grpc.Server();
    addSnapshotsService(server, snapshotter, o.log, o.onCall);
    addDiffService(server, new Differ(snapshotter, content, o.log), o.log, o.onCall);
    addControlService(server, host.layers, snapshotter, o.log, o.onCall);
    const stop = await listenUnix(server, o.socket);
    o.log.info({ socket: o.socket, containerd: o.containerdAddress }, 'containerd snapshotter and differ listening');
    return {
      socket: o.socket,
      close: async () => {
        await template;
        await stop();
        content.close();
        meta.close();
      },
    };
  } catch (err) {
    content.close();
    meta.close();
    throw err;
  }
}
