/**
 * What the containerd front end's gRPC services share: loading our .proto files, mapping our
 * errors to gRPC status codes in one place (containerd turns those back into its errdefs: a
 * differ's UNIMPLEMENTED makes containerd try its next differ), and unary handlers that time
 * and log every call. The .proto files in containerd/proto/ were written for slacker-ts from
 * the APIs' published names and field numbers.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync } from 'node:fs';
import { chmod, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { SlackerError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { CallObserver } from '../layers/metrics.js';

/** containerd/proto, beside the sources or two levels up from dist/containerd/. */
function protoRoot(): string {
  const candidates = [join(import.meta.dirname, 'proto'), join(import.meta.dirname, '..', '..', 'containerd', 'proto')];
  return candidates.find((c) => existsSync(join(c, 'containerd'))) ?? candidates[0]!;
}

/** One of our .proto files (path under containerd/proto), as grpc-js service constructors. */
export function loadProto(file: string): grpc.GrpcObject {
  const definition = protoLoader.loadSync(file, {
    includeDirs: [protoRoot()],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition);
}

/** Our errors as gRPC status codes. */
const STATUS: Record<string, grpc.status> = {
  SLACKER_ERR_NOT_FOUND: grpc.status.NOT_FOUND,
  SLACKER_ERR_ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  SLACKER_ERR_CONFLICT: grpc.status.FAILED_PRECONDITION,
  SLACKER_ERR_INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  SLACKER_ERR_NOT_SUPPORTED: grpc.status.UNIMPLEMENTED,
  SLACKER_ERR_SHUTDOWN: grpc.status.UNAVAILABLE,
  SLACKER_ERR_NO_SPACE: grpc.status.RESOURCE_EXHAUSTED,
  SLACKER_ERR_IO: grpc.status.UNAVAILABLE,
  SLACKER_ERR_TRANSPORT: grpc.status.UNAVAILABLE,
  SLACKER_ERR_TIMEOUT: grpc.status.DEADLINE_EXCEEDED,
  SLACKER_ERR_READ_ONLY: grpc.status.FAILED_PRECONDITION,
};

export function grpcStatusOf(err: unknown): grpc.status {
  return err instanceof SlackerError ? (STATUS[err.code] ?? grpc.status.UNKNOWN) : grpc.status.UNKNOWN;
}

export type UnaryHandler<Req> = (request: Req, metadata: grpc.Metadata) => Promise<unknown> | unknown;

/** A unary handler: times the call, answers with the result or our error's status code. */
export function unary<Req>(
  method: string,
  fn: UnaryHandler<Req>,
  log: Logger,
  onCall?: CallObserver,
): grpc.handleUnaryCall<Req, unknown> {
  return (call, callback) => {
    const t0 = process.hrtime.bigint();
    const done = (ok: boolean): void => onCall?.(method, ok, Number(process.hrtime.bigint() - t0) / 1e9);
    Promise.resolve()
      .then(() => fn(call.request, call.metadata))
      .then(
        (answer) => {
          done(true);
          callback(null, answer);
        },
        (err: unknown) => {
          const code = grpcStatusOf(err);
          // A differ's "not mine" is an answer, not a failure.
          done(code === grpc.status.UNIMPLEMENTED);
          if (code === grpc.status.UNKNOWN) log.error({ err, method }, 'containerd call failed');
          else log.debug({ err, method }, 'containerd call refused');
          callback({ code, details: err instanceof Error ? err.message : String(err) });
        },
      );
  };
}

/** Listens on unix socket `socket`, mode 0600 (anyone who can reach it controls the layers). */
export async function listenUnix(server: grpc.Server, socket: string): Promise<() => Promise<void>> {
  await rm(socket, { force: true });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
  await chmod(socket, 0o600);
  return async () => {
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    await rm(socket, { force: true });
  };
}
