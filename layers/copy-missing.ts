/**
 * Copies into a mounted layer what a small tree has and the layer does not, as a program that
 * creates files only where none exist would have written them there: the entries' type, mode,
 * owner, times and (for files) content; nothing the layer already has is touched, and nothing
 * under a path the layer has as something other than a directory (a symlink of an image is
 * never followed, so nothing is written outside the layer). For a container's init files
 * (plugin/init-layers.ts).
 *
 * In two steps, so that a caller can record what it is about to create before it does (a crash
 * in between leaves it knowing which entries are its own): missingEntries plans, copyEntries
 * creates; copyMissing is both.
 *
 * Every file system call goes through mount-calls.ts's gate: a call on a layer's mount can wait
 * for the layer's device, whose NBD server is this process and needs a threadpool thread of its
 * own. One call at a time per copy: concurrent calls bought 4-6 ms of a busybox create
 * (docs/BENCHMARKS.md) and, before the gate, hung creates.
 */
import { constants, type Stats } from 'node:fs';
import { join } from 'node:path';
import { NotSupportedError, systemErrorCode } from '../common/errors.js';
import { toRecorded, type RecordedStat } from './changes.js';
import { mountFs } from './mount-calls.js';

const { chmod, copyFile, lchown, lstat, lutimes, mkdir, readdir, readlink, rm, symlink } = mountFs;

/** What `from` has and `to` lacks, by path from the root ("/etc/hosts"), parents before children. */
export async function missingEntries(from: string, to: string): Promise<string[]> {
  const missing: string[] = [];
  // `rel` is a real directory in `to`, or (fresh) one that will be made: nothing above it is a symlink.
  const visit = async (rel: string, fresh: boolean): Promise<void> => {
    for (const name of (await readdir(join(from, rel))).sort()) {
      const path = `${rel}/${name}`;
      const src = await lstat(join(from, path));
      if (!fresh) {
        const there = await lstat(join(to, path)).catch((err: unknown) => {
          if (systemErrorCode(err) === 'ENOENT') return undefined;
          throw err;
        });
        if (there) {
          if (src.isDirectory() && there.isDirectory()) await visit(path, false);
          continue;
        }
      }
      if (!src.isDirectory() && !src.isFile() && !src.isSymbolicLink()) throw notCopyable(path);
      missing.push(path);
      if (src.isDirectory()) await visit(path, true);
    }
  };
  await visit('', false);
  return missing;
}

/**
 * Creates `paths` (from missingEntries: none of them in `to` yet, parents first) as `from` has
 * them. Returns each as it is in `to` now.
 */
export async function copyEntries(from: string, to: string, paths: string[]): Promise<Map<string, RecordedStat>> {
  const sources: Stats[] = [];
  for (const path of paths) {
    const src = await lstat(join(from, path));
    const dst = join(to, path);
    if (src.isDirectory()) await mkdir(dst);
    else if (src.isFile()) await copyFile(join(from, path), dst, constants.COPYFILE_EXCL);
    else if (src.isSymbolicLink()) await symlink(await readlink(join(from, path)), dst);
    else throw notCopyable(path);
    await lchown(dst, src.uid, src.gid);
    if (!src.isSymbolicLink()) await chmod(dst, src.mode & 0o7777);
    sources.push(src);
  }
  // Times last, children before parents: creating a directory's entries moved its times.
  for (let i = paths.length - 1; i >= 0; i--) {
    await lutimes(join(to, paths[i]!), sources[i]!.atime, sources[i]!.mtime);
  }
  const created = new Map<string, RecordedStat>();
  for (const path of paths) created.set(path, toRecorded(await lstat(join(to, path))));
  return created;
}

/**
 * Takes away what an interrupted copyEntries of `paths` left in `to` (any of them, partly
 * written), so that it can be made again. Only for paths the caller planned and nothing else
 * wrote since: they are its own.
 */
export async function removeEntries(to: string, paths: string[]): Promise<void> {
  // Children first (so a directory is empty when its turn comes, and rm's recursion, whose calls
  // go round the gate, has nothing to walk); rm removes a symlink itself, never what it points to.
  for (const path of [...paths].reverse()) await rm(join(to, path), { recursive: true, force: true });
}

function notCopyable(path: string): NotSupportedError {
  return new NotSupportedError(`cannot copy ${path}: only directories, files and symlinks`, { context: { path } });
}

/** missingEntries, then copyEntries. */
export async function copyMissing(from: string, to: string): Promise<Map<string, RecordedStat>> {
  return copyEntries(from, to, await missingEntries(from, to));
}
