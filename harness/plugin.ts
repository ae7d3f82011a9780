/**
 * The slacker graphdriver plugin as a separate process (`slacker-ts serve` from dist/), with a
 * unique name so that tests never meet another run's socket.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { run, startProcess, type Started } from '../common/exec.js';
import { DOCKER, startDockerd, type Dockerd } from './dockerd.js';
import { retryUntil } from '../common/retry.js';
import { pluginRequest } from '../plugin/client.js';
import type { ConvertResult } from '../plugin/convert.js';

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
export function cliPath(): string {
  const fromSource = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
  return existsSync(fromSource) ? fromSource : join(import.meta.dirname, '..', 'cli', 'main.js');
}

export async function startPlugin(o: PluginOptions): Promise<PluginProcess> {
  const name = o.name ?? uniquePluginName();
  const socket = `/run/docker/plugins/${name}.sock`;
  const args = [cliPath(), 'serve', '--name', name, '--root', o.root, '--log-level', 'debug'];
  if (o.store) args.push('--store', o.store);
  if (o.size) args.push('--size', o.size);
  await mkdir(dirname(o.logFile), { recursive: true });
  const proc = startProcess(process.execPath, [...args, ...(o.extraArgs ?? [])], { logFile: o.logFile });
  await retryUntil('the plugin socket to appear', async () => {
    if (proc.child.exitCode !== null) throw new Error(`plugin exited; see ${o.logFile}`);
    if (!existsSync(socket)) throw new Error('not yet');
  });
  const stop = async (): Promise<void> => {
    await proc.stop();
    await rm(socket, { force: true }); // a crashed plugin leaves its socket behind
    await rm(`/run/docker/plugins/${name}.slacker-init`, { force: true });
  };
  return { name, socket, logFile: o.logFile, proc, stop };
}

/**
 * Ends a plugin (SIGTERM, or SIGKILL as a crash) and starts it again with the same name, root
 * and options, as a service manager would; dockerd is not told.
 */
export async function restartPlugin(
  p: PluginProcess,
  o: PluginOptions,
  signal: 'SIGTERM' | 'SIGKILL',
): Promise<PluginProcess> {
  if (signal === 'SIGKILL') {
    const exited = new Promise((resolve) => p.proc.child.once('exit', resolve));
    p.proc.child.kill('SIGKILL');
    await exited;
  } else await p.proc.stop();
  await rm(p.socket, { force: true });
  return startPlugin({ ...o, name: p.name });
}

/** One plugin protocol call, as dockerd makes it: status code and parsed JSON body. */
export async function callPlugin(
  socket: string,
  method: string,
  body: unknown,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await pluginRequest(socket, method, body);
  return { status: r.status, body: JSON.parse(r.body.toString()) as Record<string, unknown> };
}

/**
 * `slacker-ts convert SRC DST --push` on a slacker host (a dockerd whose storage driver is
 * `plugin`); returns what convert prints (snapshot reference, DiffID, layer bytes).
 */
export async function convertImage(
  host: { plugin?: { name: string }; dockerd: { socket: string } },
  src: string,
  dst: string,
  options: { profile?: string; push?: boolean } = {},
): Promise<ConvertResult> {
  if (!host.plugin) throw new Error('convert runs on a slacker host');
  return runConvert(['--name', host.plugin.name], host.dockerd.socket, src, dst, options);
}

/**
 * `slacker-ts convert SRC DST [--push]` as a user runs it, reaching the slacker daemon by
 * `daemonArgs` (`--name NAME`, or `--containerd-socket PATH`); the CLI's JSON answer.
 */
export async function runConvert(
  daemonArgs: string[],
  dockerSocket: string,
  src: string,
  dst: string,
  options: { profile?: string; push?: boolean } = {},
): Promise<ConvertResult> {
  const { stdout } = await run(
    process.execPath,
    [
      cliPath(),
      'convert',
      src,
      dst,
      ...(options.push === false ? [] : ['--push']),
      ...daemonArgs,
      '--host',
      `unix://${dockerSocket}`,
      '--docker-bin',
      DOCKER,
      ...(options.profile ? ['--profile', options.profile] : []),
    ],
    { timeoutMs: 1_800_000 },
  );
  return JSON.parse(stdout) as ConvertResult;
}

/** A "host" running on slacker: its own plugin (state in DIR/state) and a dockerd using it. */
export interface SlackerHost {
  /** The running plugin (replaced by restartPlugin). */
  readonly plugin: PluginProcess;
  dockerd: Dockerd;
  /** Ends the plugin (SIGTERM or SIGKILL) and starts it again, dockerd running on. */
  restartPlugin(signal: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  /** Stops dockerd, then the plugin. */
  stop(): Promise<void>;
}

export async function startSlackerHost(
  dir: string,
  o: { store?: string; size?: string; pluginArgs?: string[]; dockerdArgs?: string[] } = {},
): Promise<SlackerHost> {
  const options: PluginOptions = {
    root: join(dir, 'state'),
    store: o.store,
    size: o.size,
    logFile: join(dir, 'plugin.log'),
    extraArgs: o.pluginArgs,
  };
  let plugin = await startPlugin(options);
  let dockerd: Dockerd;
  try {
    dockerd = await startDockerd(join(dir, 'docker'), { storageDriver: plugin.name, args: o.dockerdArgs });
  } catch (err) {
    await plugin.stop();
    throw err;
  }
  return {
    get plugin() {
      return plugin;
    },
    dockerd,
    restartPlugin: async (signal) => {
      plugin = await restartPlugin(plugin, options, signal);
    },
    stop: async () => {
      await dockerd.stop();
      await plugin.stop();
    },
  };
}
