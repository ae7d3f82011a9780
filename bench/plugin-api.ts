/**
 * Responsiveness of the plugin API while it applies a large layer: autocannon against the
 * plugin's unix socket (Status and Exists, as `docker info` and dockerd's checks call them),
 * first idle (the anchor), then while an ApplyDiff streams a large layer tar into a volume.
 *
 *   npm run bench:plugin -- [--layer-mib 512] [--duration 10] [--connections 10] [--json FILE]
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import autocannon from 'autocannon';
import { pack } from 'tar-stream';
import { startPlugin, uniquePluginName } from '../harness/plugin.js';
import { requireTools } from '../harness/tools.js';
import { pluginCall } from '../plugin/client.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { onInterrupt } from '../harness/interrupt.js';
import { benchArgs } from './options.js';

const { values: opts } = benchArgs(
  'npm run bench:plugin --',
  'Plugin API requests per second and latency, idle and during a large ApplyDiff.',
  {
    'layer-mib': { type: 'string', default: '512' },
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '10' },
    json: { type: 'string' },
  },
);
const LAYER = Number(opts['layer-mib']) * 2 ** 20;
const FILE = 8 * 2 ** 20;

/** A layer tar of LAYER bytes in FILE-sized random files, generated as it streams. */
function layerStream(): Readable {
  const p = pack();
  void (async () => {
    for (let i = 0; i * FILE < LAYER; i++) {
      await new Promise<void>((resolve, reject) =>
        p.entry({ name: `data/f${i}.bin`, mode: 0o644 }, randomBytes(FILE), (err) => (err ? reject(err) : resolve())),
      );
    }
    p.finalize();
  })();
  return p as unknown as Readable;
}

function applyDiff(socket: string, id: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = request(
      { socketPath: socket, path: `/GraphDriver.ApplyDiff?id=${id}&parent=`, method: 'POST' },
      (res) => {
        res.resume();
        res.on('end', () =>
          res.statusCode === 200
            ? resolve(Number(process.hrtime.bigint() - t0) / 1e9)
            : reject(new Error(`ApplyDiff ${res.statusCode}`)),
        );
      },
    );
    req.on('error', reject);
    layerStream().pipe(req);
  });
}

async function load(socket: string, seconds: number): Promise<autocannon.Result> {
  return autocannon({
    url: 'http://localhost',
    socketPath: socket,
    connections: Number(opts.connections),
    duration: seconds,
    requests: [
      { method: 'POST', path: '/GraphDriver.Status', body: '{}\n' },
      { method: 'POST', path: '/GraphDriver.Exists', body: '{"ID":"bench-layer"}\n' },
    ],
  });
}

async function main(): Promise<void> {
  await requireTools('nbdfuse', 'losetup', 'mkfs.ext4');
  const dir = await mkdtemp(join(tmpdir(), 'slacker-benchapi-'));
  const plugin = await startPlugin({
    name: uniquePluginName(),
    root: join(dir, 'state'),
    size: `${Math.ceil((LAYER * 1.5) / 2 ** 30) + 1}G`,
    logFile: join(dir, 'plugin.log'),
    extraArgs: ['--log-level', 'info'],
  });
  const stop = onInterrupt(async () => {
    await pluginCall(plugin.socket, 'GraphDriver.Cleanup', {}).catch(() => undefined);
    await plugin.stop();
    await rm(dir, { recursive: true, force: true });
  });
  try {
    await pluginCall(plugin.socket, 'GraphDriver.Init', { Home: join(dir, 'home') });
    await pluginCall(plugin.socket, 'GraphDriver.Create', { ID: 'bench-layer' });
    const duration = Number(opts.duration);
    const idle = await load(plugin.socket, duration);
    const applying = applyDiff(plugin.socket, 'bench-layer');
    const busy = await load(plugin.socket, duration);
    const applySeconds = await applying;
    const rows = [
      { name: 'req/s (Status+Exists), idle', value: idle.requests.average },
      { name: 'req/s during ApplyDiff', value: busy.requests.average },
      { name: 'p99 latency idle (ms)', value: idle.latency.p99 },
      { name: 'p99 latency during ApplyDiff (ms)', value: busy.latency.p99 },
      { name: 'errors during ApplyDiff', value: busy.errors + busy.non2xx },
      { name: `ApplyDiff of ${LAYER / 2 ** 20} MiB (MiB/s)`, value: LAYER / 2 ** 20 / applySeconds },
    ];
    console.log(
      `machine: ${cpus().length} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB; ${opts.connections} connections`,
    );
    for (const r of rows) console.log(`${r.name.padEnd(40)} ${r.value.toFixed(1)}`);
    console.log(`ratio req/s during/idle: ${(busy.requests.average / idle.requests.average).toFixed(2)}`);
    if (opts.json) await writeFile(opts.json, JSON.stringify({ rows }, null, 2));
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
