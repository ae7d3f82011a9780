#!/usr/bin/env node
/**
 * slacker-ts command line: one subcommand per job, each in its own module.
 */
import { SlackerError } from '../common/errors.js';
import { nbdRelay, NBD_RELAY_HELP } from './nbd-relay.js';
import { nbdServe, NBD_SERVE_HELP } from './nbd-serve.js';
import { convertCommand, CONVERT_HELP } from './convert.js';
import { gcCommand, GC_HELP } from './gc.js';
import { serve, SERVE_HELP } from './serve.js';
import { statusCommand, STATUS_HELP } from './status.js';
import { volume, VOLUME_HELP } from './volume.js';

const USAGE = `usage: slacker-ts <command> [options]

commands:
  serve       run the Docker graphdriver plugin and/or the containerd snapshotter
  status      a running daemon's state: store, volumes, cache, fetches, layers
  convert     make an image lazily pullable: one marker layer (slacker-ts convert --help)
  nbd-serve   serve raw files over NBD (slacker-ts nbd-serve --help)
  volume      create, clone, freeze, publish, open, list, remove and serve layer volumes
  gc          remove the chunks of a backing store that no snapshot references
  nbd-relay   (started by serve) keeps block devices' NBD connections across daemon restarts

Run 'slacker-ts <command> --help' for a command's options.
`;

const COMMANDS: Record<string, { run: (argv: string[]) => Promise<number>; help: string }> = {
  serve: { run: serve, help: SERVE_HELP },
  convert: { run: convertCommand, help: CONVERT_HELP },
  'nbd-serve': { run: nbdServe, help: NBD_SERVE_HELP },
  volume: { run: volume, help: VOLUME_HELP },
  status: { run: statusCommand, help: STATUS_HELP },
  'nbd-relay': { run: nbdRelay, help: NBD_RELAY_HELP },
  gc: { run: gcCommand, help: GC_HELP },
};

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(USAGE);
    return name ? 0 : 2;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`slacker-ts: unknown command ${JSON.stringify(name)}\n\n${USAGE}`);
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(command.help);
    return 0;
  }
  return command.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const code = err instanceof SlackerError ? ` [${err.code}]` : '';
    process.stderr.write(`slacker-ts: ${err instanceof Error ? err.message : String(err)}${code}\n`);
    process.exitCode = 1;
  },
);
