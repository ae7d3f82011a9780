/**
 * The local content-addressed chunk store: frozen chunks as files named by their SHA-256,
 * `ROOT/ab/cdef...` (first two hex digits as a fan-out directory). Files are written to a
 * temporary name, fsync'ed and renamed, so a chunk file either is complete or does not exist.
 * Later (issue 3, continued) this is also the cache of chunks fetched from a backing store.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { IoError } from '../common/errors.js';
import { digestOf, type Digest } from './types.js';

export class LocalChunks {
  constructor(readonly root: string) {}

  pathOf(digest: Digest): string {
    const hex = digest.slice('sha256:'.length);
    return join(this.root, hex.slice(0, 2), hex.slice(2));
  }

  async has(digest: Digest): Promise<boolean> {
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
    let f;
    try {
      f = await open(this.pathOf(digest), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
    try {
      const { bytesRead } = await f.read(into, at, length, offset);
      if (bytesRead !== length) {
        throw new IoError(`chunk ${digest} is truncated`, { context: { digest, offset, length, bytesRead } });
      }
      return true;
    } finally {
      await f.close();
    }
  }

  async remove(digest: Digest): Promise<void> {
    await unlink(this.pathOf(digest)).catch(() => undefined);
  }
}
