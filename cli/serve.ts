/**
 * `slacker-ts serve`: the Docker graphdriver plugin daemon and/or the containerd snapshotter,
 * over one layer host. Runs until SIGTERM/SIGINT, then unmounts and detaches every layer it
 * mounted and closes its state.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { ATTACH_METHODS, type AttachMethod } from '../attach/attacher.js';
import { MAX_READAHEAD_KIB } from '../attach/read-ahead.js';
import { ConfigError } from '../common/errors.js';
import { createLogger } from '../common/logger.js';
import { untilSignal } from '../common/signals.js';
import { parseSize } from '../common/units.js';
import { serveContainerd, type ContainerdFrontEnd } from '../containerd/front-end.js';
import { DEFAULT_LAYER_SIZE, openLayerHost, type LayerHost } from '../layers/layer-host.js';
import { LayerMetrics, serveMetrics } from '../layers/metrics.js';
import { PluginDaemon } from '../plugin/daemon.js';
import { compression, positiveInt } from './args.js';

export const SERVE_HELP = `usage: slacker-ts serve [options]

Runs the slacker graphdriver plugin: the plugin API (HTTP on a unix socket) and the NBD server
of its layer volumes (unix socket). Start dockerd with --experimental --storage-driver NAME.
With --containerd-socket it serves containerd's snapshots and diff APIs instead (docs/OPERATIONS.md:
[proxy_plugins] in containerd's config), and the graphdriver socket too if --name is given.

Restarts and upgrades keep running containers: their block devices reach the NBD server through
a relay process (ROOT/nbd-relay.sock, started here, detached) that holds their I/O meanwhile, and
the next serve with the same root adopts them. SIGTERM leaves the layers in use attached.

options:
  --name NAME          plugin and storage driver name (default slacker); the socket is
                       SOCKET_DIR/NAME.sock
  --socket-dir DIR     where dockerd looks for plugin sockets (default /run/docker/plugins)
  --root DIR           state root: volumes, chunks, mounts (default: the Home dockerd gives at Init)
  --store URL          backing store: dir:///PATH or oci://HOST[:PORT]/REPO
                       (default dir://ROOT/store, a local directory store)
  --compression C      how chunks pushed to an oci:// store are kept: brotli (default: where
                       it pays on a ~1 Gbit/s link) or none (for readers on faster links)
  --size SIZE          virtual size of new base layers (default 10G; dockerd's
                       --storage-opt slacker.size=SIZE overrides it)
  --attach METHOD      auto | nbd-client | nbdfuse (default auto: the kernel NBD driver when
                       /dev/nbd0 exists, else nbdfuse + loop)
  --cache-size SIZE    bytes of fetched chunks kept locally (default 10G)
  --readahead N        chunks fetched ahead of a sequential reader (default 0: measured on
                       HelloBench, prefetching competed with the reads containers wait for)
  --device-readahead KIB
                       the kernel's readahead window on attached layers (default 128: what
                       a container's start reads, and so fetches; the kernel's 2560 for a
                       loop device fetched a third more at no gain)
  --gap-fill KIB       when two cold reads of a layer miss chunks at most KIB apart, fetch
                       the chunks between them with the second (default 2048: one file's
                       scattered reads, a program's libraries; 0: off)
  --fetch-deadline MS  give up on a chunk the store cannot deliver after MS milliseconds of
                       retries; the read then fails with EIO (default 15000)
  --containerd-socket PATH
                       serve the containerd snapshotter and differ on this unix socket
                       (needs --root)
  --containerd-address PATH
                       containerd's own socket, where the differ reads and writes layer
                       blobs (default /run/containerd/containerd.sock)
  --metrics ADDR       serve Prometheus metrics (GET /metrics) on unix:///PATH or HOST:PORT
                       on loopback (default: off)
  --config FILE        JSON file with any of the options above as keys (name, socketDir, root,
                       store, compression, size, attach, cacheSize, fetchDeadline, readahead,
                       deviceReadahead, gapFill, logLevel, containerdSocket, containerdAddress,
                       metrics); flags win over it
  --log-level LEVEL    trace|debug|info|warn|error (default info, or $SLACKER_LOG_LEVEL)

Environment: SLACKER_STORE, SLACKER_COMPRESSION, SLACKER_ROOT, SLACKER_NAME stand in for the flags
of the same name.
`;

interface ConfigFile {
  name?: string;
  socketDir?: string;
  root?: string;
  store?: string;
  compression?: string;
  size?: string;
  attach?: string;
  cacheSize?: string;
  fetchDeadline?: string;
  readahead?: string;
  deviceReadahead?: string;
  gapFill?: string;
  logLevel?: string;
  containerdSocket?: string;
  containerdAddress?: string;
  metrics?: string;
}

const KEYS = [
  'name',
  'socketDir',
  'root',
  'store',
  'compression',
  'size',
  'attach',
  'cacheSize',
  'fetchDeadline',
  'readahead',
  'deviceReadahead',
  'gapFill',
  'logLevel',
  'containerdSocket',
  'containerdAddress',
  'metrics',
];

async function readConfig(path: string | undefined): Promise<ConfigFile> {
  if (!path) return {};
  const parsed = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  for (const [k, v] of Object.entries(parsed)) {
    if (!KEYS.includes(k))
      throw new ConfigError(`unknown key ${JSON.stringify(k)} in ${path} (known: ${KEYS.join(', ')})`);
    if (typeof v !== 'string') throw new ConfigError(`${k} in ${path} must be a string`);
  }
  return parsed as ConfigFile;
}

/** A gap wider than 64 MiB is no longer one file's scattered reads but a second read far away. */
const MAX_GAP_FILL_KIB = 64 * 1024;

function chunkCount(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) throw new ConfigError(`--readahead wants a number of chunks, got ${text}`);
  return n;
}

/** A number of KiB from `flag`'s text, 0 to `max`; undefined when not given. */
function kibCount(text: string | undefined, flag: string, max: number): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0 || n > max)
    throw new ConfigError(`${flag} wants a number of KiB (0 to ${max}), got ${text}`);
  return n;
}

export async function serve(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      name: { type: 'string' },
      'socket-dir': { type: 'string' },
      root: { type: 'string' },
      store: { type: 'string' },
      compression: { type: 'string' },
      size: { type: 'string' },
      attach: { type: 'string' },
      'cache-size': { type: 'string' },
      'fetch-deadline': { type: 'string' },
      readahead: { type: 'string' },
      'device-readahead': { type: 'string' },
      'gap-fill': { type: 'string' },
      config: { type: 'string' },
      'log-level': { type: 'string' },
      'containerd-socket': { type: 'string' },
      'containerd-address': { type: 'string' },
      metrics: { type: 'string' },
    },
    strict: true,
  });
  const file = await readConfig(values.config);
  const env = process.env;
  const attach = values.attach ?? file.attach ?? 'auto';
  if (attach !== 'auto' && !ATTACH_METHODS.includes(attach as AttachMethod)) {
    throw new ConfigError(`--attach wants auto, ${ATTACH_METHODS.join(' or ')}, got ${attach}`);
  }
  const size = values.size ?? file.size;
  const cacheSize = values['cache-size'] ?? file.cacheSize;
  const deadline = values['fetch-deadline'] ?? file.fetchDeadline;
  const log = createLogger({ level: values['log-level'] ?? file.logLevel });
  const stopped = untilSignal(log);
  // A storage daemon that dies takes every mounted layer with it: a stray rejection is logged.
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'));
  const root = values.root ?? file.root ?? env.SLACKER_ROOT;
  const gapFillKib = kibCount(values['gap-fill'] ?? file.gapFill, '--gap-fill', MAX_GAP_FILL_KIB);
  const hostOptions = {
    store: values.store ?? file.store ?? (env.SLACKER_STORE || undefined),
    compression: compression(values.compression ?? file.compression ?? (env.SLACKER_COMPRESSION || undefined)),
    layerSize: size ? parseSize(size) : DEFAULT_LAYER_SIZE,
    attach: attach as AttachMethod | 'auto',
    cacheBytes: cacheSize ? parseSize(cacheSize) : undefined,
    fetchDeadlineMs: positiveInt(deadline, '--fetch-deadline'),
    readahead: chunkCount(values.readahead ?? file.readahead ?? '0'),
    deviceReadaheadKib: kibCount(
      values['device-readahead'] ?? file.deviceReadahead,
      '--device-readahead',
      MAX_READAHEAD_KIB,
    ),
    gapFillBytes: gapFillKib === undefined ? undefined : gapFillKib * 1024,
    log,
  };
  const name = values.name ?? file.name ?? env.SLACKER_NAME;
  const containerdSocket = values['containerd-socket'] ?? file.containerdSocket;
  // containerd gives no home as dockerd's Init does: the state root is configured.
  let host: LayerHost | undefined;
  let containerd: ContainerdFrontEnd | undefined;
  let daemon: PluginDaemon | undefined;
  let metricsListener: { close(): Promise<void> } | undefined;
  const metricsAddress = values.metrics ?? file.metrics;
  const metrics = metricsAddress ? new LayerMetrics() : undefined;
  try {
    if (metrics && metricsAddress) metricsListener = await serveMetrics(metrics.registry, metricsAddress, log);
    if (containerdSocket) {
      if (!root) throw new ConfigError('--containerd-socket needs --root (the state root of the layers)');
      host = await openLayerHost({ ...hostOptions, root });
      metrics?.watch(host);
      containerd = await serveContainerd(host, {
        socket: containerdSocket,
        containerdAddress: values['containerd-address'] ?? file.containerdAddress,
        log,
        onCall: metrics?.observer('containerd'),
      });
    }
    if (!containerdSocket || name !== undefined) {
      daemon = new PluginDaemon({
        ...hostOptions,
        name: name ?? 'slacker',
        socketDir: values['socket-dir'] ?? file.socketDir ?? '/run/docker/plugins',
        root,
        host,
        onCall: metrics?.observer('graphdriver'),
        onHost: (h) => metrics?.watch(h),
      });
      await daemon.listen();
    }
    await stopped;
  } finally {
    await metricsListener?.close();
    await daemon?.close();
    await containerd?.close();
    await host?.close();
  }
  return 0;
}
