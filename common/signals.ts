import type { Logger } from './logger.js';

/**
 * Resolves at the first SIGTERM or SIGINT. Call it before starting anything: a signal that
 * arrives as soon as a server is up must still shut it down cleanly.
 */
export function untilSignal(log?: Logger): Promise<string> {
  return new Promise((resolve) => {
    const stop = (signal: string): void => {
      log?.info({ signal }, 'shutting down');
      resolve(signal);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
