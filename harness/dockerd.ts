/**
 * Throwaway dockerd instances (Debian's docker.io) for tests and benchmarks: each has its own
 * data root, exec root, API socket and pidfile under one directory, no bridge network, and is
 * stopped by its PID. `stop` also removes the mounts it leaves behind.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run, startProcess, type RunResult, type Started } from '../common/exec.js';
import { retryUntil } from '../common/retry.js';
import { mountsUnder } from '../attach/host-state.js';

/** The docker client that matches Debian's dockerd (another client may be first on PATH). */
export const DOCKER = '/usr/bin/docker';
export const DOCKERD = '/usr/sbin/dockerd';

export interface Dockerd {
  dir: string;
  socket: string;
  logFile: string;
  /** Runs the docker client against this daemon. */
  docker(args: string[], options?: { timeoutMs?: number }): Promise<RunResult>;
  stop(): Promise<void>;
}

export interface DockerdOptions {
  /** Storage driver (a plugin name for graphdriver plugins; those need experimental). */
  storageDriver: string;
  storageOpts?: string[];
  /** Extra daemon flags (e.g. --insecure-registry). */
  args?: string[];
}

export async function startDockerd(dir: string, o: DockerdOptions): Promise<Dockerd> {
  await mkdir(dir, { recursive: true });
  const socket = join(dir, 'docker.sock');
  const logFile = join(dir, 'dockerd.log');
  const proc: Started = startProcess(
    DOCKERD,
    [
      '--experimental',
      '--storage-driver',
      o.storageDriver,
      ...(o.storageOpts ?? []).flatMap((s) => ['--storage-opt', s]),
      '--data-root',
      join(dir, 'root'),
      '--exec-root',
      join(dir, 'exec'),
      '--host',
      `unix://${socket}`,
      '--pidfile',
      join(dir, 'dockerd.pid'),
      '--bridge=none',
      '--iptables=false',
      ...(o.args ?? []),
    ],
    { logFile },
  );
  return superviseDockerd(dir, socket, logFile, proc);
}

/**
 * A started dockerd as a Dockerd: waits until it answers (or says why it did not, with the
 * tail of its log), runs the client against it, and stops it by its PID, removing the mounts
 * it leaves under `dir`. Shared by every dockerd version the harness starts.
 */
export async function superviseDockerd(dir: string, socket: string, logFile: string, proc: Started): Promise<Dockerd> {
  const docker = (args: string[], options: { timeoutMs?: number } = {}): Promise<RunResult> =>
    run(DOCKER, ['--host', `unix://${socket}`, ...args], { timeoutMs: options.timeoutMs ?? 120_000 });
  const stop = async (): Promise<void> => {
    await proc.stop();
    // dockerd leaves its data root bind-mounted and container mounts behind: remove ours only.
    for (const t of await mountsUnder(dir)) await run('umount', ['-l', t]).catch(() => undefined);
  };
  try {
    await retryUntil(
      'dockerd to answer',
      async () => {
        if (proc.child.exitCode !== null) throw new Error('dockerd exited');
        await docker(['version'], { timeoutMs: 5000 });
      },
      { attempts: 150, delayMs: 200 },
    );
  } catch (err) {
    await stop();
    const log = await readFile(logFile, 'utf8').catch(() => '');
    throw new Error(`dockerd did not start:\n${log.split('\n').slice(-20).join('\n')}`, { cause: err });
  }
  return { dir, socket, logFile, docker, stop };
}
