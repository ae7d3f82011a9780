/**
 * `slacker-ts status`: a running daemon's state, asked over its graphdriver socket
 * (Slacker.Status) or the containerd front end's control API: volumes, attachments, cache, fetches, whether the backing store answers,
 * and each layer's lazy statistics. A table for people, `--json` for scripts.
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, systemErrorCode } from '../common/errors.js';
import { formatSize } from '../common/units.js';
import type { HostReport } from '../layers/layer-store.js';
import { ControlClient } from '../containerd/control-service.js';
import { pluginCall } from '../plugin/client.js';

export const STATUS_HELP = `usage: slacker-ts status [--name NAME] [--socket-dir DIR | --socket PATH | --containerd-socket PATH] [--json]

Shows a running slacker-ts daemon's state: backing store (and whether it answers), volumes,
attached layers, the chunk cache, what was fetched, and every layer's lazy statistics.

options:
  --name NAME          the daemon's plugin name (default slacker): SOCKET_DIR/NAME.sock
  --socket-dir DIR     default /run/docker/plugins
  --socket PATH        the daemon's graphdriver socket, instead of the two above
  --containerd-socket PATH
                       a daemon serving containerd: the socket of its snapshotter
  --json               the whole report as JSON
`;

export async function statusCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      name: { type: 'string' },
      'socket-dir': { type: 'string' },
      socket: { type: 'string' },
      'containerd-socket': { type: 'string' },
      json: { type: 'boolean' },
    },
    strict: true,
  });
  const socket =
    values.socket ?? join(values['socket-dir'] ?? '/run/docker/plugins', `${values.name ?? 'slacker'}.sock`);
  let report: HostReport;
  const containerdSocket = values['containerd-socket'];
  try {
    if (containerdSocket) {
      const control = new ControlClient(containerdSocket);
      try {
        report = JSON.parse((await control.status()).report_json) as HostReport;
      } finally {
        control.close();
      }
    } else report = (await pluginCall(socket, 'Slacker.Status', {})).Report as HostReport;
  } catch (err) {
    const code = systemErrorCode(err);
    if (code === 'ENOENT' || code === 'ECONNREFUSED') {
      throw new ConfigError(`no slacker-ts daemon answers on ${socket}: is it running (--name, --socket)?`, {
        cause: err,
      });
    }
    throw err;
  }
  if (values.json) {
    console.log(JSON.stringify(report, null, 2));
    return 0;
  }
  const f = report.fetch;
  const c = report.cache;
  const rows: [string, string][] = [
    ['State root', report.root],
    [
      'Backing store',
      `${report.store.url} (${report.store.reachable ? 'answers' : `UNREACHABLE: ${report.store.error ?? ''}`})`,
    ],
    ['Attach method', report.attachMethod],
    ['Volumes', String(report.volumes)],
    ['Attached layers', String(report.attached)],
    [
      'Chunk cache',
      `${formatSize(c.bytes)} of ${formatSize(c.limitBytes)}, ${c.chunks} chunks, ${c.evictions} evictions`,
    ],
    ['Fetched', `${f.chunks} chunks, ${formatSize(f.bytes)}, ${f.errors} errors, ${f.localHits} local hits`],
    ['Fetch latency', `p50 <= ${f.p50Ms} ms, p99 <= ${f.p99Ms} ms`],
  ];
  for (const [k, v] of rows) console.log(`${k.padEnd(16)} ${v}`);
  if (report.layers.length > 0) {
    console.log('');
    console.log(
      [
        'LAYER'.padEnd(24),
        'KIND'.padEnd(9),
        'ATTACHED',
        'FETCHED'.padStart(10),
        'LOCAL HITS'.padStart(11),
        'SNAPSHOT',
      ].join(' '),
    );
    for (const l of report.layers) {
      console.log(
        [
          l.id.slice(0, 24).padEnd(24),
          (l.frozen ? 'frozen' : 'writable').padEnd(9),
          (l.attached ? 'yes' : 'no').padEnd(8),
          formatSize(l.bytesFetched).padStart(10),
          String(l.localHits).padStart(11),
          l.snapshotRef ? l.snapshotRef.slice(0, 19) : '-',
        ].join(' '),
      );
    }
  }
  return 0;
}
