/**
 * The slacker graphdriver plugin as a separate process (`slacker-ts serve` from dist/), with a
 * unique name so that tests never meet another run's socket.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { startProcess, type Started } from '../common/exec.js';
import { retryUntil } from '../common/retry.js';

export interface PluginProcess {
  name: string;
  socket: string;
  logFile: string;
  proc: Started;
  stop(): Promise<void>;
}

export interface PluginOptions {
  name?: string;
  root: string;
  store?: string;
  size?: string;
  logFile: string;
  extraArgs?: string[];
}

export function uniquePluginName(): string {
  return `slk${randomBytes(4).toString('hex')}`;
}

/** The compiled CLI: tests run from sources, the plugin runs like users run it, from dist/. */
function cliPath(): string {
  const fromSource = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
  return existsSync(fromSource) ? fromSource : join(import.meta.dirname, '..', 'cli', 'main.js');
}

export async function startPlugin(o: PluginOptions): Promise<PluginProcess> {
  const name = o.name ?? uniquePluginName();
  const socket = `/run/docker/plugins/${name}.sock`;
  const args = [cliPath(), 'serve', '--name', name, '--root', o.root, '--log-level', 'debug'];
  if (o.store) args.push('--store', o.store);
  if (o.size) args.push('--size', o.size);
  const proc = startProcess(process.execPath, [...args, ...(o.extraArgs ?? [])], { logFile: o.logFile });
  await retryUntil('the plugin socket to appear', async () => {
    if (proc.child.exitCode !== null) throw new Error(`plugin exited; see ${o.logFile}`);
    if (!existsSync(socket)) throw new Error('not yet');
  });
  const stop = async (): Promise<void> => {
    await proc.stop();
    await rm(socket, { force: true }); // a crashed plugin leaves its socket behind
  };
  return { name, socket, logFile: o.logFile, proc, stop };
}

/** One plugin protocol call on its unix socket, as dockerd makes it: status code and JSON body. */
export function callPlugin(
  socket: string,
  method: string,
  body: unknown,
  raw?: Buffer,
): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, path: `/${method}`, method: 'POST' }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (b: Buffer) => parts.push(b));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString();
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> });
        } catch {
          resolve({ status: res.statusCode ?? 0, body: { raw: text } });
        }
      });
    });
    req.on('error', reject);
    req.end(raw ?? `${JSON.stringify(body)}\n`);
  });
}
