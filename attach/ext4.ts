/** ext4 on an attached block device: make, mount, unmount. */
import { mkdir, rmdir } from 'node:fs/promises';
import { run } from '../common/exec.js';
import { retryUntil } from '../common/retry.js';
import type { LayerFilesystem } from './filesystem.js';

/** A fresh ext4; every inode table and the journal are written now, not lazily in the background. */
export async function mkfsExt4(device: string): Promise<void> {
  await run('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', device], { timeoutMs: 300_000 });
}

/**
 * noatime: with relatime, the first read of every file written by a layer apply (ctime newer
 * than atime) would update its inode: a copy-on-write of that inode table chunk per file a
 * container merely reads.
 */
export async function mountExt4(device: string, dir: string, options: { readOnly: boolean }): Promise<void> {
  await mkdir(dir, { recursive: true });
  await run('mount', ['-t', 'ext4', '-o', options.readOnly ? 'ro,noatime' : 'noatime', device, dir]);
}

/**
 * Unmounts, retrying while the file system is briefly busy (a process still closing files), and
 * removes the now empty mount point: one is made per layer ever mounted, and they would pile up.
 */
export async function unmount(dir: string): Promise<void> {
  await retryUntil(`umount ${dir}`, () => run('umount', [dir]), { attempts: 30, delayMs: 200 });
  await rmdir(dir).catch(() => undefined); // not empty or already gone: not ours to force
}

/** ext4 as a layer file system; a frozen one (fsfreeze) has its journal flushed and takes no writes. */
export const ext4: LayerFilesystem = {
  name: 'ext4',
  mkfs: mkfsExt4,
  mount: mountExt4,
  unmount,
  freeze: async (dir) => void (await run('fsfreeze', ['--freeze', dir])),
  unfreeze: async (dir) => void (await run('fsfreeze', ['--unfreeze', dir])),
};
