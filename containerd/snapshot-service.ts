/**
 * containerd's snapshots API (containerd.services.snapshots.v1) served over gRPC on a unix
 * socket, for `[proxy_plugins.NAME] type = "snapshot"` in containerd's config. The transport
 * only: it decodes requests, calls the Snapshotter, encodes answers, and maps our errors to
 * gRPC status codes in one place (containerd turns those back into its errdefs).
 * The .proto files in containerd/proto/ were written for slacker-ts from the API's published
 * names and field numbers.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync } from 'node:fs';
import { chmod, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { SlackerError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { CallObserver } from '../layers/metrics.js';
import type { SnapshotInfo } from './snapshot-metastore.js';
import type { Snapshotter } from './snapshotter.js';

const KIND = { view: 'VIEW', active: 'ACTIVE', committed: 'COMMITTED' } as const;

/** containerd/proto, beside the sources or two levels up from dist/containerd/. */
function protoRoot(): string {
  const candidates = [join(import.meta.dirname, 'proto'), join(import.meta.dirname, '..', '..', 'containerd', 'proto')];
  return candidates.find((c) => existsSync(join(c, 'containerd'))) ?? candidates[0]!;
}

/** Our errors as gRPC status codes (containerd's errdefs read them back). */
const STATUS: Record<string, grpc.status> = {
  SLACKER_ERR_NOT_FOUND: grpc.status.NOT_FOUND,
  SLACKER_ERR_ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  SLACKER_ERR_CONFLICT: grpc.status.FAILED_PRECONDITION,
  SLACKER_ERR_INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  SLACKER_ERR_NOT_SUPPORTED: grpc.status.UNIMPLEMENTED,
  SLACKER_ERR_SHUTDOWN: grpc.status.UNAVAILABLE,
  SLACKER_ERR_NO_SPACE: grpc.status.RESOURCE_EXHAUSTED,
};

export function grpcStatusOf(err: unknown): grpc.status {
  return err instanceof SlackerError ? (STATUS[err.code] ?? grpc.status.UNKNOWN) : grpc.status.UNKNOWN;
}

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

export interface SnapshotService {
  readonly socket: string;
  close(): Promise<void>;
}

/** Serves `snapshotter` on unix socket `socket` (mode 0600). */
export async function serveSnapshots(
  snapshotter: Snapshotter,
  socket: string,
  log: Logger,
  onCall?: CallObserver,
): Promise<SnapshotService> {
  const definition = protoLoader.loadSync('containerd/services/snapshots/v1/snapshots.proto', {
    includeDirs: [protoRoot()],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
  });
  const api = grpc.loadPackageDefinition(definition) as unknown as {
    containerd: { services: { snapshots: { v1: { Snapshots: grpc.ServiceClientConstructor } } } };
  };
  const unary =
    (method: string, fn: (r: Req) => Promise<unknown> | unknown): grpc.handleUnaryCall<Req, unknown> =>
    (call, callback) => {
      const t0 = process.hrtime.bigint();
      const done = (ok: boolean): void => onCall?.(method, ok, Number(process.hrtime.bigint() - t0) / 1e9);
      Promise.resolve()
        .then(() => fn(call.request))
        .then(
          (answer) => {
            done(true);
            callback(null, answer);
          },
          (err: unknown) => {
            done(false);
            const code = grpcStatusOf(err);
            if (code === grpc.status.UNKNOWN) log.error({ err, method }, 'snapshot call failed');
            else log.debug({ err, method }, 'snapshot call refused');
            callback({ code, details: err instanceof Error ? err.message : String(err) });
          },
        );
    };
  const server = new grpc.Server();
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
  await rm(socket, { force: true });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
  await chmod(socket, 0o600);
  log.info({ socket }, 'containerd snapshotter listening');
  return {
    socket,
    close: async () => {
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      await rm(socket, { force: true });
    },
  };
}
