/**
 * The graphdriver plugin protocol over HTTP (fastify): `POST /Plugin.Activate` and
 * `POST /GraphDriver.<Method>`, JSON in and out, errors as `{"Err": "..."}` with a non-200
 * status. dockerd sends JSON without a Content-Type, and ApplyDiff's body is a raw tar stream,
 * so bodies arrive as streams and JSON routes parse theirs before schema validation.
 * Every route has a JSON schema. Knows nothing of volumes: it calls a GraphDriverApi.
 */
import Fastify, { LogController, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { InvalidArgumentError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { Change } from '../layers/changes.js';
import type { HostReport } from '../layers/layer-store.js';
import type { CallObserver } from '../layers/metrics.js';

/** What the HTTP layer needs; SlackerDriver behind an Init step provides it (daemon.ts). */
export interface GraphDriverApi {
  init(home: string, opts: string[]): Promise<void>;
  create(id: string, parent: string | undefined, storageOpt: Record<string, string>): Promise<void>;
  remove(id: string): Promise<void>;
  get(id: string): Promise<string>;
  put(id: string): Promise<void>;
  exists(id: string): boolean;
  status(): [string, string][];
  metadata(id: string): Record<string, string>;
  cleanup(): Promise<void>;
  diff(id: string, parent: string | undefined): Promise<Buffer>;
  /** Not Docker's: the host's state for `slacker-ts status`. */
  report(): Promise<HostReport>;
  /** Not Docker's: Diff with the startup profile of layer `profileFrom` (plugin/convert.ts). */
  profiledDiff(id: string, profileFrom: string): Promise<{ tar: Buffer; prefetch: number }>;
  changes(id: string, parent: string | undefined): Promise<Change[]>;
  applyDiff(id: string, parent: string | undefined, body: AsyncIterable<Buffer>): Promise<number>;
  diffSize(id: string, parent: string | undefined): Promise<number>;
}

const id = { type: 'string', minLength: 1, maxLength: 128 } as const;
const optional = { type: 'string', maxLength: 128 } as const;
const idOnly = { type: 'object', required: ['ID'], properties: { ID: id } } as const;
const idParent = { type: 'object', required: ['ID'], properties: { ID: id, Parent: optional } } as const;
const createRw = {
  type: 'object',
  required: ['ID'],
  properties: {
    ID: id,
    Parent: optional,
    MountLabel: { type: 'string' },
    StorageOpt: { type: ['object', 'null'], additionalProperties: { type: 'string' } },
  },
} as const;
const init = {
  type: 'object',
  required: ['Home'],
  properties: {
    Home: { type: 'string', minLength: 1 },
    Opts: { type: ['array', 'null'], items: { type: 'string' } },
    UIDMaps: { type: ['array', 'null'] },
    GIDMaps: { type: ['array', 'null'] },
  },
} as const;
const empty = { type: ['object', 'null'] } as const;

type Body = { ID: string; Parent?: string; Home: string; Opts?: string[] | null; StorageOpt?: Record<string, string> };

/** The largest JSON request accepted (they are a few hundred bytes). */
const MAX_JSON = 1024 * 1024;

async function readJson(req: FastifyRequest): Promise<unknown> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const b of req.body as Readable) {
    n += (b as Buffer).length;
    if (n > MAX_JSON) throw new InvalidArgumentError('request body too large');
    parts.push(b as Buffer);
  }
  const text = Buffer.concat(parts).toString('utf8').trim();
  if (text === '') return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new InvalidArgumentError('request body is not JSON');
  }
}

/** Reads what is left of a request body; an aborted one simply ends it. */
async function drain(chunks: AsyncIterator<unknown>): Promise<void> {
  try {
    while (!(await chunks.next()).done);
  } catch {
    // the client went away: nothing left to read
  }
}

export function buildApi(
  driver: GraphDriverApi,
  log: Logger,
  onCall?: CallObserver,
): FastifyInstance<Server, IncomingMessage, ServerResponse, Logger> {
  const app = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }), // failures are logged below
    bodyLimit: Number.MAX_SAFE_INTEGER, // ApplyDiff bodies are whole layers, streamed
  });
  // Every body as a stream, whatever its Content-Type (dockerd sends none).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
  app.addHook('preValidation', async (req) => {
    if (req.url.startsWith('/GraphDriver.ApplyDiff')) return;
    req.body = req.body ? await readJson(req) : {};
  });
  app.setErrorHandler((err: Error & { validation?: unknown }, req, reply) => {
    const status = err.validation ? 400 : 500;
    req.log.warn({ err, route: req.url }, 'plugin request failed');
    void reply.code(status).send({ Err: err.message });
  });
  if (onCall) {
    app.addHook('onResponse', async (req, reply) => {
      const method = req.url
        .slice(1)
        .split('?')[0]!
        .replace(/^GraphDriver\./, '');
      onCall(method, reply.statusCode < 400, reply.elapsedTime / 1000);
    });
  }
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ Err: `unknown plugin method ${req.url}` });
  });

  const route = <T>(method: string, schema: object, handler: (b: Body) => Promise<T> | T): void => {
    app.post(`/${method}`, { schema: { body: schema } }, async (req) => {
      const result = await handler(req.body as Body);
      return { ...result, Err: '' };
    });
  };
  const parent = (b: Body): string | undefined => (b.Parent ? b.Parent : undefined);

  route('Plugin.Activate', empty, () => ({ Implements: ['GraphDriver'] }));
  route('GraphDriver.Init', init, async (b) => void (await driver.init(b.Home, b.Opts ?? [])));
  route('GraphDriver.Capabilities', empty, () => ({ Capabilities: { ReproducesExactDiffs: false } }));
  // Image layers and container layers are created alike (the read-write one is just not frozen later).
  const create = async (b: Body): Promise<void> => driver.create(b.ID, parent(b), b.StorageOpt ?? {});
  route('GraphDriver.Create', createRw, create);
  route('GraphDriver.CreateReadWrite', createRw, create);
  route('GraphDriver.Remove', idOnly, async (b) => void (await driver.remove(b.ID)));
  route(
    'GraphDriver.Get',
    { ...idOnly, properties: { ...idOnly.properties, MountLabel: { type: 'string' } } },
    async (b) => ({
      Dir: await driver.get(b.ID),
    }),
  );
  route('GraphDriver.Put', idOnly, async (b) => void (await driver.put(b.ID)));
  route('GraphDriver.Exists', idOnly, (b) => ({ Exists: driver.exists(b.ID) }));
  route('GraphDriver.Status', empty, () => ({ Status: driver.status() }));
  route('GraphDriver.GetMetadata', idOnly, (b) => ({ Metadata: driver.metadata(b.ID) }));
  route('GraphDriver.Cleanup', empty, async () => void (await driver.cleanup()));
  route('Slacker.Status', empty, async () => ({ Report: await driver.report() }));
  route('GraphDriver.Changes', idParent, async (b) => ({ Changes: await driver.changes(b.ID, parent(b)) }));
  route('GraphDriver.DiffSize', idParent, async (b) => ({ Size: await driver.diffSize(b.ID, parent(b)) }));

  // Diff answers with the raw tar (errors before the first byte are still JSON, non-200).
  app.post('/GraphDriver.Diff', { schema: { body: idParent } }, async (req, reply) => {
    const b = req.body as Body;
    const tar = await driver.diff(b.ID, parent(b));
    return reply.code(200).header('content-type', 'application/x-tar').send(tar);
  });

  app.post(
    '/Slacker.Diff',
    { schema: { body: { type: 'object', required: ['ID', 'ProfileFrom'], properties: { ID: id, ProfileFrom: id } } } },
    async (req, reply) => {
      const b = req.body as { ID: string; ProfileFrom: string };
      const { tar, prefetch } = await driver.profiledDiff(b.ID, b.ProfileFrom);
      return reply
        .code(200)
        .header('content-type', 'application/x-tar')
        .header('x-slacker-prefetch-chunks', String(prefetch))
        .send(tar);
    },
  );

  // ApplyDiff: ?id=&parent= in the URL, the tar as the body, streamed. The whole body is read
  // before the answer, even when the apply fails early: dockerd 20.10's tar-split, which tees
  // the upload, can panic when the plugin answers with the body half unread.
  app.post(
    '/GraphDriver.ApplyDiff',
    { schema: { querystring: { type: 'object', required: ['id'], properties: { id, parent: optional } } } },
    async (req) => {
      const q = req.query as { id: string; parent?: string };
      const body = req.body as Readable;
      // An aborted upload surfaces through the iterator; no 'error' event may go unheard.
      body.on('error', () => undefined);
      const chunks = body.iterator({ destroyOnReturn: false });
      try {
        const size = await driver.applyDiff(q.id, q.parent || undefined, chunks);
        return { Size: size, Err: '' };
      } finally {
        await drain(chunks);
      }
    },
  );
  return app;
}
