/**
 * The calls this process makes on its own layer mounts (a changes walk, a container's init files,
 * a layer tar's entries) go through one gate that leaves libuv's threadpool threads free for the
 * NBD server.
 *
 * Why: such a call runs on a threadpool thread and can wait there for the layer's device (a
 * directory block or inode table not fetched yet, or a write held back until writeback gets
 * through). That device's NBD server is this same process, and its own file I/O also needs a
 * threadpool thread: a chunk read from a dir store, a cached chunk read that misses the page
 * cache, a write that went slow. With every thread waiting on a mount, nothing serves the mounts,
 * and the process hangs for good. Measured: twelve changes walks of a lazily opened layer at once
 * hung (test/nbd/mount-calls.test.ts, before this gate), and so did a container's create in CI
 * when its init files were copied a dozen calls at a time.
 *
 * So at most `threadpool size - RESERVED` calls on mounts run at once (2 with Node's default of 4
 * threads; more with UV_THREADPOOL_SIZE); the rest wait here, in order. A call the gate runs never
 * makes another gated call, so the gate cannot wait on itself. The NBD server's calls are not
 * gated: they wait on nothing in this process.
 */
import pLimit from 'p-limit';
import { chmod, copyFile, lchown, lstat, lutimes, mkdir, readdir, readlink, rm, symlink } from 'node:fs/promises';
import type { Stats } from 'node:fs';

/** Threads kept for the NBD server: one is enough for it to make progress; one more for the rest. */
export const RESERVED_THREADS = 2;

/**
 * libuv's threadpool size as libuv reads it when the pool starts: UV_THREADPOOL_SIZE (clamped to
 * 1-1024), else 4.
 */
export function threadpoolSize(env: NodeJS.ProcessEnv = process.env): number {
  const n = Number.parseInt(env.UV_THREADPOOL_SIZE ?? '', 10);
  if (!Number.isFinite(n)) return 4;
  return Math.min(1024, Math.max(1, n));
}

/** How many calls on mounts may run at once on a pool of `size` threads (at least one). */
export function mountCallLimit(size: number): number {
  return Math.max(1, size - RESERVED_THREADS);
}

const gate = pLimit(mountCallLimit(threadpoolSize()));

/** Runs `fn` (one threadpool call on a layer mount, or a sequence of them one at a time) through the gate. */
export function onMount<T>(fn: () => Promise<T>): Promise<T> {
  return gate(fn);
}

/** Calls running and waiting now (for tests and metrics). */
export function mountCallCounts(): { active: number; waiting: number; limit: number } {
  return { active: gate.activeCount, waiting: gate.pendingCount, limit: gate.concurrency };
}

/** The node:fs/promises calls made on mounts, each through the gate. */
export const mountFs = {
  chmod: (path: string, mode: number): Promise<void> => gate(() => chmod(path, mode)),
  copyFile: (from: string, to: string, flags: number): Promise<void> => gate(() => copyFile(from, to, flags)),
  lchown: (path: string, uid: number, gid: number): Promise<void> => gate(() => lchown(path, uid, gid)),
  lstat: (path: string): Promise<Stats> => gate(() => lstat(path)),
  lutimes: (path: string, atime: Date, mtime: Date): Promise<void> => gate(() => lutimes(path, atime, mtime)),
  mkdir: (path: string): Promise<void> => gate(async () => void (await mkdir(path))),
  readdir: (path: string): Promise<string[]> => gate(() => readdir(path)),
  readlink: (path: string): Promise<string> => gate(() => readlink(path)),
  rm: (path: string, options: { recursive: boolean; force: boolean }): Promise<void> => gate(() => rm(path, options)),
  symlink: (target: string, path: string): Promise<void> => gate(() => symlink(target, path)),
};
