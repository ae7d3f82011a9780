import { ConfigError } from '../common/errors.js';
import { COMPRESSIONS, type Compression } from '../stores/chunk-codec.js';

/** A flag's value as a positive integer (undefined when the flag is absent). */
export function positiveInt(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new ConfigError(`${flag} wants a positive integer, got ${value}`);
  return n;
}

/** `--compression`: how chunks published to an oci:// store are stored (undefined: the default). */
export function compression(value: string | undefined): Compression | undefined {
  if (value === undefined) return undefined;
  if (!COMPRESSIONS.includes(value as Compression)) {
    throw new ConfigError(`--compression wants ${COMPRESSIONS.join(' or ')}, got ${value}`);
  }
  return value as Compression;
}
