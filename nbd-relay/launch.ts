/**
 * The relay of a state root, running: found on its socket, or started as a detached process
 * (its own session, so that neither a signal to the daemon's process group nor the daemon's
 * death ends it). The daemon keeps one idle connection open to it meanwhile, so that the relay
 * does not exit between attachments; the relay exits by itself once the daemon and every
 * attachment are gone.
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { ConfigError } from '../common/errors.js';
import { retryUntil } from '../common/retry.js';
import { FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, IHAVEOPT } from '../nbd-server/protocol.js';
import { SocketReader } from '../nbd-server/socket-reader.js';
import { OPT_SLACKER_ABANDON } from './relay.js';

export interface RunningRelay {
  /** Where NBD clients connect. */
  readonly socket: string;
  /** Tells the relay that these exports will not come back: their held I/O fails now. */
  abandon(exports: string[]): Promise<void>;
  /** Lets the relay go (it exits once its last client left). */
  release(): void;
}

/** The CLI that runs `nbd-relay`: beside this file in dist/, or dist/ of the checkout for sources. */
function cliMain(): string {
  const candidates = [
    join(import.meta.dirname, '..', 'cli', 'main.js'),
    join(import.meta.dirname, '..', 'dist', 'cli', 'main.js'),
  ];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new ConfigError(`slacker-ts's CLI is not built (looked for ${candidates.join(', ')})`);
  return found;
}

function connectTo(socket: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection(socket);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

export async function ensureRelay(o: { socket: string; upstream: string; logFile: string }): Promise<RunningRelay> {
  let keep: Socket | undefined = await connectTo(o.socket).catch(() => undefined);
  if (!keep) {
    const out = openSync(o.logFile, 'a', 0o600);
    const child = spawn(process.execPath, [cliMain(), 'nbd-relay', '--listen', o.socket, '--upstream', o.upstream], {
      detached: true,
      stdio: ['ignore', out, out],
    });
    closeSync(out);
    child.unref();
    keep = await retryUntil(
      'the NBD relay to listen',
      async () => {
        if (child.exitCode !== null) throw new ConfigError(`the NBD relay exited; see ${o.logFile}`);
        return connectTo(o.socket);
      },
      { attempts: 200, delayMs: 25 },
    );
  }
  const held = keep;
  held.on('error', () => undefined);
  held.on('data', () => undefined); // the relay's greeting; nothing is answered
  return { socket: o.socket, abandon: (exports) => abandon(o.socket, exports), release: () => held.destroy() };
}

/** Our OPT_SLACKER_ABANDON for each export, on a connection of its own, each acknowledged. */
async function abandon(socket: string, exports: string[]): Promise<void> {
  if (exports.length === 0) return;
  const s = await connectTo(socket);
  try {
    const reader = new SocketReader(s);
    await reader.read(18); // greeting
    s.write(Buffer.from([0, 0, 0, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES]));
    for (const name of exports) {
      const data = Buffer.from(name, 'utf8');
      const h = Buffer.alloc(16);
      h.writeBigUInt64BE(IHAVEOPT, 0);
      h.writeUInt32BE(OPT_SLACKER_ABANDON, 8);
      h.writeUInt32BE(data.length, 12);
      s.write(Buffer.concat([h, data]));
      const reply = await reader.read(20);
      await reader.read(reply.readUInt32BE(16));
    }
  } finally {
    s.destroy();
  }
}
