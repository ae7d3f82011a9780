/**
 * Typed access to the native fileops addon (native/fileops.c): the Linux file syscalls node:fs
 * lacks. Errors carry the errno name in `code`, like node:fs errors.
 */
import { randomBytes } from 'node:crypto';
import { loadAddon } from './native-addon.js';

export interface FileOps {
  /** Next offset >= `offset` that holds data, or -1 if only holes follow. */
  seekData(fd: number, offset: number): number;
  /** Next offset >= `offset` that starts a hole (end of file counts as one). */
  seekHole(fd: number, offset: number): number;
  /** Size of a file or block device. */
  seekEnd(fd: number): number;
  /** Deallocate a range; it then reads as zeroes. */
  punchHole(fd: number, offset: number, length: number): void;
  /** Zero a range, keeping it allocated. */
  zeroRange(fd: number, offset: number, length: number): void;
  /**
   * Read without blocking (preadv2 RWF_NOWAIT): bytes read from the page cache, -1 if the read
   * would block on the disk, -2 if RWF_NOWAIT is unsupported here.
   */
  preadNoWait(fd: number, buffer: Buffer, bufOffset: number, length: number, position: number): number;
  /** Ask the kernel to read a range ahead into the page cache. */
  fadviseWillNeed(fd: number, offset: number, length: number): void;
  /** Set an extended attribute on a path, not following a final symlink. */
  lsetxattr(path: string, name: string, value: Buffer): void;
  /** Create a device node or FIFO; `mode` includes the file type bits (S_IFCHR, S_IFBLK, S_IFIFO). */
  mknod(path: string, mode: number, major: number, minor: number): void;
  /** 1 if every page of the range is in the page cache, 0 if not, -2 if cachestat(2) is missing. */
  isCached(fd: number, offset: number, length: number): number;
  /** SO_SNDBUF of a socket (capped by net.core.wmem_max); returns the size in effect. */
  setSendBuffer(socketFd: number, bytes: number): number;
  /** sendfile(2) to a non-blocking socket: bytes the kernel took, -1 if it has no room now. */
  sendfileNoWait(socketFd: number, fd: number, position: number, length: number): number;
  /** send(2) to a non-blocking socket (MSG_MORE if `more`): bytes taken, -1 if it has no room now. */
  sendNoWait(socketFd: number, buffer: Buffer, more: boolean): number;
  /** flock(LOCK_EX|LOCK_NB): true if this process now holds it, false if another process does. */
  lockExclusive(fd: number): boolean;
  /**
   * Asks for transparent huge pages (madvise MADV_HUGEPAGE) on the whole 2 MiB pages inside
   * `buffer`: returns the offset of the first in it (its length if none fits), -2 if refused.
   */
  adviseHugePages(buffer: Buffer): number;
  /**
   * Writes `data` to a new file `tmpPath` (it must not exist), fdatasync's it if `durable`, and
   * renames it to `path`, as one threadpool job; the temporary file is removed on failure.
   */
  writeFileAtomic(path: string, tmpPath: string, data: Buffer, durable: boolean): Promise<void>;
  /**
   * syncfs(2) of the file system holding `path`, on the threadpool: one sync for many files
   * written without one each (a frozen layer's new chunks).
   */
  syncFs(path: string): Promise<void>;
  /**
   * copy_file_range(2) of each range (`inFd, inPosition, outPosition, length`, flattened) into
   * `outFd`, in one threadpool job; every descriptor is duplicated at the call. Rejects with the
   * first failure (EIO if a source ends inside its range); ranges before it were copied.
   */
  copyRanges(outFd: number, ranges: number[]): Promise<void>;
}

export const fileOps: FileOps = loadAddon<FileOps>('fileops');

/**
 * Writes `data` to `path` all or nothing (fileOps.writeFileAtomic), through a temporary file
 * beside it named uniquely, so concurrent writers of the same path never share one.
 */
export function writeFileAtomically(path: string, data: Buffer, options: { durable: boolean }): Promise<void> {
  return fileOps.writeFileAtomic(path, `${path}.${randomBytes(6).toString('hex')}.tmp`, data, options.durable);
}
