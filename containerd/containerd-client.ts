/**
 * A client of containerd's own API on its socket, for the differ: the content store (reading
 * layer blobs, writing marker blobs) and leases. Content is namespaced and held by leases, and
 * containerd 1.7 does not pass a proxy differ the namespace and lease of the request that
 * caused the call: the differ learns the namespace from the snapshot key (containerd names
 * backend snapshots `<namespace>/<n>/<key>`), and holds what it writes with a lease of its own
 * that expires (an hour's lease per namespace, `containerd.io/gc.expire`): long enough for the
 * engine to refer to the blob from an image, short enough to leave nothing behind.
 */
import * as grpc from '@grpc/grpc-js';
import { AlreadyExistsError, IoError, NotFoundError, TransportError } from '../common/errors.js';
import type { Digest } from '../common/digests.js';
import { loadProto } from './grpc-server.js';

/** Whose content a call touches: containerd's namespace, and the lease that holds new content. */
export interface ContentContext {
  namespace: string;
  lease?: string;
}

/** What the differ needs of containerd (a test may give it a fake). */
export interface ContentStore {
  /** `size` bytes from `offset` (to the end if 0). */
  read(digest: Digest, offset: number, size: number, context: ContentContext): Promise<Buffer>;
  /** Writes and commits a blob with labels; a blob already there gets the labels. */
  write(
    ref: string,
    data: Buffer,
    digest: Digest,
    labels: Record<string, string>,
    context: ContentContext,
  ): Promise<void>;
  /** A lease in `namespace` that holds content for at least half an hour more. */
  holdingLease(namespace: string): Promise<string>;
}

type Client = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

const HOUR_MS = 3600_000;

function failure(err: grpc.ServiceError, what: string, address: string): Error {
  const message = `${what}: ${err.details || err.message}`;
  if (err.code === grpc.status.NOT_FOUND) return new NotFoundError(message, { cause: err });
  if (err.code === grpc.status.ALREADY_EXISTS) return new AlreadyExistsError(message, { cause: err });
  if (err.code === grpc.status.UNAVAILABLE) {
    return new TransportError(
      `${message} (is containerd listening on ${address}? slacker-ts serve --containerd-address)`,
      {
        cause: err,
      },
    );
  }
  return new IoError(message, { cause: err });
}

function headers(c: ContentContext): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set('containerd-namespace', c.namespace);
  if (c.lease) m.set('containerd-lease', c.lease);
  return m;
}

export class ContainerdClient implements ContentStore {
  private readonly content: Client;
  private readonly leases: Client;
  /** namespace -> [lease id, the hour it was made for] */
  private readonly held = new Map<string, [string, number]>();

  constructor(private readonly address: string) {
    const target = `unix://${address}`;
    const credentials = grpc.credentials.createInsecure();
    const c = loadProto('containerd/services/content/v1/content.proto') as unknown as {
      containerd: { services: { content: { v1: { Content: grpc.ServiceClientConstructor } } } };
    };
    const l = loadProto('containerd/services/leases/v1/leases.proto') as unknown as {
      containerd: { services: { leases: { v1: { Leases: grpc.ServiceClientConstructor } } } };
    };
    this.content = new c.containerd.services.content.v1.Content(target, credentials) as unknown as Client;
    this.leases = new l.containerd.services.leases.v1.Leases(target, credentials) as unknown as Client;
  }

  private unary<T>(
    client: Client,
    method: string,
    request: unknown,
    context: ContentContext,
    what: string,
  ): Promise<T> {
    return new Promise((resolve, reject) => {
      client[method]!(request, headers(context), (err: grpc.ServiceError | null, r: T) =>
        err ? reject(failure(err, what, this.address)) : resolve(r),
      );
    });
  }

  read(digest: Digest, offset: number, size: number, context: ContentContext): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const parts: Buffer[] = [];
      const stream = this.content.Read!({ digest, offset, size }, headers(context)) as grpc.ClientReadableStream<{
        data: Buffer;
      }>;
      stream.on('data', (r: { data: Buffer }) => parts.push(r.data));
      stream.on('error', (err: grpc.ServiceError) => reject(failure(err, `reading ${digest}`, this.address)));
      stream.on('end', () => resolve(Buffer.concat(parts)));
    });
  }

  async write(
    ref: string,
    data: Buffer,
    digest: Digest,
    labels: Record<string, string>,
    context: ContentContext,
  ): Promise<void> {
    try {
      await new Promise<void>((resolve, reject) => {
        const stream = this.content.Write!(headers(context)) as grpc.ClientDuplexStream<unknown, unknown>;
        let answers = 0;
        stream.on('data', () => {
          // One answer per request: the second is the commit's.
          if (++answers === 2) stream.end();
        });
        stream.on('error', (err: grpc.ServiceError) => reject(failure(err, `writing ${digest}`, this.address)));
        stream.on('end', () => (answers >= 2 ? resolve() : reject(new IoError(`writing ${digest}: no commit answer`))));
        stream.write({ action: 'WRITE', ref, total: data.length, expected: digest, offset: 0, data });
        stream.write({ action: 'COMMIT', ref, total: data.length, expected: digest, offset: data.length, labels });
      });
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err;
      // Already in the store (the same marker written before): make sure it has our labels.
      const paths = Object.keys(labels).map((k) => `labels.${k}`);
      await this.unary(this.content, 'Update', { info: { digest, labels }, update_mask: { paths } }, context, digest);
    }
  }

  async holdingLease(namespace: string): Promise<string> {
    const hour = Math.floor(Date.now() / HOUR_MS);
    const held = this.held.get(namespace);
    if (held?.[1] === hour) return held[0];
    const id = `slacker-diff-${hour}`;
    const expire = new Date((hour + 2) * HOUR_MS).toISOString().replace(/\.\d+Z$/, 'Z');
    const context = { namespace };
    try {
      await this.unary(this.leases, 'Create', { id, labels: { 'containerd.io/gc.expire': expire } }, context, id);
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err;
    }
    this.held.set(namespace, [id, hour]);
    // The lease before last has expired: nothing refers to it any more.
    await this.unary(this.leases, 'Delete', { id: `slacker-diff-${hour - 2}` }, context, 'lease').catch(
      () => undefined,
    );
    return id;
  }

  close(): void {
    this.content.close();
    this.leases.close();
  }
}
