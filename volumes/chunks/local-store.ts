/**
 * Where chunks lie on this host, for the chunk store (chunk-store.ts): chunks a staged freeze
 * made in the pack it froze them from (the staged file, kept: cache-segments.ts adopt); other
 * chunks made here (freeze) as files named by their SHA-256, `ROOT/ab/cdef...` (first two hex
 * digits as a fan-out directory), written to a temporary name and renamed, and made durable by
 * one sync() (syncfs) before anything refers to them, so a chunk file either is complete or does not exist; chunks
 * fetched from a backing store appended to segment files (cache-segments.ts), where reads look
 * first. eviction.ts bounds both kinds of evictable chunk.
 *
 * Reads keep an LRU of open descriptors (a chunk file is opened once, not per read) and use the
 * RWF_NOWAIT fast path: a cached chunk costs one syscall. A descriptor is pinned while a read
 * uses it, so eviction never closes one under a reader. Chunk files are opened synchronously:
 * opening a local file whose directory is cached takes microseconds, while a libuv threadpool
 * round trip (contended by readahead and fetches) stalled sequential reads.
 * Presence is remembered once known, so readahead of local chunks costs no syscall.
 * `descriptor` lends a chunk's open file and position to a zero-copy reply for the rest of the
 * current task.
 */
import { closeSync, fstatSync, openSync, readFileSync, statSync } from 'node:fs';
import { mkdir, rename, unlink } from 'node:fs/promises';
import { fileOps, writeFileAtomically } from '../../common/fileops.js';
import { readFully, type NoWaitState } from '../../common/file-io.js';
import { join } from 'node:path';
import type { StoredChunk } from '../../stores/backing-store.js';
import type { CacheSegments } from './cache-segments.js';
import { hexOf, type Digest } from '../../common/digests.js';

/**
 * Chunk files kept open at once: a quarter of the process's descriptor limit, between 64 and
 * 4096 (a sequential pass over a large volume reopens every chunk when this is too small, at
 * a cost in warm read throughput: docs/BENCHMARKS.md, "Measurements behind the code").
 */
const MAX_OPEN = Math.min(4096, Math.max(64, Math.floor(openFileLimit() / 4)));

function openFileLimit(): number {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : 1024;
  } catch {
    return 1024;
  }
}

interface OpenChunk {
  fd: number;
  /** File length when opened: a chunk cut short by power loss is shorter than its chunk. */
  size: number;
  users: number;
  /** Removed while in use: the last reader closes it. */
  doomed?: boolean;
}

export class LocalStore {
  /** Open chunk files in least- to most-recently-used order. */
  private readonly fds = new Map<Digest, OpenChunk>();
  /** Chunks known to be stored here (a cache of stat results, kept by put and remove). */
  private readonly present = new Set<Digest>();
  /** Fan-out directories known to exist. */
  private readonly dirs = new Set<string>();
  private readonly nowait: NoWaitState = { read: true };

  constructor(
    readonly root: string,
    /** Where chunks the backing store also has are kept; without it, in files of their own. */
    readonly segments?: CacheSegments,
    /** Packs of chunks made by staged freezes; without them, such chunks are files too. */
    readonly packs?: CacheSegments,
  ) {}

  pathOf(digest: Digest): string {
    const hex = hexOf(digest);
    return join(this.root, hex.slice(0, 2), hex.slice(2));
  }

  /** Whether the chunk is stored here: from memory once known, else one cheap stat (no throw). */
  has(digest: Digest): boolean {
    if (this.present.has(digest) || this.segments?.has(digest) || this.packs?.has(digest)) return true;
    const found = statSync(this.pathOf(digest), { throwIfNoEntry: false }) !== undefined;
    if (found) this.present.add(digest);
    return found;
  }

  /**
   * Stores a chunk made here whose digest the caller computed from `data` just now, without
   * syncing it: many at once, then one sync() before anything refers to them (an fdatasync per
   * chunk was most of what a freeze cost).
   */
  putUnsynced(digest: Digest, data: Buffer): Promise<void> {
    return this.putFile(digest, data, { durable: false });
  }

  /** Makes every chunk stored so far durable (syncfs of the file system holding them). */
  sync(): Promise<void> {
    return fileOps.syncFs(this.root);
  }

  /**
   * Stores chunks fetched from the backing store, already verified: appended to the cache
   * segments (one write per run), or without them as files of their own, not synced either way
   * (the store has them; a file cut short by power loss reads as missing and is fetched again).
   */
  async putFetched(chunks: readonly StoredChunk[]): Promise<void> {
    // No stat for a file of its own: a fetched chunk was missing a moment ago, and a copy in
    // both places would only cost space until eviction removes both.
    if (this.segments) return this.segments.putAll(chunks.filter((c) => !this.present.has(c.digest)));
    await Promise.all(chunks.map((c) => this.putFile(c.digest, c.data, { durable: false })));
  }

  /** Stores data verified to match `digest` as a file of its own (synced if `durable`). */
  private async putFile(digest: Digest, data: Buffer, options: { durable: boolean }): Promise<void> {
    if (this.has(digest)) return;
    const path = this.pathOf(digest);
    const dir = join(path, '..');
    if (!this.dirs.has(dir)) {
      await mkdir(dir, { recursive: true });
      this.dirs.add(dir);
    }
    // One threadpool job (create, write, sync, close, rename) instead of four fs round trips.
    await writeFileAtomically(path, data, options);
    this.present.add(digest);
  }

  /**
   * Reads `length` bytes at `offset` within a chunk into `into` at `at`; false if the chunk is
   * not stored here. What is read is not re-verified (it was verified when stored).
   */
  async read(digest: Digest, offset: number, length: number, into: Buffer, at: number): Promise<boolean> {
    if (this.segments?.has(digest)) {
      if (await this.segments.read(digest, offset, length, into, at)) return true;
      this.segments.remove(digest); // its segment was cut short: fetch it again
      return false;
    }
    // A pack's chunk that reads short is left recorded: it may be the only copy.
    if (this.packs?.has(digest)) return this.packs.read(digest, offset, length, into, at);
    const f = this.acquire(digest);
    if (!f) return false;
    try {
      if ((await readFully(f.fd, into, at, length, offset, this.nowait)) < length) {
        // Short: a cached chunk cut by power loss (never fsync'ed). Set it aside (never delete:
        // it might be the only copy) and report it missing, so it is fetched again.
        await this.quarantine(digest);
        return false;
      }
      return true;
    } finally {
      this.release(f);
    }
  }

  /**
   * The open file of a stored chunk at least `length` bytes long and where in it the chunk
   * starts, for a zero-copy reply, or undefined (not here, or short: read() then sets it
   * aside). It stays valid until the current task returns to the event loop.
   */
  descriptor(digest: Digest, length: number): { fd: number; position: number } | undefined {
    const slice = this.segments?.lend(digest) ?? this.packs?.lend(digest);
    if (slice) return slice.length >= length ? { fd: slice.fd, position: slice.offset } : undefined;
    const f = this.acquire(digest);
    if (!f) return undefined;
    queueMicrotask(() => this.release(f));
    return f.size >= length ? { fd: f.fd, position: 0 } : undefined;
  }

  private async quarantine(digest: Digest): Promise<void> {
    this.forget(digest);
    await rename(this.pathOf(digest), `${this.pathOf(digest)}.short`).catch(() => undefined);
  }

  /** Drops what is known of a chunk: its presence, its descriptor (closed now, or by its last reader). */
  private forget(digest: Digest): void {
    this.present.delete(digest);
    const f = this.fds.get(digest);
    if (!f) return;
    this.fds.delete(digest);
    if (f.users === 0) closeSync(f.fd);
    else f.doomed = true;
  }

  /** Records the segments' chunks and closes every descriptor (none may be in use). */
  async close(): Promise<void> {
    await this.segments?.close();
    await this.packs?.close();
    for (const [digest, f] of this.fds) {
      closeSync(f.fd);
      this.fds.delete(digest);
    }
  }

  private acquire(digest: Digest): OpenChunk | undefined {
    let f = this.fds.get(digest);
    if (f) {
      this.fds.delete(digest); // most recently used goes last
    } else {
      // A missing chunk (every first read of a cold volume) costs a stat, not a thrown ENOENT:
      // the exception cost more than the syscall.
      if (!this.has(digest)) return undefined;
      let fd: number;
      try {
        fd = openSync(this.pathOf(digest), 'r');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        this.present.delete(digest);
        return undefined;
      }
      this.present.add(digest);
      f = { fd, size: fstatSync(fd).size, users: 0 };
    }
    this.fds.set(digest, f);
    f.users++;
    return f;
  }

  /** Ends one use of a descriptor taken with acquire. */
  private release(f: OpenChunk): void {
    f.users--;
    if (f.doomed && f.users === 0) closeSync(f.fd);
    this.trim();
  }

  /** Closes idle descriptors beyond the limit, least recently used first. */
  private trim(): void {
    if (this.fds.size <= MAX_OPEN) return;
    for (const [digest, f] of this.fds) {
      if (this.fds.size <= MAX_OPEN) return;
      if (f.users > 0) continue;
      this.fds.delete(digest);
      closeSync(f.fd);
    }
  }

  /**
   * Deletes a chunk, from the segments, a pack or as a file; a reader using it finishes its read
   * (the segments punch it out afterwards; a deleted file stays readable through an open
   * descriptor).
   */
  async remove(digest: Digest): Promise<void> {
    this.segments?.remove(digest);
    this.packs?.remove(digest);
    this.forget(digest);
    await unlink(this.pathOf(digest)).catch(() => undefined);
  }
}
