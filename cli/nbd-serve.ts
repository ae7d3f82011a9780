/**
 * `slacker-ts nbd-serve`: serve raw files over NBD. Prints one NBD URI per export and listener
 * on stdout, logs to stderr, and shuts down gracefully on SIGTERM/SIGINT.
 */
import { parseArgs } from 'node:util';
import { ConfigError } from '../common/errors.js';
import { createLogger } from '../common/logger.js';
import { untilSignal } from '../common/signals.js';
import { positiveInt } from './args.js';
import type { Backend } from '../block/backend.js';
import { FileBackend } from '../block/backends/file.js';
import { readOnly } from '../block/filters/read-only.js';
import { nbdUri } from '../nbd-server/listen-address.js';
import { NbdServer } from '../nbd-server/server.js';

export const NBD_SERVE_HELP = `usage: slacker-ts nbd-serve --export NAME=FILE[:ro] [--export ...] [--listen URI ...]

Serves files (or block devices) as NBD exports. Prints the NBD URI of every export on stdout.

options:
  --export NAME=FILE[:ro]   export FILE as NAME; ':ro' makes it read-only (repeatable)
  --listen URI              tcp://HOST:PORT or unix:///PATH (repeatable);
                            default tcp://127.0.0.1:10809. Port 0 picks a free port.
  --max-connections N       refuse connections beyond N (default 4096)
  --memory-budget BYTES     bytes of request data held in flight, all clients (default 512 MiB)
  --log-level LEVEL         trace|debug|info|warn|error (default info, or $SLACKER_LOG_LEVEL)

Listening on anything but loopback or a unix socket exposes unauthenticated exports.
`;

export interface ExportArg {
  name: string;
  path: string;
  readOnly: boolean;
}

/** NAME=FILE[:ro] */
export function parseExportArg(arg: string): ExportArg {
  const eq = arg.indexOf('=');
  if (eq <= 0 || eq === arg.length - 1) {
    throw new ConfigError(`bad --export ${JSON.stringify(arg)}: want NAME=FILE[:ro]`);
  }
  let path = arg.slice(eq + 1);
  const ro = path.endsWith(':ro');
  if (ro) path = path.slice(0, -3);
  return { name: arg.slice(0, eq), path, readOnly: ro };
}

export async function nbdServe(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      export: { type: 'string', multiple: true },
      listen: { type: 'string', multiple: true },
      'max-connections': { type: 'string' },
      'memory-budget': { type: 'string' },
      'log-level': { type: 'string' },
    },
    strict: true,
  });
  const exportArgs = (values.export ?? []).map(parseExportArg);
  if (exportArgs.length === 0) throw new ConfigError('nothing to serve: give at least one --export NAME=FILE');

  const log = createLogger({ level: values['log-level'] });
  const stopped = untilSignal(log);
  const server = new NbdServer({
    log,
    maxConnections: positiveInt(values['max-connections'], '--max-connections'),
    memoryBudgetBytes: positiveInt(values['memory-budget'], '--memory-budget'),
  });
  const backends: Backend[] = [];
  const closeBackends = async (): Promise<void> => {
    await Promise.all(backends.map((b) => b.close?.()));
  };
  try {
    for (const a of exportArgs) {
      const file = await FileBackend.open({ path: a.path, readOnly: a.readOnly });
      backends.push(file);
      server.addExport({ name: a.name, backend: a.readOnly ? readOnly(file) : file, description: a.path });
    }
    for (const uri of values.listen ?? ['tcp://127.0.0.1:10809']) {
      const bound = await server.listen(uri);
      for (const a of exportArgs) process.stdout.write(`${nbdUri(bound, a.name)}\n`);
    }
  } catch (err) {
    await server.close();
    await closeBackends();
    throw err;
  }

  await stopped;
  await server.close();
  await closeBackends();
  return 0;
}
