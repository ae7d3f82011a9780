/**
 * Paths of layer tar entries inside a root directory, resolved as inside the container (an
 * absolute symlink target means the layer root), refusing what would leave the root: `..` above
 * it in an entry name (path traversal) or in a symlink's target (symlink escape). Nothing here
 * writes.
 */
import { lstat, readlink } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { InvalidArgumentError } from '../../common/errors.js';

/** Symlinks followed while resolving one path before giving up (as the kernel's ELOOP). */
const MAX_SYMLINKS = 40;

export class UnsafeEntryError extends InvalidArgumentError {
  constructor(message: string, entry: string) {
    super(`unsafe layer tar entry ${JSON.stringify(entry)}: ${message}`, { context: { entry } });
  }
}

/**
 * An entry name as a clean relative path ('' is the root itself): leading `/` and `./` are
 * dropped; any `..` that would climb above the root is refused.
 */
export function entryPath(name: string): string {
  let depth = 0;
  for (const c of name.split('/')) {
    depth += c === '..' ? -1 : c && c !== '.' ? 1 : 0;
    if (depth < 0) throw new UnsafeEntryError('path traversal (.. above the layer root)', name);
  }
  return posix.normalize(`/${name}`).slice(1).replace(/\/$/, '');
}

/**
 * The real path under `root` of relative path `rel`, following symlinks in every component but
 * the last (which is what the entry creates or replaces). Missing components are returned as
 * they are (the caller creates them). Throws UnsafeEntryError if a symlink leads outside.
 */
export async function resolveParent(root: string, rel: string, entry = rel): Promise<string> {
  const parts = rel.split('/').filter(Boolean);
  const last = parts.pop();
  const dir = await resolveComponents(root, parts, entry);
  return last === undefined ? root : join(dir, last);
}

/** Like resolveParent, but follows the last component too (the directory an opaque whiteout names). */
export async function resolveAll(root: string, rel: string, entry = rel): Promise<string> {
  return resolveComponents(root, rel.split('/').filter(Boolean), entry);
}

async function resolveComponents(root: string, parts: string[], entry: string): Promise<string> {
  const done: string[] = [];
  const todo = [...parts];
  let hops = 0;
  while (todo.length > 0) {
    const c = todo.shift()!;
    if (c === '.' || c === '') continue;
    if (c === '..') {
      if (done.length === 0) throw new UnsafeEntryError('symlink escape (resolves above the layer root)', entry);
      done.pop();
      continue;
    }
    const path = join(root, ...done, c);
    const st = await lstat(path).catch(() => undefined);
    if (!st?.isSymbolicLink()) {
      done.push(c);
      continue;
    }
    if (++hops > MAX_SYMLINKS) throw new UnsafeEntryError('too many levels of symbolic links', entry);
    const target = await readlink(path);
    // An absolute target means the layer root, as it will inside the container.
    if (target.startsWith('/')) done.length = 0;
    todo.unshift(...target.split('/'));
  }
  return join(root, ...done);
}
