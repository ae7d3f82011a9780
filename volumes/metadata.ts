/**
 * Volume metadata in SQLite (better-sqlite3, WAL).
 *
 * On-disk design:
 *   volumes         one row per volume: parent (its frozen base), virtual size, chunk size,
 *                   whether it is frozen.
 *   snapshot_maps   the COMPLETE chunk map of every frozen volume, one BLOB per volume: (chunk
 *                   index, sha256 digest) pairs (encodeSnapshotMap). Chunks not listed are holes.
 *                   Materialised at freeze from the base's map plus the volume's own writes, so a
 *                   clone's reads consult at most its own overrides and its base's map, however
 *                   deep the clone chain. One row, not a row per chunk (snapshot_chunks until
 *                   schema 7): a map is only ever written, read and dropped whole, and a build
 *                   step's 2,760 rows cost 4-7 ms to insert against ~2 ms for the blob, at every
 *                   commit (twice: the publish copy and the marker's layer) and every pull.
 *   written_chunks  the overrides of a writable volume since it was cloned: (volume, index) ->
 *                   'data' (the bytes are in the volume's sparse data file at index*chunk_size)
 *                   or 'zero' (explicitly zeroed/trimmed: a hole that hides the base's chunk).
 *   chunk_locations (store URL, digest) -> location hint: the chunks known to be in a backing
 *                   store (published from here, or listed in a manifest opened from there), so
 *                   publishing a clone uploads only chunks the store does not have.
 *   cached_chunks   local chunks that may be evicted because the backing store has them
 *                   (fetched from it, or published to it), with their size and last use.
 *                   Chunks that exist only here are never listed, so never evicted.
 *   segment_chunks  where fetched chunks lie in the cache's segment files (segment number,
 *                   offset, length): recorded only after the segment was fdatasync'ed.
 *   fetch_stats     per volume: what its reads fetched (chunks, bytes, errors, local hits,
 *                   latency histogram as JSON), saved when a volume is released or the
 *                   manager closes, so stats outlive the process that served the volume.
 *   volumes.snapshot_ref  the reference (manifest digest) a frozen volume was published as or
 *                   opened from.
 *   meta            schema_version.
 *
 * Crash consistency: a 'data' override is committed only after the data file was fdatasync'ed,
 * so after a crash the map never points at bytes that did not reach the disk. Freeze is one
 * transaction. Migrations run in a transaction keyed on schema_version.
 */
import type { SegmentCatalog, SegmentChunk } from './chunks/cache-segments.js';
import { ConfigError, InvalidArgumentError, IoError } from '../common/errors.js';
import Database from 'better-sqlite3';
import { isDigest, rawDigestAt, writeRawDigest, type Digest } from '../common/digests.js';
import type { ChunkIndex, VolumeId } from './types.js';

/** One snapshot map entry in a snapshot_maps BLOB: the index (uint32 LE), then the digest's 32 bytes. */
const MAP_ENTRY = 36;

/** A frozen volume's chunk map as snapshot_maps keeps it. */
export function encodeSnapshotMap(map: ReadonlyMap<ChunkIndex, Digest>): Buffer {
  const out = Buffer.allocUnsafe(map.size * MAP_ENTRY);
  let at = 0;
  for (const [idx, digest] of map) {
    if (!isDigest(digest)) throw new InvalidArgumentError(`not a sha256 digest: ${digest}`, { context: { idx } });
    out.writeUInt32LE(idx, at);
    writeRawDigest(digest, out, at + 4);
    at += MAP_ENTRY;
  }
  return out;
}

export function decodeSnapshotMap(blob: Buffer): Map<ChunkIndex, Digest> {
  if (blob.length % MAP_ENTRY !== 0)
    throw new IoError(`a snapshot map of ${blob.length} bytes is not whole entries of ${MAP_ENTRY}`);
  const map = new Map<ChunkIndex, Digest>();
  for (let at = 0; at < blob.length; at += MAP_ENTRY) map.set(blob.readUInt32LE(at), rawDigestAt(blob, at + 4));
  return map;
}

export interface VolumeRow {
  id: VolumeId;
  parent: VolumeId | null;
  size: number;
  chunkSize: number;
  frozen: boolean;
  createdAt: number;
  /** The published reference of a frozen volume, if it was published or opened from a store. */
  snapshotRef: Digest | null;
}

export type Override = 'data' | 'zero';

/** A fetched chunk's place in the cache's segment files (cache-segments.ts). */
export type { SegmentChunk };

/** Each schema version's change: SQL, or a function for one that moves data. */
const MIGRATIONS: (string | ((db: Database.Database) => void))[] = [
  // 1: initial schema
  `CREATE TABLE volumes (
     id TEXT PRIMARY KEY,
     parent TEXT REFERENCES volumes(id),
     size INTEGER NOT NULL,
     chunk_size INTEGER NOT NULL,
     frozen INTEGER NOT NULL DEFAULT 0,
     created_at INTEGER NOT NULL
   );
   CREATE INDEX volumes_parent ON volumes(parent);
   CREATE TABLE snapshot_chunks (
     volume_id TEXT NOT NULL REFERENCES volumes(id),
     idx INTEGER NOT NULL,
     digest TEXT NOT NULL,
     PRIMARY KEY (volume_id, idx)
   ) WITHOUT ROWID;
   CREATE TABLE written_chunks (
     volume_id TEXT NOT NULL REFERENCES volumes(id),
     idx INTEGER NOT NULL,
     kind TEXT NOT NULL CHECK (kind IN ('data', 'zero')),
     PRIMARY KEY (volume_id, idx)
   ) WITHOUT ROWID;`,
  // 2: published snapshots and where their chunks live
  `ALTER TABLE volumes ADD COLUMN snapshot_ref TEXT;
   CREATE TABLE chunk_locations (
     store TEXT NOT NULL,
     digest TEXT NOT NULL,
     hint TEXT NOT NULL,
     PRIMARY KEY (store, digest)
   ) WITHOUT ROWID;`,
  // 3: the evictable part of the local chunk store
  `CREATE TABLE cached_chunks (
     digest TEXT PRIMARY KEY,
     size INTEGER NOT NULL,
     last_used INTEGER NOT NULL
   ) WITHOUT ROWID;`,
  // 4: fetch statistics that outlive the serving process
  `CREATE TABLE fetch_stats (
     volume_id TEXT PRIMARY KEY REFERENCES volumes(id),
     chunks_fetched INTEGER NOT NULL,
     bytes_fetched INTEGER NOT NULL,
     fetch_errors INTEGER NOT NULL,
     local_hits INTEGER NOT NULL,
     latency TEXT NOT NULL
   ) WITHOUT ROWID;`,
  // 5: fetched chunks kept in segment files rather than a file each
  `CREATE TABLE segment_chunks (
     digest TEXT PRIMARY KEY,
     segment INTEGER NOT NULL,
     offset INTEGER NOT NULL,
     length INTEGER NOT NULL
   ) WITHOUT ROWID;`,
  // 6: chunks made by a staged freeze kept in the staged file (a pack) rather than a file each
  `CREATE TABLE pack_chunks (
     digest TEXT PRIMARY KEY,
     segment INTEGER NOT NULL,
     offset INTEGER NOT NULL,
     length INTEGER NOT NULL
   ) WITHOUT ROWID;`,
  // 7: a frozen volume's map as one BLOB instead of a row per chunk
  (db) => {
    db.exec(`CREATE TABLE snapshot_maps (
       volume_id TEXT PRIMARY KEY REFERENCES volumes(id),
       map BLOB NOT NULL
     ) WITHOUT ROWID;`);
    const rows = db.prepare('SELECT idx, digest FROM snapshot_chunks WHERE volume_id = ?');
    const insert = db.prepare('INSERT INTO snapshot_maps (volume_id, map) VALUES (?, ?)');
    const ids = db.prepare('SELECT DISTINCT volume_id FROM snapshot_chunks').pluck().all() as string[];
    for (const id of ids) {
      const map = new Map((rows.all(id) as { idx: number; digest: Digest }[]).map((r) => [r.idx, r.digest]));
      insert.run(id, encodeSnapshotMap(map));
    }
    db.exec('DROP TABLE snapshot_chunks');
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;

interface RawVolume {
  id: string;
  parent: string | null;
  size: number;
  chunk_size: number;
  frozen: number;
  created_at: number;
  snapshot_ref: string | null;
}

function toRow(r: RawVolume): VolumeRow {
  return {
    id: r.id as VolumeId,
    parent: r.parent as VolumeId | null,
    size: r.size,
    chunkSize: r.chunk_size,
    frozen: r.frozen === 1,
    createdAt: r.created_at,
    snapshotRef: r.snapshot_ref as Digest | null,
  };
}

export class Metadata {
  private readonly db: Database.Database;
  /** Prepared statements by their SQL: preparing one costs more than running it. */
  private readonly statements = new Map<string, Database.Statement>();

  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL'); // a committed map must survive power loss
    this.db.pragma('foreign_keys = ON');
    this.migrate();
  }

  private sql(text: string): Database.Statement {
    let statement = this.statements.get(text);
    if (!statement) {
      statement = this.db.prepare(text);
      this.statements.set(text, statement);
    }
    return statement;
  }

  /** Runs a one-parameter statement for each value, in one transaction (one sync for all). */
  private runForEach(text: string, values: readonly string[]): void {
    if (values.length === 0) return;
    const statement = this.sql(text);
    this.db.transaction(() => {
      for (const v of values) statement.run(v);
    })();
  }

  private migrate(): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)');
    const row = this.sql("SELECT value FROM meta WHERE key = 'schema_version'").get() as { value: number } | undefined;
    const current = row?.value ?? 0;
    if (current > SCHEMA_VERSION) {
      throw new ConfigError(`metadata schema ${current} is newer than this slacker-ts (${SCHEMA_VERSION})`);
    }
    this.db.transaction(() => {
      for (let v = current; v < SCHEMA_VERSION; v++) {
        const step = MIGRATIONS[v]!;
        if (typeof step === 'string') this.db.exec(step);
        else step(this.db);
      }
      this.sql(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value = ?",
      ).run(SCHEMA_VERSION, SCHEMA_VERSION);
    })();
  }

  get schemaVersion(): number {
    return (this.sql("SELECT value FROM meta WHERE key = 'schema_version'").get() as { value: number }).value;
  }

  insertVolume(v: Omit<VolumeRow, 'createdAt' | 'frozen' | 'snapshotRef'>): void {
    this.sql('INSERT INTO volumes (id, parent, size, chunk_size, frozen, created_at) VALUES (?, ?, ?, ?, 0, ?)').run(
      v.id,
      v.parent,
      v.size,
      v.chunkSize,
      Date.now(),
    );
  }

  getVolume(id: VolumeId): VolumeRow | undefined {
    const r = this.sql('SELECT * FROM volumes WHERE id = ?').get(id) as RawVolume | undefined;
    return r && toRow(r);
  }

  listVolumes(): VolumeRow[] {
    return (this.sql('SELECT * FROM volumes ORDER BY created_at, id').all() as RawVolume[]).map(toRow);
  }

  children(id: VolumeId): VolumeId[] {
    return (this.sql('SELECT id FROM volumes WHERE parent = ?').all(id) as { id: VolumeId }[]).map((r) => r.id);
  }

  snapshotMap(id: VolumeId): Map<ChunkIndex, Digest> {
    const r = this.sql('SELECT map FROM snapshot_maps WHERE volume_id = ?').get(id) as { map: Buffer } | undefined;
    return r ? decodeSnapshotMap(r.map) : new Map();
  }

  overrides(id: VolumeId): Map<ChunkIndex, Override> {
    const rows = this.sql('SELECT idx, kind FROM written_chunks WHERE volume_id = ?').all(id) as {
      idx: number;
      kind: Override;
    }[];
    return new Map(rows.map((r) => [r.idx, r.kind]));
  }

  /** Records overrides whose data is already durable. */
  commitOverrides(id: VolumeId, changes: Map<ChunkIndex, Override>): void {
    const upsert = this.sql(
      'INSERT INTO written_chunks (volume_id, idx, kind) VALUES (?, ?, ?) ON CONFLICT(volume_id, idx) DO UPDATE SET kind = excluded.kind',
    );
    this.db.transaction(() => {
      for (const [idx, kind] of changes) upsert.run(id, idx, kind);
    })();
  }

  /** Atomically turns a writable volume into a frozen snapshot with the given complete map. */
  freeze(id: VolumeId, map: Map<ChunkIndex, Digest>): void {
    const blob = encodeSnapshotMap(map);
    this.db.transaction(() => {
      this.sql(
        'INSERT INTO snapshot_maps (volume_id, map) VALUES (?, ?) ON CONFLICT(volume_id) DO UPDATE SET map = excluded.map',
      ).run(id, blob);
      this.sql('DELETE FROM written_chunks WHERE volume_id = ?').run(id);
      this.sql('UPDATE volumes SET frozen = 1 WHERE id = ?').run(id);
    })();
  }

  /** A frozen volume with no parent and the given complete map, in one go (a snapshot copy). */
  insertFrozen(
    v: Omit<VolumeRow, 'createdAt' | 'frozen' | 'parent' | 'snapshotRef'>,
    map: Map<ChunkIndex, Digest>,
  ): void {
    this.db.transaction(() => this.insertFrozenRows(v, null, map))();
  }

  /** A frozen volume made from a published snapshot, with where its chunks are, in one go. */
  insertSnapshot(
    v: Omit<VolumeRow, 'createdAt' | 'frozen' | 'parent'> & { snapshotRef: Digest },
    map: Map<ChunkIndex, Digest>,
    store: string,
    hints: Map<Digest, string>,
  ): void {
    this.db.transaction(() => {
      this.insertFrozenRows(v, v.snapshotRef, map);
      this.recordLocations(store, hints);
    })();
  }

  /** The rows of a parentless frozen volume (call inside a transaction). */
  private insertFrozenRows(
    v: Pick<VolumeRow, 'id' | 'size' | 'chunkSize'>,
    ref: Digest | null,
    map: Map<ChunkIndex, Digest>,
  ): void {
    this.sql(
      'INSERT INTO volumes (id, parent, size, chunk_size, frozen, created_at, snapshot_ref) VALUES (?, NULL, ?, ?, 1, ?, ?)',
    ).run(v.id, v.size, v.chunkSize, Date.now(), ref);
    this.sql('INSERT INTO snapshot_maps (volume_id, map) VALUES (?, ?)').run(v.id, encodeSnapshotMap(map));
  }

  setSnapshotRef(id: VolumeId, ref: Digest): void {
    this.sql('UPDATE volumes SET snapshot_ref = ? WHERE id = ?').run(ref, id);
  }

  recordLocations(store: string, hints: Map<Digest, string>): void {
    const upsert = this.sql(
      'INSERT INTO chunk_locations (store, digest, hint) VALUES (?, ?, ?) ON CONFLICT(store, digest) DO UPDATE SET hint = excluded.hint',
    );
    this.db.transaction(() => {
      for (const [digest, hint] of hints) upsert.run(store, digest, hint);
    })();
  }

  /** The location hint of a chunk in a store, or undefined if not known to be there. */
  locationOf(store: string, digest: Digest): string | undefined {
    const r = this.sql('SELECT hint FROM chunk_locations WHERE store = ? AND digest = ?').get(store, digest) as
      { hint: string } | undefined;
    return r?.hint;
  }

  /**
   * locationOf for several chunks, in one read transaction: each statement outside one takes
   * and drops the database's shared lock (a sequential reader looks up a pack's worth at once).
   */
  locationsOf(store: string, digests: readonly Digest[]): (string | undefined)[] {
    if (digests.length <= 1) return digests.map((d) => this.locationOf(store, d));
    return this.db.transaction(() => digests.map((d) => this.locationOf(store, d)))();
  }

  /** Evictable chunks, least recently used first. */
  cachedChunks(): { digest: Digest; size: number }[] {
    return this.sql('SELECT digest, size FROM cached_chunks ORDER BY last_used, digest').all() as {
      digest: Digest;
      size: number;
    }[];
  }

  /** Records evictable chunks with their last use (insert or refresh). */
  touchCached(entries: { digest: Digest; size: number; lastUsed: number }[]): void {
    const upsert = this.sql(
      'INSERT INTO cached_chunks (digest, size, last_used) VALUES (?, ?, ?) ON CONFLICT(digest) DO UPDATE SET last_used = excluded.last_used',
    );
    this.db.transaction(() => {
      for (const e of entries) upsert.run(e.digest, e.size, e.lastUsed);
    })();
  }

  /** Forgets evicted chunks, in one transaction. */
  forgetCached(digests: readonly Digest[]): void {
    this.runForEach('DELETE FROM cached_chunks WHERE digest = ?', digests);
  }

  /** Where recorded fetched chunks lie in the cache's segment files. */
  segmentChunks(): SegmentChunk[] {
    return this.placesIn('segment_chunks');
  }

  /** Records chunks whose segment files were synced. */
  recordSegmentChunks(entries: readonly SegmentChunk[]): void {
    this.recordPlaces('segment_chunks', entries);
  }

  /** Forgets where chunks lay in the segments, in one transaction (one sync, however many). */
  forgetSegmentChunks(digests: readonly Digest[]): void {
    this.runForEach('DELETE FROM segment_chunks WHERE digest = ?', digests);
  }

  /**
   * The packs' catalog (chunks a staged freeze made, in the files they were frozen from): the
   * same shape as the segments', another table, so a pack's chunks are never taken for
   * fetched ones (which are all evictable).
   */
  get packCatalog(): SegmentCatalog {
    return {
      segmentChunks: () => this.placesIn('pack_chunks'),
      recordSegmentChunks: (entries) => this.recordPlaces('pack_chunks', entries),
      forgetSegmentChunks: (digests) => this.runForEach('DELETE FROM pack_chunks WHERE digest = ?', digests),
    };
  }

  private placesIn(table: 'segment_chunks' | 'pack_chunks'): SegmentChunk[] {
    return this.sql(`SELECT digest, segment, offset, length FROM ${table}`).all() as SegmentChunk[];
  }

  private recordPlaces(table: 'segment_chunks' | 'pack_chunks', entries: readonly SegmentChunk[]): void {
    const insert = this.sql(`INSERT OR REPLACE INTO ${table} (digest, segment, offset, length) VALUES (?, ?, ?, ?)`);
    this.db.transaction(() => {
      for (const e of entries) insert.run(e.digest, e.segment, e.offset, e.length);
    })();
  }

  fetchStats(
    id: VolumeId,
  ):
    | { chunksFetched: number; bytesFetched: number; fetchErrors: number; localHits: number; latency: number[] }
    | undefined {
    const r = this.sql('SELECT * FROM fetch_stats WHERE volume_id = ?').get(id) as
      | { chunks_fetched: number; bytes_fetched: number; fetch_errors: number; local_hits: number; latency: string }
      | undefined;
    return (
      r && {
        chunksFetched: r.chunks_fetched,
        bytesFetched: r.bytes_fetched,
        fetchErrors: r.fetch_errors,
        localHits: r.local_hits,
        latency: JSON.parse(r.latency) as number[],
      }
    );
  }

  saveFetchStats(
    id: VolumeId,
    c: { chunksFetched: number; bytesFetched: number; fetchErrors: number; localHits: number; latency: number[] },
  ): void {
    this.sql(
      `INSERT INTO fetch_stats (volume_id, chunks_fetched, bytes_fetched, fetch_errors, local_hits, latency)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT(volume_id) DO UPDATE SET chunks_fetched = excluded.chunks_fetched, bytes_fetched = excluded.bytes_fetched,
           fetch_errors = excluded.fetch_errors, local_hits = excluded.local_hits, latency = excluded.latency`,
    ).run(id, c.chunksFetched, c.bytesFetched, c.fetchErrors, c.localHits, JSON.stringify(c.latency));
  }

  deleteVolume(id: VolumeId): void {
    this.db.transaction(() => {
      this.sql('DELETE FROM fetch_stats WHERE volume_id = ?').run(id);
      this.sql('DELETE FROM snapshot_maps WHERE volume_id = ?').run(id);
      this.sql('DELETE FROM written_chunks WHERE volume_id = ?').run(id);
      this.sql('DELETE FROM volumes WHERE id = ?').run(id);
    })();
  }

  close(): void {
    this.db.close();
  }
}
