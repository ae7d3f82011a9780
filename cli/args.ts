import { ConfigError } from '../common/errors.js';

/** A flag's value as a positive integer (undefined when the flag is absent). */
export function positiveInt(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new ConfigError(`${flag} wants a positive integer, got ${value}`);
  return n;
}
