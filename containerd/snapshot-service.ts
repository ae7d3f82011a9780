/**
 * containerd's snapshots API (containerd.services.snapshots.v1) over gRPC, for
 * `[proxy_plugins.NAME] type = "snapshot"` in containerd's config. The transport only: it
 * decodes requests, calls the Snapshotter and encodes answers (errors: grpc-server.ts).
 */
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/logger.js';
import type { CallObserver } from '../layers/metrics.js';
import { grpcStatusOf, loadProto, unary as unaryOf, type UnaryHandler } from './grpc-server.js';
import type { SnapshotInfo } from './snapshot-metastore.js';
import type { Snapshotter } from './snapshotter.js';

const KIND = { view: 'VIEW', active: 'ACTIVE', committed: 'COMMITTED' } as const;

function timestamp(ms: number): { seconds: number; nanos: number } {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

function info(s: SnapshotInfo): Record<string, unknown> {
  return {
    name: s.key,
    parent: s.parent,
    kind: KIND[s.kind],
    created_at: timestamp(s.created),
    updated_at: timestamp(s.updated),
    labels: s.labels,
  };
}

type Req = {
  key: string;
  parent: string;
  name: string;
  labels: Record<string, string>;
  info?: { name: string; labels: Record<string, string> };
  update_mask?: { paths: string[] };
};

/** Adds the snapshots service, over `snapshotter`, to `server`. */
export function addSnapshotsService(
  server: grpc.Server,
  snapshotter: Snapshotter,
  log: Logger,
  onCall?: CallObserver,
): void {
  const api = loadProto('containerd/services/snapshots/v1/snapshots.proto') as unknown as {
    containerd: { services: { snapshots: { v1: { Snapshots: grpc.ServiceClientConstructor } } } };
  };
  const unary = (method: string, fn: UnaryHandler<Req>): grpc.handleUnaryCall<Req, unknown> =>
    unaryOf(method, fn, log, onCall);
  server.addService(api.containerd.services.snapshots.v1.Snapshots.service, {
    Prepare: unary('Prepare', async (r) => ({ mounts: await snapshotter.prepare(r.key, r.parent, r.labels) })),
    View: unary('View', async (r) => ({ mounts: await snapshotter.view(r.key, r.parent, r.labels) })),
    Mounts: unary('Mounts', async (r) => ({ mounts: await snapshotter.mounts(r.key) })),
    Commit: unary('Commit', async (r) => {
      await snapshotter.commit(r.name, r.key, r.labels);
      return {};
    }),
    Remove: unary('Remove', async (r) => {
      await snapshotter.remove(r.key);
      return {};
    }),
    Stat: unary('Stat', (r) => ({ info: info(snapshotter.stat(r.key)) })),
    Update: unary('Update', (r) => ({
      info: info(snapshotter.update(r.info?.name ?? '', r.info?.labels ?? {}, r.update_mask?.paths ?? [])),
    })),
    Usage: unary('Usage', (r) => snapshotter.usage(r.key)),
    Cleanup: unary('Cleanup', async () => {
      await snapshotter.cleanup();
      return {};
    }),
    List: (call: grpc.ServerWritableStream<Req, unknown>) => {
      try {
        const all = snapshotter.list();
        // In pages, as containerd's own server sends them.
        for (let i = 0; i < all.length; i += 100) call.write({ info: all.slice(i, i + 100).map(info) });
        call.end();
      } catch (err) {
        call.destroy(
          Object.assign(new Error(err instanceof Error ? err.message : String(err)), { code: grpcStatusOf(err) }),
        );
      }
    },
  });
}
