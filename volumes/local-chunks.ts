/**
 * The local content-addressed chunk store: frozen chunks as files named by their SHA-256,
 * `ROOT/ab/cdef...` (first two hex digits as a fan-out directory). Files are written to a
 * temporary name, fsync'ed and renamed, so a chunk file either is complete or does not exist.
 * Chunks fetched from a backing store live here too (chunk-cache.ts bounds those).
 *
 * Reads keep an LRU of open descriptors (a chunk file is opened once, not per read) and use the
 * RWF_NOWAIT fast path: a cached chunk costs one syscall. A descriptor is pinned while a read
 * uses it, so eviction never closes one under a reader.
 */
import { randomBytes } from 'node:crypto';
import { close as closeFd, open as openFd, read as readFd } from 'node:fs';
import { mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import { fileOps } from '../common/fileops.js';
import { join } from 'node:path';
import { IoError } from '../common/errors.js';
import { digestOf, type Digest } from './types.js';

/** Chunk files kept open at once. */
const MAX_OPEN = 256;

interface OpenChunk {
  fd: number;
  users: number;
  /** Removed while in use: the last reader closes it. */
  doomed?: boolean;
}

export class LocalChunks {
  /** Open chunk files in least- to most-recently-used order. */
  private readonly fds = new Map<Digest, OpenChunk>();

  constructor(readonly root: string) {}

  pathOf(digest: Digest): string {
    const hex = digest.slice('sha256:'.length);
    return join(this.root, hex.slice(0, 2), hex.slice(2));
  }

  async has(digest: Digest): Promise<boolean> {
    if (this.fds.has(digest)) return true; // open, so present
    return stat(this.pathOf(digest)).then(
      () => true,
      () => false,
    );
  }

  /** Stores `data` under its digest (idempotent) and returns the digest. */
  async put(data: Buffer): Promise<Digest> {
    const digest = digestOf(data);
    await this.putVerified(digest, data);
    return digest;
  }

  /** Stores data already verified to match `digest`. */
  async putVerified(digest: Digest, data: Buffer): Promise<void> {
    const path = this.pathOf(digest);
    if (await this.has(digest)) return;
    await mkdir(join(path, '..'), { recursive: true });
    const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
    const f = await open(tmp, 'wx');
    try {
      await f.writeFile(data);
      await f.datasync();
    } finally {
      await f.close();
    }
    await rename(tmp, path);
  }

  /**
   * Reads `length` bytes at `offset` within a chunk into `into` at `at`; false if the chunk is
   * not stored here. What is read is not re-verified (it was verified when stored).
   */
  async read(digest: Digest, offset: number, length: number, into: Buffer, at: number): Promise<boolean> {
    const f = await this.acquire(digest);
    if (!f) return false;
    try {
      let done = fileOps.preadNoWait(f.fd, into, at, length, offset);
      if (done < 0) done = 0;
      while (done < length) {
        const n = await new Promise<number>((resolve, reject) =>
          readFd(f.fd, into, at + done, length - done, offset + done, (err, k) => (err ? reject(err) : resolve(k))),
        );
        if (n === 0) throw new IoError(`chunk ${digest} is truncated`, { context: { digest, offset, length, done } });
        done += n;
      }
      return true;
    } finally {
      f.users--;
      if (f.doomed && f.users === 0) closeFd(f.fd, () => undefined);
      this.trim();
    }
  }

  /** Closes every cached descriptor (none may be in use). */
  close(): void {
    for (const [digest, f] of this.fds) {
      closeFd(f.fd, () => undefined);
      this.fds.delete(digest);
    }
  }

  private async acquire(digest: Digest): Promise<OpenChunk | undefined> {
    let f = this.fds.get(digest);
    if (f) {
      this.fds.delete(digest); // most recently used goes last
    } else {
      const fd = await new Promise<number | undefined>((resolve, reject) =>
        openFd(this.pathOf(digest), 'r', (err, fd) =>
          err ? ((err as NodeJS.ErrnoException).code === 'ENOENT' ? resolve(undefined) : reject(err)) : resolve(fd),
        ),
      );
      if (fd === undefined) return undefined;
      f = this.fds.get(digest); // another reader may have opened it meanwhile
      if (f) closeFd(fd, () => undefined);
      else f = { fd, users: 0 };
      this.fds.delete(digest);
    }
    this.fds.set(digest, f);
    f.users++;
    return f;
  }

  /** Closes idle descriptors beyond the limit, least recently used first. */
  private trim(): void {
    if (this.fds.size <= MAX_OPEN) return;
    for (const [digest, f] of this.fds) {
      if (this.fds.size <= MAX_OPEN) return;
      if (f.users > 0) continue;
      this.fds.delete(digest);
      closeFd(f.fd, () => undefined);
    }
  }

  /** Deletes a chunk file; a reader that has it open finishes its read (Unix semantics). */
  async remove(digest: Digest): Promise<void> {
    const f = this.fds.get(digest);
    if (f) {
      this.fds.delete(digest);
      if (f.users === 0) closeFd(f.fd, () => undefined);
      else f.doomed = true;
    }
    await unlink(this.pathOf(digest)).catch(() => undefined);
  }
}
