/**
 * VolumeManager: the layer volumes under one state root, and their backing store.
 *
 *   ROOT/metadata.db          SQLite metadata (see metadata.ts for the schema)
 *   ROOT/chunks/ab/cdef...    local content-addressed chunks (frozen data)
 *   ROOT/data/<id>.data       sparse data file of each writable volume (its own writes)
 *   ROOT/staging/<id>.img     a staged copy of a writable volume (staged-copy.ts), while in use
 *
 * Operations: create (empty), clone (O(1): a row and an empty sparse file; the parent must be
 * frozen), freeze (hash the volume's own chunks into the store, materialise its complete map in
 * one transaction), publish (upload the chunks the store lacks, then the manifest; returns the
 * snapshot reference), openSnapshot (a frozen volume from a reference: metadata only, chunks
 * fetched on first read), acquire/release (refcounted, one shared Backend per volume), remove
 * (refused while clones or openers depend on it), snapshot (a frozen copy of a writable volume,
 * which stays writable), stage/freezeStaged/discardStaged (the whole content as one plain
 * file for the kernel to work on, then frozen from it), list, stats.
 */
import { mkdir, open as openFile, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, ConflictError, InvalidArgumentError, IoError, NotFoundError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { allSettledOrThrow } from '../common/settle.js';
import type { BackingStore, StoredChunk, UploadCounts } from '../stores/backing-store.js';
import type { PackChunk } from './chunks/cache-segments.js';
import { ChunkStore } from './chunks/chunk-store.js';
import { FetchCounters } from './chunks/fetch-counters.js';
import type { FetchPolicy } from './chunks/fetcher.js';
import { decodeManifest, encodeManifest, type Manifest } from './manifest.js';
import type { Backend } from '../block/backend.js';
import type { ByteRange } from '../block/ranges.js';
import { FileBackend } from '../block/backends/file.js';
import { readOnly } from '../block/filters/read-only.js';
import { Metadata, type VolumeRow } from './metadata.js';
import { digestOf, isDigest, type Digest } from '../common/digests.js';
import { DEFAULT_CHUNK_SIZE, chunkLength, isAllZero, isVolumeId, type ChunkIndex, type VolumeId } from './types.js';
import { ReadTrace } from './read-trace.js';
import { Volume } from './volume.js';
import { createStaged, fillStaged, mapStaged } from './staged-copy.js';

export interface VolumeStats {
  id: VolumeId;
  parent: VolumeId | null;
  frozen: boolean;
  virtualSize: number;
  chunkSize: number;
  /** Chunks written by this volume itself (writable) or mapped in its snapshot (frozen). */
  chunks: number;
  /** Bytes this volume wrote itself (writable volumes). */
  bytesWritten: number;
  openCount: number;
  snapshotRef: Digest | null;
  /** What reads of this volume's frozen chunks fetched, over its lifetime. */
  fetch: Pick<FetchCounters, 'chunksFetched' | 'bytesFetched' | 'fetchErrors' | 'localHits' | 'latency'>;
}

export interface VolumeManagerOptions {
  /** The shared backing store publish and openSnapshot use, and lazy reads fetch from. */
  store?: BackingStore;
  fetchPolicy?: Partial<FetchPolicy>;
  /**
   * Chunks fetched ahead of a sequential reader (default 0, as the plugin's: readahead fetched
   * more of HelloBench's images for no speed-up, and a cold nbdcopy ran slower with it, at
   * more CPU; docs/BENCHMARKS.md).
   */
  readahead?: number;
  /**
   * The widest gap between two nearby cold reads whose chunks are fetched with the second
   * (volumes/miss-gaps.ts; default GAP_FILL_BYTES, 0: none).
   */
  gapFillBytes?: number;
  /** Bytes of evictable chunks (fetched or published) kept locally (default 10 GiB). */
  cacheBytes?: number;
  log?: Logger;
}

/** A staged copy made by prepareStage: its file, empty until `fill` writes the volume's content. */
export interface StagedCopy {
  path: string;
  fill(): Promise<void>;
}

/** What a publish sent (VolumeManager.publish `counts`), by distinct chunk. */
export interface PublishCounts {
  /** Distinct chunks of the snapshot. */
  chunks: number;
  /** Known here to be in the store already (an earlier publish or an opened snapshot): not sent. */
  known: number;
  /** Sent, and found already in the store (a chunk file, or a pack blob, that existed). */
  skipped: number;
  /** Sent and stored now. */
  uploaded: number;
}

export interface PublishOptions {
  /** A startup profile: chunk indices in the order a container first read them. */
  prefetch?: ChunkIndex[];
  /**
   * Fetch the prefetch chunks from the packs they are in, instead of packing them once more in
   * profile order: for chunks this publish uploads anyway, in volume order (a commit's own).
   */
  prefetchInPlace?: boolean;
  /** Filled with what this publish sent. */
  counts?: PublishCounts;
}

/** Manifests of the last publishes kept decoded, for a marker applied here next (VolumeManager.published). */
const RECENTLY_PUBLISHED = 4;
/** Base volumes whose last clone's reads are remembered (warmRanges): the most recently used. */
const WARM_BASES = 32;
/**
 * Most chunks warmed for a new clone: 64 MiB of 128 KiB chunks, several times a compile's
 * reads of gcc (cc1, as, ld, headers), and small against the page cache of any host that runs
 * containers.
 */
export const MAX_WARM_CHUNKS = 512;

/** Chunks uploaded per batch when publishing: bounds memory to batch × chunk size. */
const PUBLISH_BATCH = 64;

/**
 * Chunks of a startup profile asked of the store at once (a pack store reads a wave of its
 * profile pack as one range: one fetcher batch), and waves in flight. Several ranges in flight
 * keep a 1 Gbit/s link busy: with the two waves of 32 a fetcher batch used to join, one range
 * of 4 MB was in flight at a time and a 12 MB profile took 250 ms (docs/BENCHMARKS.md). A read
 * arriving meanwhile does not queue behind them: the fetcher serves readers first.
 */
const PREFETCH_WAVE = 64;
const PREFETCH_WAVES_IN_FLIGHT = 3;

interface OpenVolume {
  volume: Volume;
  backend: Backend;
  refs: number;
}

export class VolumeManager {
  private readonly open = new Map<VolumeId, OpenVolume>();
  /** Complete maps of frozen volumes, loaded once and shared by all their clones. */
  private readonly snapshots = new Map<VolumeId, Map<ChunkIndex, Digest>>();
  /** Fetch costs per volume, loaded from and saved to the metadata, whether or not it is open now. */
  private readonly counters = new Map<VolumeId, FetchCounters>();
  /** First reads of base chunks per volume, since this process opened it (startup profiles). */
  private readonly traces = new Map<VolumeId, ReadTrace>();
  /**
   * Startup profiles being fetched, by the volume whose profile it is, until their chunks have
   * landed (profileLanding; close waits for their waves in flight). Never rejects.
   */
  private readonly prefetching = new Map<VolumeId, Promise<void>>();
  /**
   * The manifests this process published last, by reference: a commit's marker is applied here
   * right after its publish (the new image's layer), and fetching and decoding the manifest it
   * just encoded took 20-27 ms of a build step's commit (2,760 chunks: docs/BENCHMARKS.md).
   */
  private readonly published = new Map<Digest, Manifest>();
  /** Per base volume, the chunks of it its last clone read, in first-read order (warmRanges). */
  private readonly cloneReads = new Map<VolumeId, ChunkIndex[]>();
  /**
   * Per snapshot opened here with a startup profile, the profile: what its first container here
   * will read, before any clone of it was closed (warmRanges).
   */
  private readonly profiles = new Map<VolumeId, ChunkIndex[]>();
  /**
   * Frozen clones frozen unchanged, to their base: a container's init volume, which stands for
   * its image (plugin/init-layers.ts), so that its container's reads count for the image.
   */
  private readonly sameAs = new Map<VolumeId, VolumeId>();
  private closed = false;

  private constructor(
    readonly root: string,
    private readonly metadata: Metadata,
    /** Frozen chunks: local, fetched, evicted (volumes/chunks/). */
    readonly chunks: ChunkStore,
    private readonly options: VolumeManagerOptions,
  ) {}

  static async open(root: string, options: VolumeManagerOptions = {}): Promise<VolumeManager> {
    await mkdir(join(root, 'data'), { recursive: true });
    await mkdir(join(root, 'chunks'), { recursive: true });
    // A staged copy outlives no process: its work (an apply) died with the one that made it.
    await rm(join(root, 'staging'), { recursive: true, force: true });
    await mkdir(join(root, 'staging'), { recursive: true });
    const metadata = new Metadata(join(root, 'metadata.db'));
    const store = options.store;
    let chunks: ChunkStore;
    try {
      chunks = await ChunkStore.open(join(root, 'chunks'), {
        catalog: metadata,
        packCatalog: metadata.packCatalog,
        store,
        // Where the store has each chunk, as earlier publishes and opened manifests recorded it.
        locations: {
          hintsOf: (digests) =>
            store ? metadata.locationsOf(store.url, digests).map((hint) => hint ?? '') : digests.map(() => ''),
        },
        fetchPolicy: options.fetchPolicy,
        cacheBytes: options.cacheBytes,
        log: options.log,
      });
    } catch (err) {
      metadata.close();
      throw err;
    }
    return new VolumeManager(root, metadata, chunks, options);
  }

  get store(): BackingStore | undefined {
    return this.options.store;
  }

  /**
   * Publishes a frozen volume: uploads the chunks the store does not have yet (known from
   * earlier publishes and opened manifests), then the manifest. Returns the snapshot reference.
   * `prefetch` is a startup profile (readTrace of a volume cloned from this one): the chunks
   * among them that the snapshot holds are fetched first wherever it is opened.
   */
  async publish(id: string, options: PublishOptions = {}): Promise<Digest> {
    const store = this.requireStore();
    const row = this.get(id);
    if (!row.frozen)
      throw new ConflictError(`volume ${row.id} must be frozen to publish`, { context: { volume: row.id } });
    const map = this.snapshotOf(row.id);
    // A digest's length is its chunk's length: the last chunk of a volume may be short. In the
    // volume's order, so that a pack holds a run of the volume: a sequential reader then wants
    // whole packs. (The map is in the order freeze hashed the chunks, several at a time: packs
    // cut from it shared their edges, and a cold read fetched each edge chunk on its own.)
    const lengthOf = new Map<Digest, number>();
    for (const [idx, digest] of [...map].sort((a, b) => a[0] - b[0]))
      lengthOf.set(digest, chunkLength(row.size, row.chunkSize, idx));
    // In one read transaction each (locationsOf): a statement alone takes and drops the database's lock.
    const digests = [...lengthOf.keys()];
    const known = this.metadata.locationsOf(store.url, digests);
    const missing = digests.filter((_, i) => known[i] === undefined);
    const t0 = performance.now();
    const upload = { skipped: 0 };
    const uploaded = new Map<Digest, string>();
    // The last batch is only packed here (where the store can): it uploads with the manifest, below.
    const prepare = store.prepareChunks?.bind(store);
    const lastBatch = prepare && missing.length > 0 ? ((missing.length - 1) % PUBLISH_BATCH) + 1 : 0;
    for await (const stored of this.upload(store, missing.slice(0, missing.length - lastBatch), lengthOf, upload)) {
      this.metadata.recordLocations(store.url, stored);
      for (const [d, h] of stored) uploaded.set(d, h);
    }
    const last =
      prepare && lastBatch > 0 ? await prepare(await this.readChunks(missing.slice(-lastBatch), lengthOf)) : undefined;
    for (const [d, h] of last?.hints ?? []) uploaded.set(d, h);
    // Where each chunk is: known before, or just uploaded (no second lookup of every chunk).
    const hints = new Map(digests.map((d, i) => [d, known[i] ?? uploaded.get(d) ?? '']));
    const prefetch = options.prefetch?.filter((idx) => map.has(idx));
    if (prefetch?.length && store.packs && !options.prefetchInPlace) {
      // The profile's chunks once more, packed in profile order, for this manifest only: a host
      // opening it fetches them in a few large ranges instead of one small range each.
      const hot = [...new Set(prefetch.map((idx) => map.get(idx)!))];
      for await (const stored of this.upload(store, hot, lengthOf)) for (const [d, h] of stored) hints.set(d, h);
    }
    const t1 = performance.now();
    const decoded: Manifest = { size: row.size, chunkSize: row.chunkSize, chunks: map, hints, prefetch };
    const manifest = encodeManifest(decoded);
    const t2 = performance.now();
    // The last pack and the manifest go up together (the store names the manifest once both are in).
    const lastStored = last?.put(upload).then(() => this.metadata.recordLocations(store.url, last.hints));
    const [ref] = await allSettledOrThrow([store.putManifest(manifest, hints.values(), lastStored), lastStored]);
    if (options.counts) {
      options.counts.chunks = lengthOf.size;
      options.counts.known = lengthOf.size - missing.length;
      options.counts.skipped = upload.skipped;
      options.counts.uploaded = missing.length - upload.skipped;
    }
    // What was only here is in the store now: the cache may evict it.
    for (const digest of missing) await this.chunks.admitPublished(digest, lengthOf.get(digest)!);
    this.metadata.setSnapshotRef(row.id, ref);
    this.published.delete(ref);
    this.published.set(ref, decoded);
    if (this.published.size > RECENTLY_PUBLISHED) this.published.delete(this.published.keys().next().value!);
    // Where a publish's time goes (issue 19): the chunks' upload (the last pack's overlaps the
    // manifest's), the manifest's encoding and upload.
    this.options.log?.debug(
      {
        volume: row.id,
        chunks: lengthOf.size,
        uploaded: missing.length,
        uploadMs: Math.round(t1 - t0),
        encodeMs: Math.round(t2 - t1),
        manifestBytes: manifest.length,
        manifestMs: Math.round(performance.now() - t2),
      },
      'snapshot published',
    );
    return ref;
  }

  /** Uploads chunks (read from here) in batches; yields each batch's locations. */
  private async *upload(
    store: BackingStore,
    digests: Digest[],
    lengthOf: Map<Digest, number>,
    counts?: UploadCounts,
  ): AsyncGenerator<Map<Digest, string>> {
    for (let i = 0; i < digests.length; i += PUBLISH_BATCH)
      yield await store.putChunks(await this.readChunks(digests.slice(i, i + PUBLISH_BATCH), lengthOf), counts);
  }

  /** Chunks read from here, for an upload. */
  private readChunks(digests: Digest[], lengthOf: Map<Digest, number>): Promise<StoredChunk[]> {
    const counters = new FetchCounters();
    return Promise.all(
      digests.map(async (digest) => {
        const data = Buffer.allocUnsafe(lengthOf.get(digest)!);
        await this.chunks.read(digest, 0, data.length, data, 0, counters);
        return { digest, data };
      }),
    );
  }

  /** Creates frozen volume `id` from a published snapshot: only metadata moves now. */
  async openSnapshot(ref: string, id: string): Promise<VolumeRow> {
    const store = this.requireStore();
    if (!isDigest(ref))
      throw new InvalidArgumentError(`bad snapshot reference ${JSON.stringify(ref)}`, { context: { ref } });
    this.assertNewId(id);
    const t0 = performance.now();
    const ours = this.published.get(ref);
    const raw = ours ? undefined : await this.fetchManifest(store, ref);
    const t1 = performance.now();
    const m = ours ?? decodeManifest(ref, raw!);
    const t2 = performance.now();
    // Where the chunks of a snapshot published here are was recorded by its publish (those known
    // before, those it uploaded): 2,760 upserts of the same hints cost ~9 ms of a commit's marker.
    const hints = ours
      ? new Map<Digest, string>()
      : new Map([...new Set(m.chunks.values())].map((d) => [d, m.hints.get(d) ?? '']));
    this.metadata.insertSnapshot(
      { id, size: m.size, chunkSize: m.chunkSize, snapshotRef: ref },
      m.chunks,
      store.url,
      hints,
    );
    // Where a pull's time goes in this process (docs/BENCHMARKS.md, "What bounds the lazy overhead").
    this.options.log?.debug(
      {
        volume: id,
        chunks: m.chunks.size,
        manifestBytes: raw?.length ?? 0,
        fetchMs: +(t1 - t0).toFixed(1),
        decodeMs: +(t2 - t1).toFixed(1),
        insertMs: +(performance.now() - t2).toFixed(1),
      },
      'snapshot opened',
    );
    if (m.prefetch?.length) {
      remember(this.profiles, id, m.prefetch.slice(0, MAX_WARM_CHUNKS));
      // Landed: fetched, and in the cache's segments (isLocal counts a chunk from then on).
      const landing = this.prefetchProfile(
        id,
        m.prefetch.map((idx) => m.chunks.get(idx)!),
      )
        .then(() => this.chunks.landed())
        .catch(() => undefined)
        .finally(() => this.prefetching.delete(id));
      this.prefetching.set(id, landing);
    }
    return this.get(id);
  }

  private async fetchManifest(store: BackingStore, ref: Digest): Promise<Buffer> {
    try {
      return await store.getManifest(ref);
    } catch (err) {
      throw new IoError(`cannot fetch snapshot ${ref} from ${store.url}`, {
        cause: err,
        context: { ref, store: store.url },
      });
    }
  }

  /** The chunks of its base that volume `id` read, in first-read order, since this process opened it. */
  readTrace(id: string): ChunkIndex[] {
    return this.traces.get(this.get(id).id)?.chunks() ?? [];
  }

  /**
   * What writable clone `id` is likely to read of its base first: the chunks the base's last
   * clone on this host read (remembered when that clone was last closed; readsFor says when
   * another base's clone or the base's startup profile stands in), in first-read order, as byte
   * ranges (adjacent chunks joined), only chunks already on this host and at most
   * MAX_WARM_CHUNKS. Empty when there is nothing to go on. A caller reads these into the page
   * cache under a new container's device before the container asks: each container of an image
   * gets a new device whose page cache is empty, and a build step's compile read gcc's files
   * anew through every hop although they were local (docs/BENCHMARKS.md, "Warming a new
   * container's device"). Only local chunks: a warm never fetches.
   */
  warmRanges(id: string): ByteRange[] {
    const row = this.get(id);
    if (row.frozen || !row.parent) return [];
    const base = this.snapshotOf(row.parent);
    const { reads, from } = this.readsFor(this.unchangedBase(row.parent), base);
    const out: ByteRange[] = [];
    let last: ByteRange | undefined;
    let lastIdx = -2;
    for (const idx of reads) {
      const digest = base.get(idx);
      if (digest === undefined || (from && from.get(idx) !== digest) || !this.chunks.isLocal(digest)) continue;
      const length = chunkLength(row.size, row.chunkSize, idx);
      if (last && idx === lastIdx + 1) last.length += length;
      else out.push((last = { offset: idx * row.chunkSize, length }));
      lastIdx = idx;
    }
    return out;
  }

  /**
   * While the startup profile that writable clone `id`'s base was opened with is still being
   * fetched, a promise that settles once it is (never rejects); else undefined. A warm of the
   * base's first container waits for it (LayerMounts.fillCache), so that it covers the whole
   * profile, not only the part that had landed by the attach.
   */
  profileLanding(id: string): Promise<void> | undefined {
    const row = this.get(id);
    if (row.frozen || !row.parent) return undefined;
    return this.prefetching.get(this.unchangedBase(row.parent));
  }

  /**
   * The reads to warm a clone of `key` (whose map is `base`) with: those of its own last clone;
   * else those of the last clone of any base, where that base holds the same chunk at the same
   * place (`from`: its map), if that is at least half of them; else the startup profile `key`
   * was opened with. A build step's image, or a commit of an image, is a copy-on-write clone of
   * the same file system: its new version read the same libraries at the same places
   * (MultiMake's worker runs each build step once: its run read what the step before's run
   * read); a commit's profile lists fewer (the chunks it changed and its container's first
   * reads). Another image shares few chunks in place, and gets its own profile or nothing. The
   * profile is what makes a host's first container of a pulled image start warm: its chunks
   * are being fetched from the pull on, and the warm waits for them to land (profileLanding)
   * (HelloBench's runs 0.1-0.3 s shorter: docs/BENCHMARKS.md, "The first container of a pulled
   * image, warmed with its profile").
   */
  private readsFor(
    key: VolumeId,
    base: Map<ChunkIndex, Digest>,
  ): { reads: ChunkIndex[]; from?: Map<ChunkIndex, Digest> } {
    const own = this.cloneReads.get(key);
    if (own) return { reads: own };
    const other = [...this.cloneReads.keys()].at(-1); // the most recently remembered
    if (other !== undefined) {
      const reads = this.cloneReads.get(other)!;
      const from = this.snapshotOf(other);
      const same = reads.filter((idx) => from.get(idx) !== undefined && from.get(idx) === base.get(idx)).length;
      if (same * 2 >= reads.length) return { reads, from };
    }
    return { reads: this.profiles.get(key) ?? [] };
  }

  /** The volume `id` stands for: itself, or the base it was frozen unchanged from (sameAs). */
  private unchangedBase(id: VolumeId): VolumeId {
    for (let next = this.sameAs.get(id); next !== undefined; next = this.sameAs.get(id)) id = next;
    return id;
  }

  /** Keeps the reads of writable clone `row` for the next clone of its base (warmRanges). */
  private rememberCloneReads(row: VolumeRow): void {
    const reads = this.traces.get(row.id)?.chunks();
    if (row.frozen || !row.parent || !reads || reads.length === 0) return;
    const base = this.unchangedBase(row.parent);
    remember(this.cloneReads, base, reads.slice(0, MAX_WARM_CHUNKS));
  }

  list(): VolumeRow[] {
    return this.metadata.listVolumes();
  }

  has(id: string): boolean {
    return isVolumeId(id) && this.metadata.getVolume(id) !== undefined;
  }

  get(id: string): VolumeRow {
    const row = isVolumeId(id) ? this.metadata.getVolume(id) : undefined;
    if (!row) throw new NotFoundError(`no volume ${JSON.stringify(id)}`, { context: { volume: id } });
    return row;
  }

  async create(id: string, size: number, options: { chunkSize?: number } = {}): Promise<VolumeRow> {
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) {
      throw new InvalidArgumentError('volume size must be a positive multiple of 512 bytes', { context: { size } });
    }
    if (!Number.isSafeInteger(chunkSize) || chunkSize < 4096 || (chunkSize & (chunkSize - 1)) !== 0) {
      throw new InvalidArgumentError('chunk size must be a power of two of at least 4096', { context: { chunkSize } });
    }
    return this.add(id, null, size, chunkSize);
  }

  /** O(1): the clone shares every chunk with its frozen parent until written. */
  async clone(parentId: string, id: string): Promise<VolumeRow> {
    const parent = this.get(parentId);
    if (!parent.frozen) {
      throw new ConflictError(`volume ${parent.id} is writable: freeze it before cloning`, {
        context: { volume: parent.id },
      });
    }
    return this.add(id, parent.id, parent.size, parent.chunkSize);
  }

  async freeze(id: string): Promise<VolumeRow> {
    const row = this.get(id);
    if (row.frozen) return row;
    if (this.open.has(row.id)) {
      throw new ConflictError(`volume ${row.id} is open: release it before freezing`, { context: { volume: row.id } });
    }
    if (this.metadata.overrides(row.id).size === 0) {
      // Nothing was written (a container's init layer, which dockerd writes into a directory:
      // plugin/init-layers.ts): its map is its base's. A closed volume's writes were all recorded
      // at its last flush, so there is no data file to read, no chunk to store, nothing to sync.
      const map = new Map(this.baseOf(row));
      this.metadata.freeze(row.id, map);
      this.snapshots.set(row.id, map);
      if (row.parent) this.sameAs.set(row.id, row.parent);
      await unlink(this.dataPath(row.id)).catch(() => undefined);
      return this.get(id);
    }
    const volume = await this.volumeOf(row);
    try {
      const map = await this.completeMap(volume);
      this.metadata.freeze(row.id, map);
      this.snapshots.set(row.id, map);
    } finally {
      await volume.close();
    }
    await unlink(this.dataPath(row.id)).catch(() => undefined);
    return this.get(id);
  }

  /**
   * A staged copy of writable volume `id`: a new local file holding its whole current content
   * (staged-copy.ts), for work the kernel does through a loop device straight on it. Undefined
   * when a chunk of its base is not on this host: copying a lazily opened parent would fetch all
   * of it, so the caller works through the volume instead. The volume stays as it is until
   * freezeStaged takes the file's content; discardStaged drops the file. Not while it is open.
   */
  async stage(id: string): Promise<string | undefined> {
    const staged = await this.prepareStage(id);
    await staged?.fill();
    return staged?.path;
  }

  /**
   * stage in two steps: the file is made now, empty and sparse, and `fill` writes the content,
   * so that a loop device can be configured on the file in between, while it has no dirty
   * pages (attach/loop.ts says why). A fill that fails removes the file.
   */
  async prepareStage(id: string): Promise<StagedCopy | undefined> {
    const row = this.writableClosed(id, 'staged');
    const base = this.baseOf(row);
    for (const digest of base.values()) if (!this.chunks.isLocal(digest)) return undefined;
    const overrides = this.metadata.overrides(row.id);
    const indices = new Set<ChunkIndex>(base.keys());
    for (const [idx, kind] of overrides) if (kind === 'data') indices.add(idx);
    const path = this.stagingPath(row.id);
    await rm(path, { force: true });
    await createStaged(path, row);
    const fill = async (): Promise<void> => {
      const data = overrides.size > 0 ? await openFile(this.dataPath(row.id), 'r') : undefined;
      const counters = new FetchCounters(); // copying out is not a read of the volume
      const t0 = Date.now();
      try {
        await fillStaged(
          path,
          row,
          [...indices],
          (idx) => {
            const kind = overrides.get(idx);
            if (kind === 'zero') return 'hole';
            if (kind === 'data') return { fd: data!.fd, position: idx * row.chunkSize };
            return this.chunks.lend(base.get(idx)!, chunkLength(row.size, row.chunkSize, idx));
          },
          (idx, out) => this.chunks.read(base.get(idx)!, 0, out.length, out, 0, counters).then(() => undefined),
        );
      } catch (err) {
        await rm(path, { force: true });
        throw err;
      } finally {
        await data?.close();
      }
      this.options.log?.debug({ volume: row.id, chunks: indices.size, ms: Date.now() - t0 }, 'staged copy made');
    };
    return { path, fill };
  }

  /**
   * Freezes writable volume `id` with the content of its staged copy (stage): chunks equal to
   * the base's keep their digests, the others are kept here durably first, then the complete
   * map lands in one transaction. The new chunks stay where they are: the staged file becomes
   * their pack (chunk-store.ts keepPack), so an apply's data is not copied again. Without the
   * packs (another process owns them), they are stored as files and the staged file removed.
   * A crash before the map lands leaves the volume as it was before stage.
   */
  async freezeStaged(id: string): Promise<{ row: VolumeRow; stored: number }> {
    const row = this.writableClosed(id, 'frozen');
    const path = this.stagingPath(row.id);
    const base = this.baseOf(row);
    const t0 = Date.now();
    const packed: PackChunk[] = [];
    const keepsPacks = this.chunks.keepsPacks;
    const { map, stored } = await mapStaged(
      path,
      row,
      base,
      async (digest, data, offset) => {
        if (!keepsPacks) return this.chunks.putUnsynced(digest, data);
        if (!this.chunks.isLocal(digest)) packed.push({ digest, offset, length: data.length });
      },
      (idx) => this.chunks.lend(base.get(idx)!, chunkLength(row.size, row.chunkSize, idx)),
    );
    const t1 = Date.now();
    if (keepsPacks) {
      await this.chunks.keepPack(path, packed);
    } else {
      // The staged file first: the dirty pages of a removed file are dropped, not written back
      // by the sync below (which would write the layer to disk twice).
      await rm(path, { force: true });
      await this.chunks.sync();
    }
    this.options.log?.debug(
      { volume: row.id, mapMs: t1 - t0, syncMs: Date.now() - t1, stored, packed: packed.length },
      'staged copy frozen',
    );
    this.metadata.freeze(row.id, map);
    this.snapshots.set(row.id, map);
    await rm(this.dataPath(row.id), { force: true });
    return { row: this.get(id), stored };
  }

  /** Drops a staged copy (stage) without taking its content; the volume is as it was. */
  async discardStaged(id: string): Promise<void> {
    await rm(this.stagingPath(this.get(id).id), { force: true });
  }

  private writableClosed(id: string, what: string): VolumeRow {
    const row = this.get(id);
    if (row.frozen)
      throw new ConflictError(`volume ${row.id} is frozen: it cannot be ${what}`, { context: { volume: row.id } });
    if (this.open.has(row.id)) {
      throw new ConflictError(`volume ${row.id} is open: it cannot be ${what}`, { context: { volume: row.id } });
    }
    return row;
  }

  /**
   * A frozen copy of a writable volume's current contents, as new volume `newId` (no parent: it
   * outlives the source). The source stays writable and may be open: what it has flushed is what
   * the copy holds, so callers quiesce the file system on it first.
   */
  async snapshot(id: string, newId: string): Promise<VolumeRow> {
    const row = this.get(id);
    if (row.frozen) throw new ConflictError(`volume ${row.id} is frozen already: clone it instead`);
    this.assertNewId(newId);
    const o = this.open.get(row.id);
    const volume = o?.volume ?? (await this.volumeOf(row));
    try {
      const map = await this.completeMap(volume);
      this.metadata.insertFrozen({ id: newId, size: row.size, chunkSize: row.chunkSize }, map);
      this.snapshots.set(newId, map);
    } finally {
      if (!o) await volume.close();
    }
    return this.get(newId);
  }

  /** Opens (or shares) the volume's backend; frozen volumes are read-only. Pair with release(). */
  async acquire(id: string): Promise<Backend> {
    const row = this.get(id);
    let o = this.open.get(row.id);
    if (!o) {
      const volume = await this.volumeOf(row);
      o = { volume, backend: row.frozen ? readOnly(volume) : volume, refs: 0 };
      this.open.set(row.id, o);
    }
    o.refs++;
    return o.backend;
  }

  async release(id: string): Promise<void> {
    const row = this.get(id);
    const o = this.open.get(row.id);
    if (!o) return;
    if (--o.refs === 0) {
      this.open.delete(row.id);
      this.rememberCloneReads(row);
      await o.volume.close();
      this.metadata.saveFetchStats(row.id, this.countersOf(row.id));
    }
  }

  async remove(id: string): Promise<void> {
    const row = this.get(id);
    const children = this.metadata.children(row.id);
    if (children.length > 0) {
      throw new ConflictError(`volume ${row.id} has ${children.length} clone(s): remove them first`, {
        context: { volume: row.id, children },
      });
    }
    if (this.open.has(row.id)) {
      throw new ConflictError(`volume ${row.id} is open`, { context: { volume: row.id } });
    }
    this.metadata.deleteVolume(row.id);
    this.snapshots.delete(row.id);
    this.counters.delete(row.id);
    this.traces.delete(row.id);
    this.cloneReads.delete(row.id);
    this.profiles.delete(row.id);
    this.sameAs.delete(row.id);
    await rm(this.dataPath(row.id), { force: true });
    await rm(this.stagingPath(row.id), { force: true });
  }

  stats(id: string): VolumeStats {
    const row = this.get(id);
    const overrides = row.frozen ? new Map() : this.metadata.overrides(row.id);
    const o = this.open.get(row.id);
    const written = o ? o.volume.localChunks : [...overrides.values()].filter((k) => k === 'data').length;
    return {
      id: row.id,
      parent: row.parent,
      frozen: row.frozen,
      virtualSize: row.size,
      chunkSize: row.chunkSize,
      chunks: row.frozen ? this.snapshotOf(row.id).size : written,
      bytesWritten: row.frozen ? 0 : written * row.chunkSize,
      openCount: o?.refs ?? 0,
      snapshotRef: row.snapshotRef,
      fetch: this.countersOf(row.id),
    };
  }

  /** Chunks in which frozen volume `id` differs from frozen volume `base` (same chunk size). */
  /** The chunks frozen volume `id` holds with other content than frozen volume `base`, in volume order. */
  changedChunks(base: string, id: string): ChunkIndex[] {
    const a = this.snapshotOf(this.get(base).id);
    const changed: ChunkIndex[] = [];
    for (const [idx, digest] of this.snapshotOf(this.get(id).id)) if (a.get(idx) !== digest) changed.push(idx);
    return changed.sort((x, y) => x - y);
  }

  diffChunks(base: string, id: string): number {
    const a = this.snapshotOf(this.get(base).id);
    const b = this.snapshotOf(this.get(id).id);
    let n = 0;
    for (const [idx, digest] of b) if (a.get(idx) !== digest) n++;
    for (const idx of a.keys()) if (!b.has(idx)) n++;
    return n;
  }

  /** The local chunk cache: evictable bytes held, the limit, evictions so far. */
  cacheStats(): { bytes: number; chunks: number; limitBytes: number; evictions: number } {
    return this.chunks.stats();
  }

  /** Closes open volumes, saves statistics and the cache order, closes the metadata. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const o of this.open.values()) await o.volume.close();
    this.open.clear();
    await Promise.all(this.prefetching.values()); // no new wave starts once closed
    await this.chunks.close();
    for (const [id, c] of this.counters) if (this.metadata.getVolume(id)) this.metadata.saveFetchStats(id, c);
    this.metadata.close();
  }

  private async add(id: string, parent: VolumeId | null, size: number, chunkSize: number): Promise<VolumeRow> {
    this.assertNewId(id);
    // The sparse data file first: a crash leaves at worst an orphan file, never a row without one.
    const f = await openFile(this.dataPath(id), 'w');
    try {
      await f.truncate(size);
    } finally {
      await f.close();
    }
    this.metadata.insertVolume({ id, parent, size, chunkSize });
    return this.get(id);
  }

  /** A Volume backend over a row: its map, overrides and data file. */
  private async volumeOf(row: VolumeRow): Promise<Volume> {
    const snapshot = row.frozen ? this.snapshotOf(row.id) : this.baseOf(row);
    return new Volume({
      row,
      snapshot,
      overrides: row.frozen ? new Map() : this.metadata.overrides(row.id),
      data: row.frozen ? undefined : FileBackend.openLocal({ path: this.dataPath(row.id) }),
      chunks: this.chunks,
      metadata: this.metadata,
      readahead: this.options.readahead ?? 0,
      gapFillBytes: this.options.gapFillBytes,
      counters: this.countersOf(row.id),
      trace: this.traceOf(row.id),
    });
  }

  private traceOf(id: VolumeId): ReadTrace {
    let t = this.traces.get(id);
    if (!t) this.traces.set(id, (t = new ReadTrace()));
    return t;
  }

  /**
   * Fetches a just-opened snapshot's startup profile in the background, wave by wave in profile
   * order, counted as the volume's fetches. Failures are only logged: a chunk the profile
   * missed is fetched when read, as without a profile.
   */
  private async prefetchProfile(id: VolumeId, digests: Digest[]): Promise<void> {
    const counters = this.countersOf(id);
    const t0 = Date.now();
    let next = 0;
    const waves = async (): Promise<void> => {
      while (next < digests.length && !this.closed) {
        const wave = digests.slice(next, (next += PREFETCH_WAVE));
        await Promise.all(wave.map((d) => this.chunks.prefetch(d, counters)));
      }
    };
    await Promise.all(Array.from({ length: PREFETCH_WAVES_IN_FLIGHT }, waves));
    this.options.log?.info({ volume: id, chunks: digests.length, ms: Date.now() - t0 }, 'startup profile prefetched');
  }

  /** A writable volume's complete chunk map as of now: flushed, its own chunks stored here. */
  private async completeMap(volume: Volume): Promise<Map<ChunkIndex, Digest>> {
    const t0 = performance.now();
    await volume.flush();
    const t1 = performance.now();
    let written = 0;
    const map = await volume.materialize(async (data) => {
      written++;
      if (isAllZero(data)) return undefined;
      const digest = digestOf(data);
      await this.chunks.putUnsynced(digest, data);
      return digest;
    });
    const t2 = performance.now();
    await this.chunks.sync(); // one sync for all of them, before the map refers to them
    this.options.log?.debug(
      {
        written,
        flushMs: Math.round(t1 - t0),
        hashMs: Math.round(t2 - t1),
        syncMs: Math.round(performance.now() - t2),
      },
      'written chunks hashed and stored',
    );
    return map;
  }

  private countersOf(id: VolumeId): FetchCounters {
    let c = this.counters.get(id);
    if (!c) {
      c = new FetchCounters();
      const saved = this.metadata.fetchStats(id);
      if (saved) {
        c.chunksFetched = saved.chunksFetched;
        c.bytesFetched = saved.bytesFetched;
        c.fetchErrors = saved.fetchErrors;
        c.localHits = saved.localHits;
        saved.latency.forEach((n, i) => (c!.latency[i] = n));
      }
      this.counters.set(id, c);
    }
    return c;
  }

  /** A valid id that no volume has yet. */
  private assertNewId(id: string): asserts id is VolumeId {
    if (!isVolumeId(id)) {
      throw new InvalidArgumentError(`bad volume id ${JSON.stringify(id)}: letters, digits, . _ - (max 128)`, {
        context: { volume: id },
      });
    }
    if (this.metadata.getVolume(id))
      throw new ConflictError(`volume ${id} already exists`, { context: { volume: id } });
  }

  private requireStore(): BackingStore {
    if (!this.options.store) throw new ConfigError('no backing store configured (--store URL)');
    return this.options.store;
  }

  /** The frozen map a volume was cloned from (empty for one made from nothing). */
  private baseOf(row: VolumeRow): Map<ChunkIndex, Digest> {
    return row.parent ? this.snapshotOf(row.parent) : new Map();
  }

  private snapshotOf(id: VolumeId): Map<ChunkIndex, Digest> {
    let map = this.snapshots.get(id);
    if (!map) {
      map = this.metadata.snapshotMap(id);
      this.snapshots.set(id, map);
    }
    return map;
  }

  /** Where staged copies lie (a loop device on one is this host's own work, never adopted). */
  get stagingDir(): string {
    return join(this.root, 'staging');
  }

  private stagingPath(id: VolumeId): string {
    return join(this.stagingDir, `${id}.img`);
  }

  private dataPath(id: VolumeId): string {
    return join(this.root, 'data', `${id}.data`);
  }
}

/** Sets `key` as the most recently used entry of `reads`, which keeps the last WARM_BASES. */
function remember(reads: Map<VolumeId, ChunkIndex[]>, key: VolumeId, chunks: ChunkIndex[]): void {
  reads.delete(key); // re-inserted last: the most recently used
  reads.set(key, chunks);
  for (const old of reads.keys()) {
    if (reads.size <= WARM_BASES) break;
    reads.delete(old);
  }
}
