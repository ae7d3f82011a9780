/**
 * Names of layer tar entries as clean paths relative to the layer root. Only the names are
 * checked here: resolving them (symlinks in parents, which must stay inside the root) is the
 * kernel's job, through openat2(RESOLVE_IN_ROOT) in the tree writer (tree-writer.ts).
 * Names are binary strings (one char per byte, see tar-reader.ts).
 */
import { posix } from 'node:path';
import { InvalidArgumentError } from '../../common/errors.js';

export class UnsafeEntryError extends InvalidArgumentError {
  constructor(message: string, entry: string) {
    super(`unsafe layer tar entry ${displayName(entry)}: ${message}`, { context: { entry: displayName(entry) } });
  }
}

/** A binary-string name for messages: its bytes as UTF-8 (invalid bytes shown as U+FFFD), quoted. */
export function displayName(name: string): string {
  return JSON.stringify(Buffer.from(name, 'latin1').toString('utf8'));
}

/** A binary-string path as the bytes the kernel gets. */
export function pathBytes(path: string): Buffer {
  return Buffer.from(path, 'latin1');
}

/**
 * An entry name as a clean relative path ('' is the root itself): leading `/` and `./` are
 * dropped; any `..` that would climb above the root, and NUL bytes, are refused.
 */
export function entryPath(name: string): string {
  if (name.includes('\0')) throw new UnsafeEntryError('NUL byte in the name', name);
  let depth = 0;
  for (const c of name.split('/')) {
    depth += c === '..' ? -1 : c && c !== '.' ? 1 : 0;
    if (depth < 0) throw new UnsafeEntryError('path traversal (.. above the layer root)', name);
  }
  return posix.normalize(`/${name}`).slice(1).replace(/\/$/, '');
}

/**
 * Refuses a symlink whose relative target, read from the directory it is in, climbs above the
 * layer root, as moby does (overlay2 refuses the same tars): such a link could only ever point
 * outside. Absolute targets mean the layer root and are kept as they are.
 */
export function checkSymlinkTarget(dir: string, target: string, entry: string): void {
  if (target.includes('\0')) throw new UnsafeEntryError('NUL byte in the symlink target', entry);
  if (target.startsWith('/')) return;
  let depth = dir === '' ? 0 : dir.split('/').length;
  for (const c of target.split('/')) {
    depth += c === '..' ? -1 : c && c !== '.' ? 1 : 0;
    if (depth < 0)
      throw new UnsafeEntryError(`symlink escape (target ${displayName(target)} leads above the layer root)`, entry);
  }
}
