/**
 * `slacker-ts volume ...`: operate layer volumes in a state root, and serve them over NBD.
 */
import { untilSignal } from '../common/signals.js';
import { parseArgs } from 'node:util';
import { ConfigError } from '../common/errors.js';
import { createLogger } from '../common/logger.js';
import { formatSize, parseSize } from '../common/units.js';
import { nbdUri } from '../nbd-server/listen-address.js';
import { NbdServer } from '../nbd-server/server.js';
import { openStore } from '../stores/open-store.js';
import { compression } from './args.js';
import { VolumeManager } from '../volumes/manager.js';
import { LATENCY_BUCKETS_MS } from '../volumes/chunks/fetch-counters.js';

export const VOLUME_HELP = `usage: slacker-ts volume <command> [args] [--root DIR] [--store URL]

commands:
  create ID SIZE [--chunk-size N]   new empty writable volume (SIZE like 10G)
  clone PARENT ID                   O(1) writable clone of a frozen volume
  freeze ID                         make a volume an immutable snapshot
  publish ID                        push a frozen volume's chunks to the store; prints its reference
  open REF ID                       make volume ID from a published reference (chunks load lazily)
  ls [--json]                       list volumes
  rm ID                             remove a volume (refused while clones depend on it)
  stats ID [--json]                 size, chunks, bytes written and fetched, fetch latency
  cache [--json]                    the local chunk cache: bytes held, limit, evictions
  serve ID... [--listen URI ...]    serve volumes over NBD (export name = volume id) until SIGTERM

options:
  --root DIR     state root (default $SLACKER_ROOT or /var/lib/slacker-ts)
  --store URL    backing store: dir:///PATH or oci://HOST[:PORT]/REPO (default $SLACKER_STORE)
  --compression C for publish to oci://: brotli (default, where it pays) or none
  --cache-size S bytes of fetched/published chunks kept locally (default 10G or $SLACKER_CACHE_SIZE);
                 chunks that exist only locally are never evicted
  --listen URI   for serve: tcp://HOST:PORT or unix:///PATH (default tcp://127.0.0.1:10809)
  --log-level L  trace|debug|info|warn|error
`;

function need(args: string[], n: number, usage: string): string[] {
  if (args.length !== n) throw new ConfigError(`usage: slacker-ts volume ${usage}`);
  return args;
}

export async function volume(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      root: { type: 'string' },
      store: { type: 'string' },
      compression: { type: 'string' },
      'chunk-size': { type: 'string' },
      'cache-size': { type: 'string' },
      listen: { type: 'string', multiple: true },
      json: { type: 'boolean', default: false },
      'log-level': { type: 'string' },
    },
  });
  const [command, ...args] = positionals;
  if (!command) throw new ConfigError('missing volume command (slacker-ts volume --help)');
  const root = values.root ?? process.env.SLACKER_ROOT ?? '/var/lib/slacker-ts';
  const storeUrl = values.store ?? process.env.SLACKER_STORE;
  const log = createLogger({ level: values['log-level'] });
  const cacheSize = values['cache-size'] ?? process.env.SLACKER_CACHE_SIZE;
  const store = storeUrl ? openStore(storeUrl, { compression: compression(values.compression) }) : undefined;
  const mgr = await VolumeManager.open(root, {
    store,
    cacheBytes: cacheSize ? parseSize(cacheSize) : undefined,
    log,
  });
  const print = (o: unknown, text: string): void => {
    process.stdout.write(values.json ? `${JSON.stringify(o)}\n` : `${text}\n`);
  };
  try {
    switch (command) {
      case 'create': {
        const [id, size] = need(args, 2, 'create ID SIZE');
        const chunkSize = values['chunk-size'] ? parseSize(values['chunk-size']) : undefined;
        const row = await mgr.create(id!, parseSize(size!), { chunkSize });
        print(row, row.id);
        return 0;
      }
      case 'clone': {
        const [parent, id] = need(args, 2, 'clone PARENT ID');
        print(await mgr.clone(parent!, id!), id!);
        return 0;
      }
      case 'freeze': {
        const [id] = need(args, 1, 'freeze ID');
        print(await mgr.freeze(id!), id!);
        return 0;
      }
      case 'publish': {
        const [id] = need(args, 1, 'publish ID');
        const ref = await mgr.publish(id!);
        print({ id, ref }, ref);
        return 0;
      }
      case 'open': {
        const [ref, id] = need(args, 2, 'open REF ID');
        print(await mgr.openSnapshot(ref!, id!), id!);
        return 0;
      }
      case 'ls': {
        need(args, 0, 'ls');
        const rows = mgr.list();
        print(
          rows,
          rows
            .map(
              (r) =>
                `${r.id}\t${formatSize(r.size)}\t${r.frozen ? 'frozen' : 'writable'}\t${r.parent ?? '-'}\t${r.snapshotRef ?? '-'}`,
            )
            .join('\n'),
        );
        return 0;
      }
      case 'rm': {
        const [id] = need(args, 1, 'rm ID');
        await mgr.remove(id!);
        return 0;
      }
      case 'stats': {
        const [id] = need(args, 1, 'stats ID');
        const s = mgr.stats(id!);
        const buckets = s.fetch.latency
          .map((n, i) => (n ? `<=${LATENCY_BUCKETS_MS[i] ?? 'inf'}ms:${n}` : ''))
          .filter(Boolean)
          .join(' ');
        print(
          s,
          [
            `volume          ${s.id} (${s.frozen ? 'frozen' : 'writable'}${s.parent ? `, clone of ${s.parent}` : ''})`,
            `virtual size    ${formatSize(s.virtualSize)} in ${formatSize(s.chunkSize)} chunks`,
            `chunks          ${s.chunks}`,
            `bytes written   ${formatSize(s.bytesWritten)}`,
            `snapshot        ${s.snapshotRef ?? '-'}`,
            `fetched         ${s.fetch.chunksFetched} chunks, ${formatSize(s.fetch.bytesFetched)} (errors ${s.fetch.fetchErrors}, local hits ${s.fetch.localHits})`,
            `fetch latency   ${buckets || '-'}`,
          ].join('\n'),
        );
        return 0;
      }
      case 'cache': {
        need(args, 0, 'cache');
        const c = mgr.cacheStats();
        print(c, `${c.chunks} chunks, ${formatSize(c.bytes)} of ${formatSize(c.limitBytes)}; ${c.evictions} evicted`);
        return 0;
      }
      case 'serve':
        return await serve(mgr, args, values.listen ?? ['tcp://127.0.0.1:10809'], log);
      default:
        throw new ConfigError(`unknown volume command ${JSON.stringify(command)} (slacker-ts volume --help)`);
    }
  } finally {
    await mgr.close();
    store?.close?.();
  }
}

async function serve(
  mgr: VolumeManager,
  ids: string[],
  listen: string[],
  log: ReturnType<typeof createLogger>,
): Promise<number> {
  if (ids.length === 0) throw new ConfigError('usage: slacker-ts volume serve ID... [--listen URI]');
  const stopped = untilSignal(log);
  const server = new NbdServer({ log });
  const acquired: string[] = [];
  try {
    for (const id of ids) {
      server.addExport({ name: id, backend: await mgr.acquire(id) });
      acquired.push(id);
    }
    for (const uri of listen) {
      const bound = await server.listen(uri);
      for (const id of ids) process.stdout.write(`${nbdUri(bound, id)}\n`);
    }
    await stopped;
  } finally {
    await server.close();
    for (const id of acquired) await mgr.release(id);
  }
  return 0;
}
