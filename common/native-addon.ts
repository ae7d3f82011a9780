/**
 * Loads one of the native addons built by node-gyp at `npm ci` (binding.gyp, native/*.c).
 */
import { createRequire } from 'node:module';
import { ConfigError } from './errors.js';

const require = createRequire(import.meta.url);

/** The addon `build/Release/<name>.node`, found from dist/common or from common/. */
export function loadAddon<T>(name: string): T {
  const candidates = [`../build/Release/${name}.node`, `../../build/Release/${name}.node`];
  let lastError: unknown;
  for (const candidate of candidates) {
    try {
      return require(candidate) as T;
    } catch (err) {
      lastError = err;
    }
  }
  throw new ConfigError(
    `native addon build/Release/${name}.node is missing: run \`npm ci\` (it builds with node-gyp)`,
    {
      cause: lastError,
    },
  );
}
