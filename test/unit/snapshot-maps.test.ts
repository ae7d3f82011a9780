/**
 * Frozen volumes' chunk maps as one BLOB each (volumes/metadata.ts, schema 7): the encoding, and
 * the migration of a schema-6 database, whose maps were a row per chunk, with nothing lost.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, IoError } from '../../common/errors.js';
import { digestOf, type Digest } from '../../common/digests.js';
import { decodeSnapshotMap, encodeSnapshotMap, Metadata, SCHEMA_VERSION } from '../../volumes/metadata.js';
import { VolumeManager } from '../../volumes/manager.js';
import type { ChunkIndex, VolumeId } from '../../volumes/types.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';

const digest = (n: number): Digest => digestOf(Buffer.from(`chunk ${n}`));

describe('snapshot maps as one BLOB per frozen volume', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => {
    dir = await tempDir('slacker-maps-');
  });
  afterEach(async () => {
    await dir.cleanup();
  });

  it('encodes index and digest pairs and decodes them back, sparse and large indexes included', () => {
    const map = new Map<ChunkIndex, Digest>([
      [0, digest(0)],
      [7, digest(7)],
      [2 ** 32 - 1, digest(1)],
      [3, digest(0)], // a digest twice
    ]);
    const blob = encodeSnapshotMap(map);
    expect(blob).toHaveLength(4 * 36);
    expect(decodeSnapshotMap(blob)).toEqual(map);
    expect(decodeSnapshotMap(encodeSnapshotMap(new Map()))).toEqual(new Map());
  });

  it('refuses what is not a sha256 digest, and a BLOB that is not whole entries', () => {
    expect(() => encodeSnapshotMap(new Map([[1, 'sha512:00' as Digest]]))).toThrow(InvalidArgumentError);
    expect(() => encodeSnapshotMap(new Map([[1, `sha256:${'zz'.repeat(32)}` as Digest]]))).toThrow(
      InvalidArgumentError,
    );
    expect(() => decodeSnapshotMap(Buffer.alloc(37))).toThrow(IoError);
  });

  it('a frozen volume keeps its map across a reopen; removing it removes the map', async () => {
    const root = join(dir.path, 'volumes');
    let mgr = await VolumeManager.open(root);
    await mgr.create('v', 8 * 2 ** 20, { chunkSize: 64 * 1024 });
    const backend = await mgr.acquire('v');
    const data = randomBytes(3 * 64 * 1024, 7);
    await backend.pwrite!(data, 64 * 1024, { fua: false });
    await mgr.release('v');
    await mgr.freeze('v');
    await mgr.close();
    mgr = await VolumeManager.open(root);
    const frozen = await mgr.acquire('v');
    expect((await frozen.pread(data.length, 64 * 1024)).equals(data)).toBe(true);
    await mgr.release('v');
    await mgr.remove('v');
    await mgr.close();
    const db = new Database(join(root, 'metadata.db'), { readonly: true });
    try {
      expect(db.prepare('SELECT COUNT(*) FROM snapshot_maps').pluck().get()).toBe(0);
    } finally {
      db.close();
    }
  });

  it('a schema-6 database (a row per chunk) is migrated: every map whole, the old table gone', () => {
    const path = join(dir.path, 'old.db');
    // A schema-7 database taken back to schema 6 by hand: what an older slacker-ts left.
    new Metadata(path).close();
    const maps = new Map<string, Map<ChunkIndex, Digest>>([
      ['a', new Map([0, 5, 9].map((i) => [i, digest(i)]))],
      ['b', new Map(Array.from({ length: 3000 }, (_, i) => [i * 2, digest(i)]))],
    ]);
    const db = new Database(path);
    db.exec(`DROP TABLE snapshot_maps;
      CREATE TABLE snapshot_chunks (volume_id TEXT NOT NULL REFERENCES volumes(id), idx INTEGER NOT NULL,
        digest TEXT NOT NULL, PRIMARY KEY (volume_id, idx)) WITHOUT ROWID;
      UPDATE meta SET value = 6 WHERE key = 'schema_version';`);
    const volume = db.prepare(
      'INSERT INTO volumes (id, parent, size, chunk_size, frozen, created_at) VALUES (?, NULL, ?, 4096, 1, 0)',
    );
    const row = db.prepare('INSERT INTO snapshot_chunks (volume_id, idx, digest) VALUES (?, ?, ?)');
    for (const [id, map] of maps) {
      volume.run(id, 2 ** 30);
      for (const [idx, d] of map) row.run(id, idx, d);
    }
    volume.run('empty', 2 ** 30); // a frozen volume of holes only
    db.close();

    const meta = new Metadata(path);
    try {
      expect(meta.schemaVersion).toBe(SCHEMA_VERSION);
      for (const [id, map] of maps) expect(meta.snapshotMap(id as VolumeId)).toEqual(map);
      expect(meta.snapshotMap('empty' as VolumeId)).toEqual(new Map());
    } finally {
      meta.close();
    }
    const after = new Database(path, { readonly: true });
    try {
      const tables = after.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").pluck().all();
      expect(tables).toContain('snapshot_maps');
      expect(tables).not.toContain('snapshot_chunks');
    } finally {
      after.close();
    }
  });
});
