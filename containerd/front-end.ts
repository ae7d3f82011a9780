/**
 * The containerd front end, composed: the snapshot metadata (ROOT/containerd/snapshots.db), the
 * snapshotter over the host's layer store, and its gRPC service on a unix socket.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../common/logger.js';
import type { LayerHost } from '../layers/layer-host.js';
import type { CallObserver } from '../layers/metrics.js';
import { serveSnapshots } from './snapshot-service.js';
import { SnapshotMetastore } from './snapshot-metastore.js';
import { Snapshotter } from './snapshotter.js';

export interface ContainerdFrontEnd {
  readonly socket: string;
  close(): Promise<void>;
}

export async function serveContainerd(
  host: LayerHost,
  socket: string,
  log: Logger,
  onCall?: CallObserver,
): Promise<ContainerdFrontEnd> {
  await mkdir(join(host.root, 'containerd'), { recursive: true });
  const meta = new SnapshotMetastore(join(host.root, 'containerd', 'snapshots.db'));
  try {
    const service = await serveSnapshots(new Snapshotter(host.layers, meta, log), socket, log, onCall);
    return {
      socket,
      close: async () => {
        await service.close();
        meta.close();
      },
    };
  } catch (err) {
    meta.close();
    throw err;
  }
}
