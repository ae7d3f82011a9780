import { TimeoutError } from './errors.js';

/** Polling for a condition another process brings about (a FUSE file appearing, a device freed). */
export async function retryUntil<T>(
  what: string,
  fn: () => Promise<T>,
  options: { attempts?: number; delayMs?: number } = {},
): Promise<T> {
  const attempts = options.attempts ?? 50;
  let last: unknown;
  for (let i = 0; i < attempts; i++) {
    try {
      return await fn();
    } catch (err) {
      last = err;
      await new Promise((r) => setTimeout(r, options.delayMs ?? 100));
    }
  }
  throw new TimeoutError(`${what} did not succeed`, { cause: last });
}
