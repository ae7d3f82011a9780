/**
 * File I/O shared by the file backend, the local chunk store and the cache segments. Reads go
 * first to the page cache without blocking (preadv2 RWF_NOWAIT, on the event loop), the rest
 * through the threadpool. The callback fs APIs are wrapped by hand: measurably cheaper per call
 * than FileHandle methods.
 */
import { fdatasync, read, write, writev } from 'node:fs';
import { fileOps } from './fileops.js';

/** Whether RWF_NOWAIT is worth trying on a file; cleared when the kernel says it is unsupported. */
export interface NoWaitState {
  read: boolean;
}

function readAsync(fd: number, buf: Buffer, at: number, n: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => read(fd, buf, at, n, pos, (err, k) => (err ? reject(err) : resolve(k))));
}

/** Reads `length` bytes at `position` into `buf` at `at`; returns fewer only at end of file. */
export async function readFully(
  fd: number,
  buf: Buffer,
  at: number,
  length: number,
  position: number,
  nowait: NoWaitState,
): Promise<number> {
  let done = 0;
  if (nowait.read) {
    const n = fileOps.preadNoWait(fd, buf, at, length, position);
    if (n === -2) nowait.read = false;
    else if (n > 0) done = n;
  }
  while (done < length) {
    const n = await readAsync(fd, buf, at + done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

function writeAsync(fd: number, buf: Buffer, at: number, n: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => write(fd, buf, at, n, pos, (err, k) => (err ? reject(err) : resolve(k))));
}

/** Writes `length` bytes of `buf` from `at` to `position`, through the threadpool; a short write goes on. */
export async function writeFully(fd: number, buf: Buffer, at: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) done += await writeAsync(fd, buf, at + done, length - done, position + done);
}

/**
 * Writes `buffers` back to back from `position` with one writev through the threadpool (one job
 * for many chunks); what a short write leaves goes on with writeFully.
 */
export async function writevFully(fd: number, buffers: readonly Buffer[], position: number): Promise<void> {
  const done = await new Promise<number>((resolve, reject) =>
    writev(fd, buffers as Buffer[], position, (err, k) => (err ? reject(err) : resolve(k))),
  );
  let skip = done;
  let at = position;
  for (const b of buffers) {
    const from = Math.min(skip, b.length);
    skip -= from;
    if (from < b.length) await writeFully(fd, b, from, b.length - from, at + from);
    at += b.length;
  }
}

export function fdatasyncAsync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}
