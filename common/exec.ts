/**
 * Running external programs (nbdfuse, losetup, mount, nbdkit...) asynchronously: a process that
 * serves NBD in-process must keep serving while a tool it started talks to it.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { CommandError } from './errors.js';

export { CommandError };

export interface RunResult {
  stdout: string;
  stderr: string;
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

export interface Started {
  child: ChildProcess;
  /** Ends the process by its PID (SIGTERM) and waits for it to exit. */
  stop(): Promise<void>;
}

/**
 * Starts a long-running process. Its output goes to `logFile` when given (a chatty daemon would
 * otherwise fill an unread pipe and stall), else to pipes the caller reads.
 */
export function startProcess(
  cmd: string,
  args: string[],
  options: { logFile?: string; env?: NodeJS.ProcessEnv; detached?: boolean } = {},
): Started {
  const out = options.logFile ? openSync(options.logFile, 'a') : 'pipe';
  const child = spawn(cmd, args, {
    stdio: ['ignore', out, out],
    env: options.env ?? process.env,
    // Its own session: a signal to our process group (a terminal's Ctrl-C) does not reach it.
    detached: options.detached ?? false,
  });
  if (typeof out === 'number') closeSync(out);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
