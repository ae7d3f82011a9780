/** Backing stores by URL. */
import { ConfigError } from '../common/errors.js';
import type { BackingStore } from './backing-store.js';
import { DirStore } from './dir-store.js';
import { OciStore, type OciStoreOptions } from './oci-store.js';

export function openStore(url: string, options: OciStoreOptions = {}): BackingStore {
  if (url.startsWith('dir://')) {
    const path = url.slice('dir://'.length);
    if (!path.startsWith('/')) throw new ConfigError(`dir store path must be absolute: ${url}`);
    return new DirStore(path);
  }
  if (url.startsWith('oci://') || url.startsWith('oci+http://')) return new OciStore(url, options);
  throw new ConfigError(`unsupported backing store ${JSON.stringify(url)}: use dir:///PATH or oci://HOST[:PORT]/REPO`);
}
