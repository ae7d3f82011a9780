/** ext4 on an attached block device: make, mount, unmount. */
import { mkdir } from 'node:fs/promises';
import { IoError, systemErrorCode } from '../common/errors.js';
import { run } from '../common/exec.js';
import { blockDevices, MOUNT_FLAGS, unmountRetrying } from './block-devices.js';
import type { LayerFilesystem } from './filesystem.js';

/**
 * A fresh ext4 on a blank device, one that reads as zeros (a new volume): mke2fs is told so
 * (assume_storage_prezeroed, e2fsprogs 1.47) and writes only the metadata it must (2 MiB for
 * 4 GiB, against 67 MiB of zeroed inode tables and journal otherwise), and flags every inode
 * table zeroed, so the kernel never zeroes them lazily in the background either (which would
 * write into whatever layer is mounted). On a fresh host this made the first layer of a pull
 * wait ~490 ms for the template of its size; it now waits ~30 ms.
 */
export async function mkfsExt4(device: string): Promise<void> {
  await run('mkfs.ext4', ['-q', '-E', 'assume_storage_prezeroed=1,nodiscard', device], { timeoutMs: 300_000 });
}

/**
 * noatime: with relatime, the first read of every file written by a layer apply (ctime newer
 * than atime) would update its inode: a copy-on-write of that inode table chunk per file a
 * container merely reads.
 */
export async function mountExt4(
  device: string,
  dir: string,
  options: { readOnly: boolean; scratch?: boolean },
): Promise<void> {
  await mkdir(dir, { recursive: true });
  // barrier=0 on a scratch mount: no FLUSH per journal commit, which on a loop device is an
  // fsync of the whole staged file to disk (0.2-0.5 s of a 480 MB layer's apply), of a file
  // that is deleted once read.
  const flags = MOUNT_FLAGS.noAtime | (options.readOnly ? MOUNT_FLAGS.readOnly : 0);
  const data = !options.readOnly && options.scratch ? 'barrier=0' : '';
  try {
    await blockDevices.mount(device, dir, 'ext4', flags, data);
  } catch (err) {
    throw new IoError(`cannot mount ${device} (ext4) on ${dir}: ${(err as Error).message}`, {
      cause: err,
      context: { device, dir },
    });
  }
}

/**
 * Unmounts, retrying while the file system is briefly busy (a process still closing files).
 * The mount point stays (an empty directory): removing it is not harmless. Copies of the mount
 * live on in other mount namespaces (a container's, one made by `ip netns`), and rmdir of their
 * mount point detaches them, so the final unmount, which flushes ext4 through the loop device,
 * FUSE and NBD into the server that serves the layer, would run in the thread that called rmdir.
 * In the plugin that is a libuv threadpool thread, and the NBD server's file I/O needs those
 * same threads: 64 containers at once deadlocked that way (all four threads in cleanup_mnt).
 * The unmount itself runs on a thread of its own for the same reason (native/block-devices.c).
 */
export async function unmount(dir: string): Promise<void> {
  await unmountRetrying(dir, { attempts: 30, delayMs: 200 });
}

/** One umount2(2): false if the mount is busy (EBUSY), left mounted. */
export async function unmountIfIdle(dir: string): Promise<boolean> {
  try {
    await blockDevices.unmount(dir);
    return true;
  } catch (err) {
    if (systemErrorCode(err) === 'EBUSY') return false;
    throw new IoError(`cannot unmount ${dir}: ${(err as Error).message}`, { cause: err, context: { dir } });
  }
}

/**
 * A directory's names read with debugfs (e2fsprogs), without mounting: a few milliseconds, and
 * nothing is written. `ls -p` prints `/inode/mode/uid/gid/name/size/` per entry.
 */
export async function listExt4(device: string, path: string): Promise<string[] | undefined> {
  const r = await run('debugfs', ['-R', `ls -p ${path}`, device]);
  if (/File not found/.test(r.stderr) || /not a directory/i.test(r.stderr)) return undefined;
  return r.stdout
    .split('\n')
    .map((line) => line.split('/')[5])
    .filter((name): name is string => name !== undefined && name !== '.' && name !== '..');
}

/** The addon's error for a mount point, as an IoError that names it. */
async function named(what: string, dir: string, call: Promise<void>): Promise<void> {
  try {
    await call;
  } catch (err) {
    throw new IoError(`cannot ${what} the file system at ${dir}: ${(err as Error).message}`, {
      cause: err,
      context: { dir },
    });
  }
}

/** ext4 as a layer file system; a frozen one (FIFREEZE) has its journal flushed and takes no writes. */
export const ext4: LayerFilesystem = {
  name: 'ext4',
  mkfs: mkfsExt4,
  mount: mountExt4,
  unmount,
  unmountIfIdle,
  // The ioctls fsfreeze makes, without its process (5-10 ms each on this VM: issue 19).
  freeze: (dir) => named('freeze', dir, blockDevices.freeze(dir)),
  unfreeze: (dir) => named('thaw', dir, blockDevices.thaw(dir)),
  sync: (dir) => named('sync', dir, blockDevices.syncFs(dir)),
  list: listExt4,
};
