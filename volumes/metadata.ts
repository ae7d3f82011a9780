/**
 * Volume metadata in SQLite (better-sqlite3, WAL).
 *
 * On-disk design:
 *   volumes         one row per volume: parent (its frozen base), virtual size, chunk size,
 *                   whether it is frozen.
 *   snapshot_chunks the COMPLETE chunk map of every frozen volume: (volume, chunk index) ->
 *                   sha256 digest. Chunks not listed are holes. Materialised at freeze from the
 *                   base's map plus the volume's own writes, so a clone's reads consult at most
 *                   its own overrides and its base's map, however deep the clone chain.
 *   written_chunks  the overrides of a writable volume since it was cloned: (volume, index) ->
 *                   'data' (the bytes are in the volume's sparse data file at index*chunk_size)
 *                   or 'zero' (explicitly zeroed/trimmed: a hole that hides the base's chunk).
 *   meta            schema_version.
 *
 * Crash consistency: a 'data' override is committed only after the data file was fdatasync'ed,
 * so after a crash the map never points at bytes that did not reach the disk. Freeze is one
 * transaction. Migrations run in a transaction keyed on schema_version.
 */
import Database from 'better-sqlite3';
import type { ChunkIndex, Digest, VolumeId } from './types.js';

export interface VolumeRow {
  id: VolumeId;
  parent: VolumeId | null;
  size: number;
  chunkSize: number;
  frozen: boolean;
  createdAt: number;
}

export type Override = 'data' | 'zero';

const MIGRATIONS: string[] = [
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
];

export const SCHEMA_VERSION = MIGRATIONS.length;

interface RawVolume {
  id: string;
  parent: string | null;
  size: number;
  chunk_size: number;
  frozen: number;
  created_at: number;
}

function toRow(r: RawVolume): VolumeRow {
  return {
    id: r.id as VolumeId,
    parent: r.parent as VolumeId | null,
    size: r.size,
    chunkSize: r.chunk_size,
    frozen: r.frozen === 1,
    createdAt: r.created_at,
  };
}

export class Metadata {
  private readonly db: Database.Database;

  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL'); // a committed map must survive power loss
    this.db.pragma('foreign_keys = ON');
    this.migrate();
  }

  private migrate(): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)');
    const row = this.db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get() as
      { value: number } | undefined;
    const current = row?.value ?? 0;
    if (current > SCHEMA_VERSION) {
      throw new Error(`metadata schema ${current} is newer than this slacker-ts (${SCHEMA_VERSION})`);
    }
    this.db.transaction(() => {
      for (let v = current; v < SCHEMA_VERSION; v++) this.db.exec(MIGRATIONS[v]!);
      this.db
        .prepare("INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value = ?")
        .run(SCHEMA_VERSION, SCHEMA_VERSION);
    })();
  }

  get schemaVersion(): number {
    return (this.db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get() as { value: number }).value;
  }

  insertVolume(v: Omit<VolumeRow, 'createdAt' | 'frozen'>): void {
    this.db
      .prepare('INSERT INTO volumes (id, parent, size, chunk_size, frozen, created_at) VALUES (?, ?, ?, ?, 0, ?)')
      .run(v.id, v.parent, v.size, v.chunkSize, Date.now());
  }

  getVolume(id: VolumeId): VolumeRow | undefined {
    const r = this.db.prepare('SELECT * FROM volumes WHERE id = ?').get(id) as RawVolume | undefined;
    return r && toRow(r);
  }

  listVolumes(): VolumeRow[] {
    return (this.db.prepare('SELECT * FROM volumes ORDER BY created_at, id').all() as RawVolume[]).map(toRow);
  }

  children(id: VolumeId): VolumeId[] {
    return (this.db.prepare('SELECT id FROM volumes WHERE parent = ?').all(id) as { id: VolumeId }[]).map((r) => r.id);
  }

  snapshotMap(id: VolumeId): Map<ChunkIndex, Digest> {
    const rows = this.db.prepare('SELECT idx, digest FROM snapshot_chunks WHERE volume_id = ?').all(id) as {
      idx: number;
      digest: Digest;
    }[];
    return new Map(rows.map((r) => [r.idx, r.digest]));
  }

  overrides(id: VolumeId): Map<ChunkIndex, Override> {
    const rows = this.db.prepare('SELECT idx, kind FROM written_chunks WHERE volume_id = ?').all(id) as {
      idx: number;
      kind: Override;
    }[];
    return new Map(rows.map((r) => [r.idx, r.kind]));
  }

  /** Records overrides whose data is already durable. */
  commitOverrides(id: VolumeId, changes: Map<ChunkIndex, Override>): void {
    const upsert = this.db.prepare(
      'INSERT INTO written_chunks (volume_id, idx, kind) VALUES (?, ?, ?) ON CONFLICT(volume_id, idx) DO UPDATE SET kind = excluded.kind',
    );
    this.db.transaction(() => {
      for (const [idx, kind] of changes) upsert.run(id, idx, kind);
    })();
  }

  /** Atomically turns a writable volume into a frozen snapshot with the given complete map. */
  freeze(id: VolumeId, map: Map<ChunkIndex, Digest>): void {
    const insert = this.db.prepare('INSERT INTO snapshot_chunks (volume_id, idx, digest) VALUES (?, ?, ?)');
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM snapshot_chunks WHERE volume_id = ?').run(id);
      for (const [idx, digest] of map) insert.run(id, idx, digest);
      this.db.prepare('DELETE FROM written_chunks WHERE volume_id = ?').run(id);
      this.db.prepare('UPDATE volumes SET frozen = 1 WHERE id = ?').run(id);
    })();
  }

  deleteVolume(id: VolumeId): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM snapshot_chunks WHERE volume_id = ?').run(id);
      this.db.prepare('DELETE FROM written_chunks WHERE volume_id = ?').run(id);
      this.db.prepare('DELETE FROM volumes WHERE id = ?').run(id);
    })();
  }

  close(): void {
    this.db.close();
  }
}
