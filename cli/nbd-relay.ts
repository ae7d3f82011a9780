/**
 * `slacker-ts nbd-relay`: the NBD relay (nbd-relay/relay.ts) as its own process. `serve` starts
 * it, detached, for its state root; it is not meant to be started by hand. It exits on its own
 * once no client has been connected for a moment, and on SIGTERM.
 */
import { parseArgs } from 'node:util';
import { ConfigError } from '../common/errors.js';
import { createLogger } from '../common/logger.js';
import { Relay } from '../nbd-relay/relay.js';

export const NBD_RELAY_HELP = `usage: slacker-ts nbd-relay --listen PATH --upstream PATH [--idle-exit-ms N]

Relays NBD connections from block-device clients (nbdfuse, nbd-client) on unix socket --listen
to the NBD server on unix socket --upstream, holding them (and replaying what the server may have
lost) while the server restarts. slacker-ts serve runs one per state root.

options:
  --listen PATH        where clients connect (mode 0600)
  --upstream PATH      the NBD server's unix socket
  --idle-exit-ms N     exit once nobody was connected for N ms (default 500)
  --hold-ms N          fail held requests with EIO if the server is not back in N ms
                       (default 300000)
  --log-level LEVEL    trace|debug|info|warn|error (default info)
`;

export async function nbdRelay(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string' },
      upstream: { type: 'string' },
      'idle-exit-ms': { type: 'string' },
      'hold-ms': { type: 'string' },
      'log-level': { type: 'string' },
    },
    strict: true,
  });
  if (!values.listen || !values.upstream) throw new ConfigError('nbd-relay needs --listen and --upstream');
  const log = createLogger({ level: values['log-level'], name: 'slacker-ts-relay' });
  let finish: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (finish = resolve));
  const relay = new Relay({
    listen: values.listen,
    upstream: values.upstream,
    log,
    idleExitMs: values['idle-exit-ms'] ? Number(values['idle-exit-ms']) : undefined,
    holdMs: values['hold-ms'] ? Number(values['hold-ms']) : undefined,
    onIdle: () => {
      log.info('relay: nobody connected; exiting');
      finish();
    },
  });
  // Before listening: the socket appears at bind, and a SIGTERM sent as soon as it is there would
  // otherwise find no handler and kill the relay without removing it.
  process.once('SIGTERM', finish);
  process.once('SIGINT', finish);
  process.umask(0o077); // the socket: 0600
  await relay.listen();
  await done;
  await relay.close();
  return 0;
}
