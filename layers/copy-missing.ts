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
 */
import { constants, type Stats } from 'node:fs';
import { chmod, copyFile, lchown, lstat, lutimes, mkdir, readdir, readlink, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { NotSupportedError, systemErrorCode } from '../common/errors.js';
import { toRecorded, type RecordedStat } from './changes.js';

/**
 * What `from` has and `to` lacks, by path from the root ("/etc/hosts"), parents before children.
 * The entries of a directory are looked at together: each look is a round trip to the
 * threadpool, and an image without Docker's init files lacks a dozen of them (17.7 ms for 11 one
 * after another, on a new container's create path).
 */
export async function missingEntries(from: string, to: string): Promise<string[]> {
  // `rel` is a real directory in `to`, or (fresh) one that will be made: nothing above it is a symlink.
  const visit = async (rel: string, fresh: boolean): Promise<string[]> => {
    const names = (await readdir(join(from, rel))).sort();
    const found = await Promise.all(
      names.map(async (name): Promise<string[]> => {
        const path = `${rel}/${name}`;
        const src = await lstat(join(from, path));
        if (!fresh) {
          const there = await lstat(join(to, path)).catch((err: unknown) => {
            if (systemErrorCode(err) === 'ENOENT') return undefined;
            throw err;
          });
          if (there) return src.isDirectory() && there.isDirectory() ? visit(path, false) : [];
        }
        if (!src.isDirectory() && !src.isFile() && !src.isSymbolicLink()) throw notCopyable(path);
        return src.isDirectory() ? [path, ...(await visit(path, true))] : [path];
      }),
    );
    return found.flat();
  };
  return visit('', false);
}

/**
 * Creates `paths` (from missingEntries: none of them in `to` yet, parents first) as `from` has
 * them. Returns each as it is in `to` now. The entries of one depth are made together, after
 * their parents (missingEntries says why).
 */
export async function copyEntries(from: string, to: string, paths: string[]): Promise<Map<string, RecordedStat>> {
  const sources = new Map<string, Stats>();
  const depths = new Map<number, string[]>();
  for (const path of paths) {
    const depth = path.split('/').length;
    depths.set(depth, [...(depths.get(depth) ?? []), path]);
  }
  for (const depth of [...depths.keys()].sort((a, b) => a - b)) {
    await settledAll(
      depths.get(depth)!.map(async (path) => {
        const src = await lstat(join(from, path));
        const dst = join(to, path);
        if (src.isDirectory()) await mkdir(dst);
        else if (src.isFile()) await copyFile(join(from, path), dst, constants.COPYFILE_EXCL);
        else if (src.isSymbolicLink()) await symlink(await readlink(join(from, path)), dst);
        else throw notCopyable(path);
        await lchown(dst, src.uid, src.gid);
        if (!src.isSymbolicLink()) await chmod(dst, src.mode & 0o7777);
        sources.set(path, src);
      }),
    );
  }
  // Times last, once every entry is made: making a directory's entries moved its times (setting
  // an entry's own times moves nothing of its parent's).
  await settledAll(paths.map((path) => lutimes(join(to, path), sources.get(path)!.atime, sources.get(path)!.mtime)));
  const stats = await Promise.all(paths.map((path) => lstat(join(to, path))));
  return new Map(paths.map((path, i) => [path, toRecorded(stats[i]!)]));
}

/**
 * Takes away what an interrupted copyEntries of `paths` left in `to` (any of them, partly
 * written), so that it can be made again. Only for paths the caller planned and nothing else
 * wrote since: they are its own.
 */
export async function removeEntries(to: string, paths: string[]): Promise<void> {
  // Children first; rm removes a symlink itself, never what it points to.
  for (const path of [...paths].reverse()) await rm(join(to, path), { recursive: true, force: true });
}

/** Promise.all that returns (or throws the first error) only once every one has settled: nothing still writes in the layer after. */
async function settledAll<T>(work: Promise<T>[]): Promise<T[]> {
  const settled = await Promise.allSettled(work);
  for (const r of settled) if (r.status === 'rejected') throw r.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<T>).value);
}

function notCopyable(path: string): NotSupportedError {
  return new NotSupportedError(`cannot copy ${path}: only directories, files and symlinks`, { context: { path } });
}

/** missingEntries, then copyEntries. */
export async function copyMissing(from: string, to: string): Promise<Map<string, RecordedStat>> {
  return copyEntries(from, to, await missingEntries(from, to));
}
