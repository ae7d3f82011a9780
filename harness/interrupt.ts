/**
 * Cleanup that also runs when a benchmark or demo is interrupted. A `finally` block does not
 * run when SIGINT or SIGTERM ends the process, and an interrupted run would leave what it
 * started behind: network namespaces, registries, dockerd mounts, temporary state.
 *
 *   const stop = onInterrupt(async () => { await registry.close(); await link.close(); });
 *   try { ... } finally { await stop(); }
 *
 * `stop` runs the cleanup at most once. At the first SIGINT or SIGTERM every cleanup still
 * registered runs, the most recent first (inner resources before the ones they live in), and
 * the process exits with 130 or 143. A signal that arrives while a cleanup is already running
 * waits for that same run instead of cutting it short.
 */

type Stop = () => Promise<void>;

const active: Stop[] = [];
let hooked = false;

function onSignal(signal: NodeJS.Signals): void {
  console.error(`${signal}: stopping what this run started`);
  const stops = [...active].reverse();
  void (async () => {
    for (const stop of stops) await stop();
  })().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
}

/** Registers `close` to run at the end (call the returned `stop`) or at an interrupt, once. */
export function onInterrupt(close: () => Promise<unknown>): Stop {
  if (!hooked) {
    hooked = true;
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }
  let running: Promise<void> | undefined;
  const stop: Stop = () =>
    (running ??= close().then(
      () => undefined,
      (err: unknown) => console.error('cleanup failed:', err),
    )).finally(() => {
      const i = active.indexOf(stop);
      if (i >= 0) active.splice(i, 1);
    });
  active.push(stop);
  return stop;
}
