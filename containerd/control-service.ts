/**
 * slacker-ts's own control API (proto/slacker/v1/control.proto) on the containerd front end's
 * socket: the host report for `slacker-ts status`, and publishing an image's snapshot as a
 * marker layer for `slacker-ts convert`, for a daemon that has no graphdriver socket.
 */
import * as grpc from '@grpc/grpc-js';
import { ConfigError, PluginCallError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { markerTar } from '../layers/layer-tar/marker.js';
import type { LayerStore } from '../layers/layer-store.js';
import type { CallObserver } from '../layers/metrics.js';
import { loadProto, unary } from './grpc-server.js';
import type { Snapshotter } from './snapshotter.js';

interface PublishRequest {
  namespace: string;
  name: string;
  profile_from: string;
}

export function addControlService(
  server: grpc.Server,
  layers: LayerStore,
  snapshotter: Snapshotter,
  log: Logger,
  onCall?: CallObserver,
): void {
  const api = loadProto('slacker/v1/control.proto') as unknown as {
    slacker: { v1: { Control: grpc.ServiceClientConstructor } };
  };
  server.addService(api.slacker.v1.Control.service, {
    Status: unary('Slacker.Status', async () => ({ report_json: JSON.stringify(await layers.report()) }), log, onCall),
    Publish: unary<PublishRequest>(
      'Slacker.Publish',
      async (r) => {
        const { ref, prefetch } = await snapshotter.publishNamed(r.namespace, r.name, r.profile_from || undefined);
        return { ref, marker: await markerTar(ref), prefetch_chunks: prefetch };
      },
      log,
      onCall,
    ),
  });
}

/** A client of the control API (for the CLI). */
export class ControlClient {
  private readonly client: grpc.Client & Record<string, (...args: unknown[]) => unknown>;

  constructor(private readonly socket: string) {
    const api = loadProto('slacker/v1/control.proto') as unknown as {
      slacker: { v1: { Control: grpc.ServiceClientConstructor } };
    };
    this.client = new api.slacker.v1.Control(
      `unix://${socket}`,
      grpc.credentials.createInsecure(),
    ) as unknown as ControlClient['client'];
  }

  private call<T>(method: string, request: unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      this.client[method]!(request, { deadline: Date.now() + 600_000 }, (err: grpc.ServiceError | null, r: T) => {
        if (!err) return resolve(r);
        if (err.code === grpc.status.UNAVAILABLE) {
          reject(
            new ConfigError(`no slacker-ts daemon answers on ${this.socket}: is it running (--containerd-socket)?`, {
              cause: err,
            }),
          );
        } else reject(new PluginCallError(`${method}: ${err.details || err.message}`, { cause: err }));
      });
    });
  }

  status(): Promise<{ report_json: string }> {
    return this.call('Status', {});
  }

  publish(r: PublishRequest): Promise<{ ref: string; marker: Buffer; prefetch_chunks: number }> {
    return this.call('Publish', r);
  }

  close(): void {
    this.client.close();
  }
}
