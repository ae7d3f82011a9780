/**
 * Copies into a mounted layer what a small tree has and the layer does not, as a program that
 * creates files only where none exist would have written them there: the entries' type, mode,
 * owner, times and (for files) content; nothing the layer already has is touched, and nothing
 * under a path the layer has as something other than a directory (a symlink of an image is
 * never followed, so nothing is written outside the layer). For a container's init files
 * (plugin/init-layers.ts).
 */
import { constants } from 'node:fs';
import { chmod, copyFile, lchown, lstat, lutimes, mkdir, readdir, readlink, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { NotSupportedError, systemErrorCode } from '../common/errors.js';
import { toRecorded, type RecordedStat } from './changes.js';

/** Returns what was created, by path from the root ("/etc/hosts"), each as it is in `to` now. */
export async function copyMissing(from: string, to: string): Promise<Map<string, RecordedStat>> {
  const created = new Map<string, RecordedStat>();
  // `rel` is a real directory in `to`, made here or found so: nothing above `to/rel` is a symlink.
  const visit = async (rel: string, fresh: boolean): Promise<void> => {
    for (const name of (await readdir(join(from, rel))).sort()) {
      const path = `${rel}/${name}`;
      const src = await lstat(join(from, path));
      const dst = join(to, path);
      if (!fresh) {
        const there = await lstat(dst).catch((err: unknown) => {
          if (systemErrorCode(err) === 'ENOENT') return undefined;
          throw err;
        });
        if (there) {
          if (src.isDirectory() && there.isDirectory()) await visit(path, false);
          continue;
        }
      }
      if (src.isDirectory()) await mkdir(dst);
      else if (src.isFile()) await copyFile(join(from, path), dst, constants.COPYFILE_EXCL);
      else if (src.isSymbolicLink()) await symlink(await readlink(join(from, path)), dst);
      else
        throw new NotSupportedError(`cannot copy ${path}: only directories, files and symlinks`, { context: { path } });
      await lchown(dst, src.uid, src.gid);
      if (!src.isSymbolicLink()) await chmod(dst, src.mode & 0o7777);
      if (src.isDirectory()) await visit(path, true);
      // Last: creating its entries moved a directory's times.
      await lutimes(dst, src.atime, src.mtime);
      created.set(path, toRecorded(await lstat(dst)));
    }
  };
  await visit('', false);
  return created;
}
