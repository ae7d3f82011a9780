/**
 * Typed access to the native blockdevices addon (native/block-devices.c): the loop device ioctls,
 * the readahead and freeze ioctls, and the mount(2)/umount2(2)/syncfs(2) calls that losetup,
 * blockdev, fsfreeze, mount, umount and sync -f make, and posix_fadvise(2), each on a thread of
 * its own. Errors carry the errno name in `code`, like node:fs errors.
 */
import { IoError, systemErrorCode } from '../common/errors.js';
import { loadAddon } from '../common/native-addon.js';

export interface BlockDevices {
  /** LOOP_CTL_GET_FREE: the number of a free loop device (made if none is free). */
  freeLoop(): number;
  /** LOOP_CONFIGURE: binds `file` to `device`; rejects with code EBUSY if it is bound already. */
  configureLoop(device: string, file: string, readOnly: boolean): Promise<void>;
  /** LOOP_CLR_FD: unbinds now, or when the device's last opener closes it. */
  clearLoop(device: string): Promise<void>;
  /** mount(2): `flags` are MS_* bits (MOUNT_FLAGS), `data` the file system's own options. */
  mount(source: string, target: string, fstype: string, flags: number, data: string): Promise<void>;
  /** umount2(2) without flags: rejects with code EBUSY while the mount is in use. */
  unmount(target: string): Promise<void>;
  /** BLKRASET: the device's readahead window in KiB (`blockdev --setra`; sysfs may be read-only). */
  setReadahead(device: string, kib: number): Promise<void>;
  /** FIFREEZE on the file system mounted at `dir` (`fsfreeze --freeze`): written out, no writes until thaw. */
  freeze(dir: string): Promise<void>;
  /** FITHAW (`fsfreeze --unfreeze`). */
  thaw(dir: string): Promise<void>;
  /** syncfs(2) of the file system mounted at `dir`: its dirty data and journal written, writers not blocked. */
  syncFs(dir: string): Promise<void>;
  /**
   * posix_fadvise(WILLNEED) on `file` for each offset, length pair of the flat array `ranges`:
   * the kernel starts reading them into the file's page cache; resolves once all are asked for,
   * not when the data is in.
   */
  willNeed(file: string, ranges: number[]): Promise<void>;
}

/** The mount(2) flags slacker uses (linux/mount.h). */
export const MOUNT_FLAGS = { readOnly: 0x1, noAtime: 0x400 } as const;

export const blockDevices: BlockDevices = loadAddon<BlockDevices>('blockdevices');

/**
 * Unmounts `dir`, again every `delayMs` while it is busy (EBUSY: a process still has files open
 * there, or a loop device still holds a file in it), up to `attempts` times. Any other failure
 * (not mounted, no such directory) is final. An IoError names the directory.
 */
export async function unmountRetrying(dir: string, options: { attempts: number; delayMs: number }): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await blockDevices.unmount(dir);
      return;
    } catch (err) {
      if (systemErrorCode(err) !== 'EBUSY' || attempt >= options.attempts)
        throw new IoError(`cannot unmount ${dir}: ${(err as Error).message}`, { cause: err, context: { dir } });
      await new Promise((r) => setTimeout(r, options.delayMs));
    }
  }
}
