/**
 * Throwaway containerd instances (Debian trixie's 1.7, unpacked by scripts/install-engine.sh)
 * for tests and benchmarks: each has its own root, state, sockets and config under one
 * directory, optional proxy snapshotters, no CRI plugin, and is stopped by its PID. Shims and
 * `ctr` come from the same unpacked tree; runc is bookworm's, on PATH.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError } from '../common/errors.js';
import { run, startProcess, type RunResult, type Started } from '../common/exec.js';
import { cliPath, runConvert } from './plugin.js';
import type { ConvertResult } from '../plugin/convert.js';
import { superviseDockerd, type Dockerd } from './dockerd.js';
import { retryUntil } from '../common/retry.js';
import { loopsUnder, mountsUnder } from '../attach/host-state.js';

export const ENGINE_DIR = process.env.SLACKER_ENGINE_DIR ?? '/opt/slacker-ts/engine/trixie';
export const CONTAINERD = join(ENGINE_DIR, 'usr/bin/containerd');
export const CTR = join(ENGINE_DIR, 'usr/bin/ctr');
export const DOCKERD26 = join(ENGINE_DIR, 'usr/sbin/dockerd');

export interface Containerd {
  dir: string;
  socket: string;
  logFile: string;
  /** Runs ctr against this containerd in namespace `test` (or `namespace`). */
  ctr(args: string[], options?: { timeoutMs?: number; namespace?: string }): Promise<RunResult>;
  stop(): Promise<void>;
}

export interface ContainerdOptions {
  /** Proxy snapshotters: name -> unix socket. */
  snapshotters?: Record<string, string>;
  /** Proxy differs: name -> unix socket; the diff service tries them first, then "walking". */
  differs?: Record<string, string>;
}

/** containerd's socket in a directory startContainerd was given. */
export const containerdSocketIn = (dir: string): string => join(dir, 'containerd.sock');

/** The environment containerd and ctr run with: the unpacked tree's binaries first on PATH. */
export function engineEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${join(ENGINE_DIR, 'usr/bin')}:${join(ENGINE_DIR, 'usr/sbin')}:${process.env.PATH}` };
}

export function requireEngine(): void {
  if (!existsSync(CONTAINERD) || !existsSync(CTR)) {
    throw new ConfigError(
      `containerd is not unpacked in ${ENGINE_DIR}: run scripts/install-engine.sh (scripts/install-deps.sh does)`,
    );
  }
}

export async function startContainerd(dir: string, o: ContainerdOptions = {}): Promise<Containerd> {
  requireEngine();
  await mkdir(dir, { recursive: true });
  const socket = containerdSocketIn(dir);
  const logFile = join(dir, 'containerd.log');
  const proxy = (type: string, name: string, address: string): string =>
    `[proxy_plugins.${JSON.stringify(name)}]\n  type = "${type}"\n  address = ${JSON.stringify(address)}\n`;
  const differs = Object.keys(o.differs ?? {});
  // Two proxy plugins may not share a name: a differ gets "-diff" after its name.
  const proxies = [
    ...Object.entries(o.snapshotters ?? {}).map(([name, address]) => proxy('snapshot', name, address)),
    ...Object.entries(o.differs ?? {}).map(([name, address]) => proxy('diff', `${name}-diff`, address)),
    ...(differs.length > 0
      ? [
          '[plugins."io.containerd.service.v1.diff-service"]',
          `  default = ${JSON.stringify([...differs.map((d) => `${d}-diff`), 'walking'])}`,
        ]
      : []),
  ].join('\n');
  const config = join(dir, 'config.toml');
  await writeFile(
    config,
    [
      'version = 2',
      `root = ${JSON.stringify(join(dir, 'root'))}`,
      `state = ${JSON.stringify(join(dir, 'state'))}`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = ${JSON.stringify(socket)}`,
      '[ttrpc]',
      `  address = ${JSON.stringify(`${socket}.ttrpc`)}`,
      '[debug]',
      `  address = ${JSON.stringify(join(dir, 'debug.sock'))}`,
      '',
      proxies,
    ].join('\n'),
  );
  const proc = startProcess(CONTAINERD, ['--config', config], { logFile, env: engineEnv() });
  const ctr = (args: string[], options: { timeoutMs?: number; namespace?: string } = {}): Promise<RunResult> =>
    run(CTR, ['--address', socket, '--namespace', options.namespace ?? 'test', ...args], {
      timeoutMs: options.timeoutMs ?? 120_000,
      env: engineEnv(),
    });
  const stop = async (): Promise<void> => {
    await proc.stop();
    // Task mounts the shims left: ours only.
    for (const t of await mountsUnder(dir)) await run('umount', ['-l', t]).catch(() => undefined);
  };
  try {
    await retryUntil(
      'containerd to answer',
      async () => {
        if (proc.child.exitCode !== null) throw new ConfigError('containerd exited');
        await run(CTR, ['--address', socket, 'version'], { timeoutMs: 5000, env: engineEnv() });
      },
      { attempts: 150, delayMs: 200 },
    );
  } catch (err) {
    await stop();
    const log = await readFile(logFile, 'utf8').catch(() => '');
    throw new ConfigError(`containerd did not start:\n${log.split('\n').slice(-20).join('\n')}`, { cause: err });
  }
  return { dir, socket, logFile, ctr, stop };
}

export interface SnapshotterProcess {
  socket: string;
  root: string;
  logFile: string;
  proc: Started;
  stop(): Promise<void>;
}

/** `slacker-ts serve --containerd-socket` as its own process, as users run it. */
export async function startSnapshotter(o: {
  root: string;
  socket: string;
  logFile: string;
  store?: string;
  size?: string;
  /** A metrics listener address (unix:///PATH). */
  metrics?: string;
  /** containerd's socket, for the differ. */
  containerdAddress?: string;
  /** More `slacker-ts serve` arguments (--readahead, --log-level, ...). */
  extraArgs?: string[];
}): Promise<SnapshotterProcess> {
  const args = [cliPath(), 'serve', '--containerd-socket', o.socket, '--root', o.root, '--log-level', 'debug'];
  if (o.containerdAddress) args.push('--containerd-address', o.containerdAddress);
  args.push(...(o.extraArgs ?? []));
  await rm(o.socket, { force: true }); // one a killed snapshotter left would look like ours
  if (o.metrics) args.push('--metrics', o.metrics);
  if (o.store) args.push('--store', o.store);
  if (o.size) args.push('--size', o.size);
  const proc = startProcess(process.execPath, args, { logFile: o.logFile });
  await retryUntil('the snapshotter socket to appear', async () => {
    if (proc.child.exitCode !== null) throw new ConfigError(`the snapshotter exited; see ${o.logFile}`);
    if (!existsSync(o.socket)) throw new ConfigError('not yet');
  });
  return { socket: o.socket, root: o.root, logFile: o.logFile, proc, stop: () => proc.stop() };
}

/**
 * Docker 26 (trixie's dockerd, unpacked) on the containerd image store, its storage driver a
 * containerd snapshotter: `{"features": {"containerd-snapshotter": true}, "storage-driver":
 * NAME, "containerd": SOCKET}`. The client is the host's /usr/bin/docker (it negotiates the API
 * version down).
 */
export async function startDockerd26(
  dir: string,
  o: { containerd: Containerd; snapshotter: string; insecureRegistries?: string[] },
): Promise<Dockerd> {
  requireEngine();
  await mkdir(dir, { recursive: true });
  const socket = join(dir, 'docker.sock');
  const logFile = join(dir, 'dockerd.log');
  const config = join(dir, 'daemon.json');
  await writeFile(
    config,
    JSON.stringify({
      features: { 'containerd-snapshotter': true },
      'storage-driver': o.snapshotter,
      containerd: o.containerd.socket,
      'data-root': join(dir, 'root'),
      'exec-root': join(dir, 'exec'),
      hosts: [`unix://${socket}`],
      pidfile: join(dir, 'dockerd.pid'),
      bridge: 'none',
      iptables: false,
      'insecure-registries': o.insecureRegistries ?? [],
    }),
  );
  const proc = startProcess(DOCKERD26, ['--config-file', config], { logFile, env: engineEnv() });
  return superviseDockerd(dir, socket, logFile, proc);
}

/** A containerd whose proxy snapshotter `name` is slacker-ts (its own process, state in DIR/state). */
export interface SlackerContainerd {
  /** The running snapshotter (replaced by restartSnapshotter). */
  readonly snap: SnapshotterProcess;
  containerd: Containerd;
  /** Ends the snapshotter (SIGTERM, or SIGKILL as a crash) and starts it again, containerd running on. */
  restartSnapshotter(signal: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  /** Stops containerd, then the snapshotter; returns what is still mounted or attached under the state. */
  stop(): Promise<string[]>;
}

/**
 * `differ` (default true): slacker-ts is also containerd's first differ (metadata-only commits,
 * lazy markers); without it containerd's walking differ applies and makes every layer.
 */
export async function startSlackerContainerd(
  dir: string,
  o: { name: string; size?: string; metrics?: string; store?: string; differ?: boolean; extraArgs?: string[] },
): Promise<SlackerContainerd> {
  const state = join(dir, 'state');
  await mkdir(dir, { recursive: true });
  const snapOptions = {
    root: state,
    socket: join(dir, 'snapshotter.sock'),
    logFile: join(dir, 'snapshotter.log'),
    size: o.size,
    metrics: o.metrics,
    store: o.store,
    containerdAddress: containerdSocketIn(join(dir, 'containerd')),
    extraArgs: o.extraArgs,
  };
  let snap = await startSnapshotter(snapOptions);
  let containerd: Containerd;
  try {
    containerd = await startContainerd(join(dir, 'containerd'), {
      snapshotters: { [o.name]: snap.socket },
      differs: o.differ === false ? {} : { [o.name]: snap.socket },
    });
  } catch (err) {
    await snap.stop();
    throw err;
  }
  return {
    get snap() {
      return snap;
    },
    containerd,
    restartSnapshotter: async (signal) => {
      if (signal === 'SIGKILL') {
        const exited = new Promise((resolve) => snap.proc.child.once('exit', resolve));
        snap.proc.child.kill('SIGKILL');
        await exited;
      } else await snap.stop();
      snap = await startSnapshotter(snapOptions);
    },
    stop: async () => {
      await containerd.stop();
      await snap.stop();
      return [...(await mountsUnder(state)), ...(await loopsUnder(state)).map((l) => l.device)];
    },
  };
}

/**
 * `slacker-ts convert SRC DST --push --containerd-socket` on a Docker 26 whose snapshotter is
 * slacker-ts (its socket `snapshotterSocket`), as a user runs it; the CLI's JSON answer.
 */
export function convertOnContainerd(
  snapshotterSocket: string,
  dockerSocket: string,
  src: string,
  dst: string,
  options: { profile?: string } = {},
): Promise<ConvertResult> {
  return runConvert(['--containerd-socket', snapshotterSocket], dockerSocket, src, dst, options);
}
