/**
 * A layer volume as a block backend. A volume is a virtual device cut into fixed-size chunks;
 * each chunk is, in order of lookup:
 *   1. an override of this (writable) volume: 'data' in its sparse data file at the chunk's own
 *      offset, or 'zero';
 *   2. a chunk of its frozen base, by digest, in the local content-addressed store;
 *   3. otherwise a hole: zeroes.
 * Writes are copy-on-write at chunk granularity: the first partial write to a chunk copies the
 * base's chunk into the data file, serialised per chunk. Overrides reach the metadata only at
 * FLUSH/FUA, after the data file is synced. Knows nothing of NBD framing: it is only a Backend.
 */
import { NotSupportedError, ReadOnlyError } from '../common/errors.js';
import { KeyedLock } from '../common/keyed-lock.js';
import { blockPieces, vectorLength, vectorSlice, type BlockPiece } from '../block/ranges.js';
import type { Backend, BlockSizes, ByteCount, Extent, Slice, WriteFlags, ZeroFlags } from '../block/backend.js';
import type { FileBackend } from '../block/backends/file.js';
import type { ChunkStore } from './chunks/chunk-store.js';
import type { FetchCounters } from './chunks/fetch-counters.js';
import type { Metadata, Override, VolumeRow } from './metadata.js';
import type { ReadTrace } from './read-trace.js';
import { MissGaps } from './miss-gaps.js';
import { SequentialStreams, type Stream } from './sequential-streams.js';
import type { Digest } from '../common/digests.js';
import { chunkLength, type ChunkIndex } from './types.js';

/**
 * A sequential stream that has read this much in a row, and finds chunks missing, has the rest
 * of the store request it is in fetched at once (ChunkStore.follow), at most FOLLOW_CHUNKS
 * chunks: one store request per pack instead of one per batch of the chunks it happens to ask
 * for meanwhile (what each request costs the registry: docs/BENCHMARKS.md). Short runs (a small
 * file, a container's scattered startup reads) never reach it, so they fetch no more.
 */
const FOLLOW_AFTER = 1024 * 1024;
const FOLLOW_CHUNKS = 64;

/** Chunks hashed and stored at once by materialize (freeze, snapshot). */
const MATERIALIZE_CONCURRENCY = 8;

export interface VolumeParts {
  row: VolumeRow;
  /** Frozen: its own complete map. Writable: its base's map (empty without a base). */
  snapshot: Map<ChunkIndex, Digest>;
  /** Writable only: the overrides since the clone, as committed. */
  overrides: Map<ChunkIndex, Override>;
  /** Writable only: the sparse data file. */
  data: FileBackend | undefined;
  chunks: ChunkStore;
  metadata: Metadata;
  /** Chunks to prefetch ahead of a sequential reader (0: none). */
  readahead?: number;
  /** The widest gap between two nearby misses whose chunks are fetched with the second (miss-gaps.ts; 0: none). */
  gapFillBytes?: number;
  /** Where this volume's fetch costs are counted (kept by the manager across opens). */
  counters: FetchCounters;
  /** Where its first reads of base chunks are noted (kept by the manager across opens). */
  trace?: ReadTrace;
}

export class Volume implements Backend {
  readonly kind = 'volume';
  readonly size: ByteCount;
  readonly blockSizes: BlockSizes;
  readonly multiConn = true; // one instance per volume, shared by every connection
  readonly row: VolumeRow;
  private readonly chunkSize: number;
  /** Overrides not yet committed to the metadata (waiting for a flush). */
  private readonly pending = new Map<ChunkIndex, Override>();
  /** Per-chunk serialisation of copy-on-write (read-modify-write). */
  private readonly locks = new KeyedLock<ChunkIndex>();
  private closed = false;
  /** Counts writes (and zeroes) done: a flush that began after the last of them covers them all. */
  private written = 0;
  /** The last flush begun: what `written` was when it began, and its end. */
  private lastFlush: { written: number; done: Promise<void> } | undefined;
  /** Where the previous read ended: a read starting there is sequential. */
  private lastReadEnd = -1;
  /** Chunks below this index were already considered for readahead. */
  private readaheadFrom = 0;
  private readonly streams = new SequentialStreams();
  private readonly misses: MissGaps;

  constructor(private readonly parts: VolumeParts) {
    this.row = parts.row;
    this.size = parts.row.size;
    this.chunkSize = parts.row.chunkSize;
    this.blockSizes = { minimum: 1, preferred: this.chunkSize, maximum: 32 * 1024 * 1024 };
    this.misses = new MissGaps(this.chunkSize, parts.gapFillBytes);
  }

  get description(): string {
    return `slacker volume ${this.row.id}${this.row.frozen ? ' (frozen)' : ''}`;
  }

  /** Chunks this volume holds in its own data file. */
  get localChunks(): number {
    let n = 0;
    for (const kind of this.parts.overrides.values()) if (kind === 'data') n++;
    return n;
  }

  async pread(length: ByteCount, offset: ByteCount): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    this.noteRead(offset, length);
    await Promise.all(this.pieces(offset, length).map((p) => this.readPiece(p, out, p.pos)));
    return out;
  }

  /**
   * A zero-copy read is coming (Backend.localize): the read is noted (readahead, streams, the
   * startup trace), base chunks already here count as local hits, and missing ones are
   * fetched. Undefined when every chunk is here: a warm read costs no promise.
   */
  localize(offset: ByteCount, length: ByteCount): Promise<void> | undefined {
    const stream = this.noteRead(offset, length);
    let missing: Digest[] | undefined;
    for (const p of this.pieces(offset, length)) {
      const src = this.sourceOf(p.index);
      if (src.kind !== 'chunk') continue;
      this.parts.trace?.record(p.index);
      if (this.parts.chunks.isLocal(src.digest)) this.parts.chunks.countHit(src.digest, this.parts.counters);
      else {
        (missing ??= []).push(src.digest);
        this.fillGaps(p.index);
      }
    }
    if (!missing) return undefined;
    if (stream.run >= FOLLOW_AFTER) this.follow(stream, offset + length);
    return Promise.all(missing.map((d) => this.parts.chunks.ensureLocal(d, this.parts.counters))).then(() => undefined);
  }

  /** For zero-copy replies: the files holding a range, if every chunk of it is here (counts nothing). */
  fileSlices(offset: ByteCount, length: ByteCount): Slice[] | undefined {
    const slices: Slice[] = [];
    for (const p of this.pieces(offset, length)) {
      const src = this.sourceOf(p.index);
      if (src.kind === 'zero') {
        slices.push({ kind: 'zero', length: p.length });
      } else if (src.kind === 'local') {
        slices.push(...this.parts.data!.fileSlices(p.index * this.chunkSize + p.at, p.length));
      } else {
        if (!this.parts.chunks.isLocal(src.digest)) return undefined;
        const file = this.parts.chunks.lend(src.digest, this.chunkLength(p.index));
        if (!file) return undefined; // cut short: pread sets it aside and fetches it
        slices.push({ kind: 'file', fd: file.fd, position: file.position + p.at, length: p.length });
      }
    }
    return slices;
  }

  /** Starts fetching, for a long sequential stream, the rest of the store request it reads in. */
  private follow(stream: Stream, end: ByteCount): void {
    const last = Math.floor((end - 1) / this.chunkSize);
    if (last + 1 < stream.followedTo) return; // still inside what was fetched ahead for it
    const src = this.sourceOf(last);
    if (src.kind !== 'chunk') return;
    const from = Math.max(last + 1, stream.followedTo);
    // The chunks it would read next, up to the first hole or written chunk.
    const next = (): Digest[] => {
      const ahead: Digest[] = [];
      for (let idx = from; ahead.length < FOLLOW_CHUNKS && idx * this.chunkSize < this.size; idx++) {
        const n = this.sourceOf(idx);
        if (n.kind !== 'chunk') break;
        ahead.push(n.digest);
      }
      return ahead;
    };
    const n = this.parts.chunks.follow(src.digest, next, this.parts.counters);
    if (n !== undefined) stream.followedTo = from + n;
  }

  /**
   * Chunk `idx` missed: the base chunks between it and a recent miss nearby are fetched too,
   * queued in the same event-loop turn as its own fetch so that they ride on its store request.
   */
  private fillGaps(idx: ChunkIndex): void {
    for (const i of this.misses.note(idx)) {
      const src = this.sourceOf(i);
      if (src.kind === 'chunk') void this.parts.chunks.prefetch(src.digest, this.parts.counters);
    }
  }

  /** NBD_CMD_CACHE: bring the range's chunks into the local store. */
  async cache(offset: ByteCount, length: ByteCount): Promise<void> {
    await Promise.all(this.baseChunks(offset, length).map((d) => this.parts.chunks.prefetch(d, this.parts.counters)));
  }

  /** The digests of the range's chunks that come from the frozen base (not written here, not holes). */
  private baseChunks(offset: ByteCount, length: ByteCount): Digest[] {
    const digests: Digest[] = [];
    for (const p of this.pieces(offset, length)) {
      const src = this.sourceOf(p.index);
      if (src.kind === 'chunk') digests.push(src.digest);
    }
    return digests;
  }

  pwrite(data: Buffer, offset: ByteCount, flags: WriteFlags): Promise<void> {
    return this.pwritev([data], offset, flags);
  }

  /**
   * A write given as the pieces it arrived in (views of the NBD server's receive slabs). Resolves
   * or rejects only once no piece is being written any more: the caller reuses the memory then.
   */
  async pwritev(data: readonly Buffer[], offset: ByteCount, flags: WriteFlags): Promise<void> {
    const file = this.writable();
    const settled = await Promise.allSettled(
      this.pieces(offset, vectorLength(data)).map((p) =>
        this.withChunkLock(p.index, async () => {
          const part = vectorSlice(data, p.pos, p.length);
          const start = p.index * this.chunkSize;
          if (this.parts.overrides.get(p.index) === 'data' || p.length === this.chunkLength(p.index)) {
            await file.pwritev(part, start + p.at, { fua: false });
          } else {
            // Copy-on-write: the chunk's current content, overlaid with the write, lands whole.
            const whole = Buffer.allocUnsafe(this.chunkLength(p.index));
            await this.readPiece({ index: p.index, at: 0, length: whole.length, pos: 0 }, whole, 0);
            let at = p.at;
            for (const b of part) at += b.copy(whole, at);
            await file.pwrite(whole, start, { fua: false });
          }
          this.setOverride(p.index, 'data');
        }),
      ),
    );
    this.written++; // also when a piece failed: another may have landed
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (flags.fua) await this.flush();
  }

  async zero(offset: ByteCount, length: ByteCount, flags: ZeroFlags): Promise<void> {
    const file = this.writable();
    const pieces = this.pieces(offset, length);
    const partial = pieces.filter((p) => p.length !== this.chunkLength(p.index));
    if (flags.fast && partial.length > 0) {
      throw new NotSupportedError('zeroing part of a chunk is a write, not a fast zero');
    }
    await Promise.all(
      pieces.map((p) =>
        p.length === this.chunkLength(p.index)
          ? this.withChunkLock(p.index, async () => {
              this.setOverride(p.index, 'zero');
              await file.trim(p.index * this.chunkSize, p.length, { fua: false }); // free the space
            })
          : this.pwrite(Buffer.alloc(p.length), p.index * this.chunkSize + p.at, { fua: false }),
      ),
    ).finally(() => this.written++);
    if (flags.fua) await this.flush();
  }

  async trim(offset: ByteCount, length: ByteCount, flags: WriteFlags): Promise<void> {
    // Only whole chunks can be dropped; TRIM is advisory, so the partial ends are left alone.
    const whole = this.pieces(offset, length).filter((p) => p.length === this.chunkLength(p.index));
    for (const p of whole)
      await this.zero(p.index * this.chunkSize, p.length, { fua: false, mayTrim: true, fast: true });
    if (flags.fua) await this.flush();
  }

  /**
   * Makes every write done before it durable: the data file, then the map. A flush with no
   * write done since the last one began shares that one's end instead of syncing again: a
   * file system asks for a flush on every fsync, also of files with nothing to write (a
   * database's start fsyncs a thousand clean files), and each sync of the data file costs a
   * device flush of the host (docs/BENCHMARKS.md).
   */
  flush(): Promise<void> {
    if (!this.parts.data) return Promise.resolve();
    const last = this.lastFlush;
    if (last && last.written === this.written) return last.done;
    const flushing = { written: this.written, done: this.flushNow(this.parts.data) };
    this.lastFlush = flushing;
    // A failed flush covers nothing: the next one syncs again.
    flushing.done.catch(() => {
      if (this.lastFlush === flushing) this.lastFlush = undefined;
    });
    return flushing.done;
  }

  private async flushNow(data: FileBackend): Promise<void> {
    const batch = new Map(this.pending);
    this.pending.clear();
    try {
      await data.flush(); // the data first ...
      if (batch.size > 0) this.parts.metadata.commitOverrides(this.row.id, batch); // ... then the map
    } catch (err) {
      for (const [idx, kind] of batch) if (!this.pending.has(idx)) this.pending.set(idx, kind); // not committed
      throw err;
    }
  }

  async extents(offset: ByteCount, length: ByteCount): Promise<Extent[]> {
    const out: Extent[] = [];
    for (const p of this.pieces(offset, length)) {
      const hole = this.sourceOf(p.index).kind === 'zero';
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += p.length;
      else out.push({ offset: offset + p.pos, length: p.length, hole, zero: hole });
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    await this.parts.data?.close();
  }

  /** Where a chunk's bytes are now. */
  sourceOf(idx: ChunkIndex): { kind: 'local' } | { kind: 'zero' } | { kind: 'chunk'; digest: Digest } {
    const o = this.parts.overrides.get(idx);
    if (o === 'data') return { kind: 'local' };
    if (o === 'zero') return { kind: 'zero' };
    const digest = this.parts.snapshot.get(idx);
    return digest ? { kind: 'chunk', digest } : { kind: 'zero' };
  }

  /** The complete chunk map this volume would have if frozen now (flush first). */
  async materialize(store: (data: Buffer) => Promise<Digest | undefined>): Promise<Map<ChunkIndex, Digest>> {
    const map = new Map(this.parts.snapshot);
    const written: ChunkIndex[] = [];
    for (const [idx, kind] of this.parts.overrides) {
      if (kind === 'zero') map.delete(idx);
      else written.push(idx);
    }
    // Several chunks at a time: each is a read, a hash and a synced write, and the fsyncs of
    // one chunk file after another were most of the time a freeze took.
    const next = written[Symbol.iterator]();
    const worker = async (): Promise<void> => {
      for (let r = next.next(); !r.done; r = next.next()) {
        const idx = r.value;
        const digest = await store(await this.parts.data!.pread(this.chunkLength(idx), idx * this.chunkSize));
        if (digest) map.set(idx, digest);
        else map.delete(idx); // all zeroes: a hole
      }
    };
    await Promise.all(Array.from({ length: MATERIALIZE_CONCURRENCY }, worker));
    return map;
  }

  private async readPiece(p: BlockPiece, out: Buffer, at: number): Promise<void> {
    const src = this.sourceOf(p.index);
    if (src.kind === 'zero') {
      out.fill(0, at, at + p.length);
    } else if (src.kind === 'local') {
      const data = await this.parts.data!.pread(p.length, p.index * this.chunkSize + p.at);
      data.copy(out, at);
    } else {
      this.parts.trace?.record(p.index);
      if (!this.parts.chunks.isLocal(src.digest)) this.fillGaps(p.index);
      await this.parts.chunks.read(src.digest, p.at, p.length, out, at, this.parts.counters);
    }
  }

  /**
   * Readahead for a sequential reader (a read starting where the previous one ended), and the
   * stream the read belongs to.
   */
  private noteRead(offset: ByteCount, length: ByteCount): Stream {
    if (offset === this.lastReadEnd) this.readAhead(offset + length);
    this.lastReadEnd = offset + length;
    return this.streams.note(offset, length);
  }

  /** Sequential reader: fetch the next chunks in the background before they are asked for. */
  private readAhead(from: ByteCount): void {
    const n = this.parts.readahead ?? 0;
    const first = Math.ceil(from / this.chunkSize);
    // Only chunks newly entering the window: a sliding window would ask for each one n times.
    const start = first >= this.readaheadFrom && first < this.readaheadFrom + n ? this.readaheadFrom : first;
    this.readaheadFrom = first + n;
    for (let idx = start; idx < first + n && idx * this.chunkSize < this.size; idx++) {
      const src = this.sourceOf(idx);
      if (src.kind === 'chunk') void this.parts.chunks.prefetch(src.digest, this.parts.counters);
    }
  }

  private setOverride(idx: ChunkIndex, kind: Override): void {
    this.parts.overrides.set(idx, kind);
    this.pending.set(idx, kind);
  }

  private writable(): FileBackend {
    if (this.row.frozen || !this.parts.data) {
      throw new ReadOnlyError(`volume ${this.row.id} is frozen`, { context: { volume: this.row.id } });
    }
    return this.parts.data;
  }

  private chunkLength(idx: ChunkIndex): number {
    return chunkLength(this.size, this.chunkSize, idx);
  }

  /** The chunk pieces of a request. */
  private pieces(offset: ByteCount, length: ByteCount): BlockPiece[] {
    return blockPieces(offset, length, this.chunkSize);
  }

  private withChunkLock(idx: ChunkIndex, fn: () => Promise<void>): Promise<void> {
    return this.locks.run(idx, fn);
  }
}
