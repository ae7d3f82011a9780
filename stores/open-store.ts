/** Backing stores by URL. */
import { ConfigError } from '../common/errors.js';
import type { BackingStore } from './backing-store.js';
import { DirStore } from './dir-store.js';

export function openStore(url: string): BackingStore {
  if (url.startsWith('dir://')) {
    const path = url.slice('dir://'.length);
    if (!path.startsWith('/')) throw new ConfigError(`dir store path must be absolute: ${url}`);
    return new DirStore(path);
  }
  throw new ConfigError(`unsupported backing store ${JSON.stringify(url)}: use dir:///PATH`);
}
