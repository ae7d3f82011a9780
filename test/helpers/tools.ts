/**
 * Running the real tools the tests talk to. Everything is asynchronous: the server under test
 * often runs in this same process and must keep serving while a client tool runs.
 */
export { CommandError, exitCode, run, startProcess, type RunResult } from '../../common/exec.js';
export { requireTools } from '../../harness/tools.js';

export function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new Error('this test needs root (loop devices, mounts): run it as root');
}
