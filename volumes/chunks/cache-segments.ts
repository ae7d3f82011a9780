/**
 * Where chunks fetched from the backing store are kept: appended to segment files
 * (`DIR/00000001.seg`, up to SEGMENT_BYTES each) rather than a file per chunk, as nydus keeps
 * its blob cache. Creating, writing and renaming a file per 128 KiB chunk cost ten times the
 * write alone on ext4 (far more right after many deletions): most of the file system work of
 * a cold read (docs/BENCHMARKS.md, "Measurements behind the code").
 *
 * Every chunk here is also in the backing store, so nothing is synced on the read path. A chunk
 * is readable as soon as its write completes (the index in memory); its place reaches the
 * metadata only after its segment was fdatasync'ed (every SYNC_INTERVAL_MS, when a segment
 * fills, and at close). So after a crash the metadata never points at bytes that did not reach
 * the disk: chunks not yet recorded are fetched again, and open() punches their space out.
 *
 * Eviction punches the chunk's range out of its segment, freeing its blocks; a segment that
 * loses its last chunk is deleted. A recorded chunk is first forgotten by the metadata, at the
 * next sync and with the other evictions since (a synced commit per eviction would block the
 * event loop each time), so the metadata never points at a hole. A chunk is pinned while a read
 * uses it, and punched only when the last reader is done.
 *
 * The same structure holds packs (adopt): a staged freeze's file taken in whole as a segment,
 * its new chunks where the freeze found them, so hundreds of megabytes made by an apply are not
 * copied into chunk files. Those are made here, so synced and recorded before anything refers
 * to them; the chunk store keeps them in an instance of their own (DIR/../packs, its own
 * catalog) that takes no appends, and evicts them only once they are published.
 *
 * One process owns the segments (an flock on DIR/lock, released when it dies): another one
 * opening the same state root (a CLI command beside a running server) would otherwise reclaim
 * chunks the owner has not recorded yet, or punch out chunks the owner is serving.
 */
import { closeSync, fstatSync, fsyncSync, ftruncateSync, openSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileOps } from '../../common/fileops.js';
import { fdatasyncAsync, readFully, writevFully, type NoWaitState } from '../../common/file-io.js';
import { silentLogger, type Logger } from '../../common/logger.js';
import type { StoredChunk } from '../../stores/backing-store.js';
import type { Digest } from '../../common/digests.js';

/** Segment size: large enough that files are few, small enough that an emptied one goes soon. */
export const SEGMENT_BYTES = 64 * 1024 * 1024;
/** How long a fetched chunk's place may stay unrecorded (fetched again after a crash). */
const SYNC_INTERVAL_MS = 5_000;

/** Where a fetched chunk lies in the segments. */
export interface SegmentChunk {
  digest: Digest;
  segment: number;
  offset: number;
  length: number;
}

/** A chunk a pack keeps where it lies in the file adopted (cache-segments' adopt). */
export type PackChunk = Omit<SegmentChunk, 'segment'>;

/** Where the segments' places are recorded (the volume metadata). */
export interface SegmentCatalog {
  segmentChunks(): SegmentChunk[];
  recordSegmentChunks(entries: readonly SegmentChunk[]): void;
  forgetSegmentChunks(digests: readonly Digest[]): void;
}

interface Segment {
  n: number;
  fd: number;
  /** Bytes appended so far (the next chunk's offset). */
  end: number;
  /** Chunks stored in it. */
  live: number;
  /** Chunks written but not yet recorded (their segment not synced since). */
  unrecorded: Placed[];
}

interface Placed extends SegmentChunk {
  fd: number;
  seg: Segment;
  /** Reads using it now. */
  users: number;
  /** Its place is in the metadata. */
  recorded: boolean;
  /** Evicted and forgotten by the metadata: punched once no read uses it. */
  doomed: boolean;
}

/** A chunk's bytes in an open segment file, pinned until released. */
export interface SegmentSlice {
  readonly fd: number;
  readonly offset: number;
  readonly length: number;
}

function segmentName(n: number): string {
  return `${String(n).padStart(8, '0')}.seg`;
}

export class CacheSegments {
  private readonly chunks = new Map<Digest, Placed>();
  private readonly segments = new Map<number, Segment>();
  /** The segment chunks are appended to (undefined until the first append). */
  private active: Segment | undefined;
  private nextSegment: number;
  private syncing: Promise<void> = Promise.resolve();
  private readonly timer: NodeJS.Timeout;
  private readonly nowait: NoWaitState = { read: true };
  private punchWarned = false;
  /** Evicted chunks the metadata still records: forgotten, then punched, at the next sync. */
  private forgotten: Placed[] = [];

  private constructor(
    readonly dir: string,
    private readonly catalog: SegmentCatalog,
    private readonly log: Logger,
    private readonly segmentBytes: number,
    /** The open lock file: held for as long as this instance owns the segments. */
    private readonly lockFd: number,
  ) {
    this.nextSegment = 1;
    this.timer = setInterval(() => void this.sync(), SYNC_INTERVAL_MS).unref();
  }

  /**
   * Opens the segments the catalog knows; deletes segment files it does not know and punches
   * out the ranges no recorded chunk occupies (chunks written before a crash, never recorded).
   * Undefined when another live process owns them.
   */
  static async open(
    dir: string,
    catalog: SegmentCatalog,
    options: { log?: Logger; segmentBytes?: number } = {},
  ): Promise<CacheSegments | undefined> {
    await mkdir(dir, { recursive: true });
    const lockFd = openSync(join(dir, 'lock'), 'a');
    if (!fileOps.lockExclusive(lockFd)) {
      closeSync(lockFd);
      return undefined;
    }
    const log = options.log ?? silentLogger();
    const s = new CacheSegments(dir, catalog, log, options.segmentBytes ?? SEGMENT_BYTES, lockFd);
    const bySegment = new Map<number, SegmentChunk[]>();
    const stale: Digest[] = [];
    for (const c of catalog.segmentChunks()) {
      let list = bySegment.get(c.segment);
      if (!list) bySegment.set(c.segment, (list = []));
      list.push(c);
    }
    for (const name of readdirSync(dir)) {
      const m = /^(\d{8})\.seg$/.exec(name);
      if (!m) continue;
      const n = Number(m[1]);
      if (!bySegment.has(n)) {
        rmSync(join(dir, name), { force: true }); // written before a crash, nothing in it recorded
        continue;
      }
      const fd = openSync(join(dir, name), 'r+');
      const size = fstatSync(fd).size;
      const seg: Segment = { n, fd, end: size, live: 0, unrecorded: [] };
      s.segments.set(n, seg);
      let covered = 0;
      for (const c of bySegment.get(n)!.sort((a, b) => a.offset - b.offset)) {
        if (c.offset + c.length > size) {
          stale.push(c.digest); // cannot happen after a sync; never trust it
          continue;
        }
        if (c.offset > covered) s.free(fd, covered, c.offset - covered);
        covered = Math.max(covered, c.offset + c.length);
        s.chunks.set(c.digest, { ...c, fd, seg, users: 0, recorded: true, doomed: false });
        seg.live++;
      }
      if (size > covered) s.free(fd, covered, size - covered);
      s.nextSegment = Math.max(s.nextSegment, n + 1);
    }
    for (const [n, list] of bySegment) {
      if (!s.segments.has(n)) for (const c of list) stale.push(c.digest); // file gone
    }
    catalog.forgetSegmentChunks(stale);
    for (const seg of s.segments.values()) s.dropIfEmpty(seg);
    return s;
  }

  has(digest: Digest): boolean {
    return this.chunks.has(digest);
  }

  /** Every chunk held, with its length. */
  *entries(): IterableIterator<{ digest: Digest; length: number }> {
    for (const { digest, length } of this.chunks.values()) yield { digest, length };
  }

  /** Chunks and segment files held. */
  get counts(): { chunks: number; segments: number } {
    return { chunks: this.chunks.size, segments: this.segments.size };
  }

  /** Appends a chunk (already verified); readable once this resolves. */
  put(digest: Digest, data: Buffer): Promise<void> {
    return this.putAll([{ digest, data }]);
  }

  /**
   * Appends chunks (already verified), each run that lands in one segment with one writev:
   * a write per chunk cost a threadpool job each, and concurrent writes to one file contend for
   * its inode lock (the threadpool spun on it in a cold read). Readable once this
   * resolves; on a failed write its run is given up (and the error thrown), the others kept.
   */
  async putAll(chunks: readonly StoredChunk[]): Promise<void> {
    const runs: { seg: Segment; start: number; placed: Placed[]; buffers: Buffer[] }[] = [];
    const taking = new Set<Digest>();
    for (const { digest, data } of chunks) {
      if (this.chunks.has(digest) || taking.has(digest)) continue;
      taking.add(digest);
      const seg = this.segmentFor(data.length);
      const offset = seg.end;
      seg.end += data.length; // reserved now: appends run concurrently
      seg.live++; // the segment is not deleted while this write runs
      let run = runs[runs.length - 1];
      if (run?.seg !== seg) runs.push((run = { seg, start: offset, placed: [], buffers: [] }));
      run.placed.push({
        digest,
        segment: seg.n,
        offset,
        length: data.length,
        fd: seg.fd,
        seg,
        users: 0,
        recorded: false,
        doomed: false,
      });
      run.buffers.push(data);
    }
    const failures: unknown[] = [];
    await Promise.all(
      runs.map(async (run) => {
        try {
          await writevFully(run.seg.fd, run.buffers, run.start);
        } catch (err) {
          for (const p of run.placed) this.punch(p);
          failures.push(err);
          return;
        }
        for (const p of run.placed) {
          if (this.chunks.has(p.digest)) {
            this.punch(p); // stored meanwhile by another put
            continue;
          }
          this.chunks.set(p.digest, p);
          run.seg.unrecorded.push(p);
        }
      }),
    );
    if (failures.length > 0) throw failures[0];
  }

  /**
   * Takes the file at `path` (on this file system; it is moved) in as a segment of its own,
   * keeping the chunks listed, whose digests the caller computed from the file's bytes at
   * those places: a staged freeze's pack, so its new chunks are not written a second time.
   * Ranges no kept chunk occupies are punched out and the file cut after the last one; the
   * file is synced, moved in (its directory synced too) and its chunks recorded before this
   * resolves, so a map committed afterwards never points at bytes a crash could lose. A chunk
   * held here already is not kept twice. Resolves with the chunks kept; on a failure the file
   * is left where it was, or removed once moved.
   */
  async adopt(path: string, chunks: readonly PackChunk[]): Promise<number> {
    const keep: PackChunk[] = [];
    const taking = new Set<Digest>();
    for (const c of chunks) {
      if (this.chunks.has(c.digest) || taking.has(c.digest)) continue;
      taking.add(c.digest);
      keep.push(c);
    }
    keep.sort((a, b) => a.offset - b.offset);
    const n = this.nextSegment++;
    const target = join(this.dir, segmentName(n));
    const fd = openSync(path, 'r+');
    let moved = false;
    try {
      let covered = 0;
      for (const c of keep) {
        if (c.offset > covered) this.free(fd, covered, c.offset - covered);
        covered = c.offset + c.length;
      }
      ftruncateSync(fd, covered);
      await fdatasyncAsync(fd);
      renameSync(path, target);
      moved = true;
      syncDirectory(this.dir);
      const seg: Segment = { n, fd, end: covered, live: 0, unrecorded: [] };
      const placed = keep.map((c): Placed => {
        return { ...c, segment: n, fd, seg, users: 0, recorded: true, doomed: false };
      });
      this.catalog.recordSegmentChunks(
        placed.map(({ digest, segment, offset, length }) => ({ digest, segment, offset, length })),
      );
      this.segments.set(n, seg);
      for (const p of placed) this.chunks.set(p.digest, p);
      seg.live = placed.length;
      this.dropIfEmpty(seg);
      return placed.length;
    } catch (err) {
      if (!this.segments.has(n)) {
        closeSync(fd);
        if (moved) rmSync(target, { force: true });
      }
      throw err;
    }
  }

  /** Pins a chunk's bytes for a read; pair with release(). */
  acquire(digest: Digest): SegmentSlice | undefined {
    const p = this.chunks.get(digest);
    if (p) p.users++;
    return p;
  }

  release(slice: SegmentSlice): void {
    const p = slice as Placed; // acquire hands out the records themselves
    if (--p.users === 0 && p.doomed) this.punch(p);
  }

  /** Reads `length` bytes at `offset` within a chunk; false if it is not here (or not that long). */
  async read(digest: Digest, offset: number, length: number, into: Buffer, at: number): Promise<boolean> {
    const slice = this.acquire(digest);
    if (!slice) return false;
    if (offset + length > slice.length) {
      this.release(slice); // never the next chunk's bytes
      return false;
    }
    try {
      return (await readFully(slice.fd, into, at, length, slice.offset + offset, this.nowait)) === length;
    } finally {
      this.release(slice);
    }
  }

  /**
   * A chunk's bytes for a zero-copy reply: valid until the current task returns to the event
   * loop (an eviction meanwhile waits until then).
   */
  lend(digest: Digest): SegmentSlice | undefined {
    const slice = this.acquire(digest);
    if (slice) queueMicrotask(() => this.release(slice));
    return slice;
  }

  /**
   * Evicts a chunk: gone from here now; its range is punched out once the metadata has
   * forgotten it (at the next sync, if it was recorded) and no read uses it.
   */
  remove(digest: Digest): void {
    const p = this.chunks.get(digest);
    if (!p) return;
    this.chunks.delete(digest);
    if (p.recorded) this.forgotten.push(p);
    else this.doom(p);
  }

  /** Punches a chunk out now, or when its last reader is done. */
  private doom(p: Placed): void {
    p.doomed = true;
    if (p.users === 0) this.punch(p);
  }

  /**
   * Forgets evicted chunks in the metadata and punches them out; syncs segments with
   * unrecorded chunks, then records those chunks (if still here). Never rejects: what could
   * not be recorded stays unrecorded (at worst, fetched again after a crash).
   */
  sync(): Promise<void> {
    this.syncing = this.syncing.then(async () => {
      const forgotten = this.forgotten.splice(0);
      try {
        this.catalog.forgetSegmentChunks(forgotten.map((p) => p.digest));
        for (const p of forgotten) this.doom(p);
      } catch (err) {
        this.forgotten.unshift(...forgotten); // their space stays taken until a sync succeeds
        this.log.warn({ err, chunks: forgotten.length }, 'evicted cache chunks not forgotten yet');
      }
      for (const seg of [...this.segments.values()]) {
        if (seg.unrecorded.length === 0) continue;
        const batch = seg.unrecorded.splice(0);
        try {
          await fdatasyncAsync(seg.fd);
          const live = batch.filter((p) => this.chunks.get(p.digest) === p);
          this.catalog.recordSegmentChunks(
            live.map(({ digest, segment, offset, length }) => ({ digest, segment, offset, length })),
          );
          for (const p of live) p.recorded = true;
        } catch (err) {
          this.log.warn(
            { err, segment: seg.n, chunks: batch.length },
            'cache segment not synced: its chunks stay unrecorded',
          );
        }
      }
    });
    return this.syncing;
  }

  /** Records what is written, then closes every segment. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.sync();
    for (const seg of this.segments.values()) closeSync(seg.fd);
    closeSync(this.lockFd); // releases the lock
    this.segments.clear();
    this.chunks.clear();
    this.active = undefined;
  }

  /** The active segment if `length` more bytes fit, else a new one (the full one is synced). */
  private segmentFor(length: number): Segment {
    const full = this.active && this.active.end + length > this.segmentBytes && this.active.end > 0;
    if (this.active && !full) return this.active;
    if (this.active) {
      const old = this.active;
      void this.sync().then(() => this.dropIfEmpty(old));
    }
    const n = this.nextSegment++;
    const fd = openSync(join(this.dir, segmentName(n)), 'wx+');
    this.active = { n, fd, end: 0, live: 0, unrecorded: [] };
    this.segments.set(n, this.active);
    return this.active;
  }

  private punch(p: Placed): void {
    const seg = p.seg;
    if (this.segments.get(seg.n) !== seg) return; // closed
    this.free(seg.fd, p.offset, p.length);
    seg.live--;
    this.dropIfEmpty(seg);
  }

  /**
   * Gives a range's blocks back to the file system. Where it cannot punch holes, the space is
   * only reclaimed when the whole segment goes: worth a warning, not a failure.
   */
  private free(fd: number, offset: number, length: number): void {
    try {
      fileOps.punchHole(fd, offset, length);
    } catch (err) {
      if (!this.punchWarned)
        this.log.warn(
          { err, dir: this.dir },
          'cannot punch holes in cache segments: evicted chunks free their space only with their segment',
        );
      this.punchWarned = true;
    }
  }

  /** Deletes a segment that holds no chunk and takes no more. */
  private dropIfEmpty(seg: Segment): void {
    if (seg.live > 0 || seg === this.active || this.segments.get(seg.n) !== seg) return;
    this.segments.delete(seg.n);
    closeSync(seg.fd);
    rmSync(join(this.dir, segmentName(seg.n)), { force: true }); // already gone: just as well
  }
}

/** Makes a rename into `dir` durable. */
function syncDirectory(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
