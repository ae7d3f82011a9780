/**
 * containerd's diff API (containerd.services.diff.v1) over gRPC, on the snapshotter's socket:
 * `[proxy_plugins.NAME] type = "diff"`. The transport only (the work: differ.ts). A layer that
 * is not ours is answered UNIMPLEMENTED, and containerd's diff service tries its next differ.
 */
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/logger.js';
import type { CallObserver } from '../layers/metrics.js';
import type { CallHeaders, Descriptor, Differ } from './differ.js';
import { loadProto, unary } from './grpc-server.js';
import type { MountSpec } from './snapshotter.js';

interface ApplyRequest {
  diff?: Descriptor;
  mounts: MountSpec[];
}

interface DiffRequest {
  left: MountSpec[];
  right: MountSpec[];
  media_type: string;
  ref: string;
  labels: Record<string, string>;
}

/** The namespace and lease of the engine's request, where containerd passes them on (2.x may). */
function headersOf(metadata: grpc.Metadata): CallHeaders {
  const get = (key: string): string | undefined => {
    const v = metadata.get(key)[0];
    return typeof v === 'string' && v !== '' ? v : undefined;
  };
  return { namespace: get('containerd-namespace'), lease: get('containerd-lease') };
}

/** Adds the diff service, over `differ`, to `server`. */
export function addDiffService(server: grpc.Server, differ: Differ, log: Logger, onCall?: CallObserver): void {
  const api = loadProto('containerd/services/diff/v1/diff.proto') as unknown as {
    containerd: { services: { diff: { v1: { Diff: grpc.ServiceClientConstructor } } } };
  };
  server.addService(api.containerd.services.diff.v1.Diff.service, {
    Apply: unary<ApplyRequest>(
      'Apply',
      async (r, metadata) => ({
        applied: await differ.apply(r.diff ?? { media_type: '', digest: '', size: 0 }, r.mounts, headersOf(metadata)),
      }),
      log,
      onCall,
    ),
    Diff: unary<DiffRequest>(
      'Diff',
      async (r, metadata) => ({
        diff: await differ.compare(
          r.left,
          r.right,
          { mediaType: r.media_type, ref: r.ref, labels: r.labels },
          headersOf(metadata),
        ),
      }),
      log,
      onCall,
    ),
  });
}
