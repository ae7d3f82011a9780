/**
 * Running the real tools the tests talk to. Everything is asynchronous: the server under test
 * often runs in this same process and must keep serving while a client tool runs.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';

/** Debian package that provides each tool (what .ci/run installs). */
const PACKAGES: Record<string, string> = {
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdfuse: 'libnbd-bin',
  'qemu-io': 'qemu-utils',
  'qemu-img': 'qemu-utils',
  nbdkit: 'nbdkit',
  'mkfs.ext4': 'e2fsprogs',
  fusermount3: 'fuse3',
  losetup: 'mount',
  fio: 'fio',
};

export interface RunResult {
  stdout: string;
  stderr: string;
}

export class CommandError extends Error {
  constructor(
    message: string,
    readonly exitCode: number | null,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(message);
  }
}

export function run(
  cmd: string,
  args: string[],
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { timeout: options.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, env: options.env ?? process.env },
      (err, stdout, stderr) => {
        if (err) {
          const code = typeof err.code === 'number' ? err.code : null;
          reject(
            new CommandError(
              `${cmd} ${args.join(' ')} failed (${err.message.trim()}):\n${stderr}`,
              code,
              stdout,
              stderr,
            ),
          );
        } else resolve({ stdout, stderr });
      },
    );
  });
}

/** Exit code of a command, for tools that answer with it (nbdinfo --can). */
export async function exitCode(cmd: string, args: string[]): Promise<number> {
  try {
    await run(cmd, args);
    return 0;
  } catch (err) {
    if (err instanceof CommandError && err.exitCode !== null) return err.exitCode;
    throw err;
  }
}

/**
 * Fails loudly (never skips) when a tool is missing: CI installs them all, and a test that
 * silently does not run proves nothing.
 */
export async function requireTools(...tools: string[]): Promise<void> {
  const missing: string[] = [];
  for (const t of tools) {
    try {
      await run('sh', ['-c', `command -v ${t}`]);
    } catch {
      missing.push(`${t} (Debian package ${PACKAGES[t] ?? '?'})`);
    }
  }
  if (missing.length > 0) {
    throw new Error(`MISSING TOOLS, this test cannot run: ${missing.join(', ')}. Run .ci/run or apt-get install them.`);
  }
}

export function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new Error('this test needs root (loop devices, mounts): run it as root');
}

/** Starts a long-running process; `stop` ends it by PID and waits. */
export function startProcess(cmd: string, args: string[]): { child: ChildProcess; stop: () => Promise<void> } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
