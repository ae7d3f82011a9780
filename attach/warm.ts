/**
 * Warming the attach path. On a host that just booted (or whose page cache was dropped), the
 * first attach reads nbdfuse, losetup, mount and their shared libraries from disk: measured in
 * HelloBench's fresh workers, the first layer's attach took 53-124 ms where every later one took
 * 20 ms, and it lies on the first container's `docker create` (docs/BENCHMARKS.md). Running each
 * program once with `--version` when the daemon starts takes that off the first create.
 */
import { run } from '../common/exec.js';

/** Runs each `[program, ...args]` once, in parallel; failures are ignored (a warm-up is a hint). */
export async function warmPrograms(commands: readonly (readonly string[])[]): Promise<void> {
  await Promise.all(
    commands.map(([program, ...args]) => run(program!, args, { timeoutMs: 10_000 }).catch(() => undefined)),
  );
}
