/**
 * The containerd front end's own metadata: containerd's snapshots (keys, kinds, parents,
 * labels) and the layer each one is, in SQLite (better-sqlite3, WAL). containerd keys are
 * arbitrary strings ("default/4/extract-123 sha256:..."), layer ids are not, so each snapshot
 * gets a layer id of its own. Kept apart from the volume metadata: the layer core knows layers,
 * this file knows containerd's names for them (containerd's storage/metastore does the same job
 * for its built-in snapshotters).
 *
 * On-disk design:
 *   snapshots  key (an active snapshot's or view's key, a committed one's name) -> layer id,
 *              kind (1 view, 2 active, 3 committed, containerd's numbers), parent key ('' for
 *              none; always a committed snapshot), labels (JSON), created and updated (ms).
 *   meta       schema_version.
 * Every call is one transaction: List and Usage read rows only, never a layer.
 */
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import {
  AlreadyExistsError,
  ConfigError,
  ConflictError,
  InvalidArgumentError,
  NotFoundError,
} from '../common/errors.js';

export type SnapshotKind = 'view' | 'active' | 'committed';

const KIND_NUMBER: Record<SnapshotKind, number> = { view: 1, active: 2, committed: 3 };
const KIND_NAME: Record<number, SnapshotKind> = { 1: 'view', 2: 'active', 3: 'committed' };

export interface SnapshotInfo {
  key: string;
  /** The layer (volume) this snapshot is. */
  layer: string;
  kind: SnapshotKind;
  /** The parent's key, '' for none. */
  parent: string;
  labels: Record<string, string>;
  created: number;
  updated: number;
}

interface Row {
  key: string;
  layer: string;
  kind: number;
  parent: string;
  labels: string;
  created: number;
  updated: number;
}

const SCHEMA_VERSION = 1;
/** containerd: a label's key and value together may not exceed 4096 bytes. */
const MAX_LABEL_BYTES = 4096;

export class SnapshotMetastore {
  private readonly db: Database.Database;

  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS snapshots (
        key TEXT PRIMARY KEY,
        layer TEXT NOT NULL UNIQUE,
        kind INTEGER NOT NULL,
        parent TEXT NOT NULL,
        labels TEXT NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
      );
      CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots (parent);
    `);
    const v = this.db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get() as
      { value: string } | undefined;
    if (!v) this.db.prepare("INSERT INTO meta VALUES ('schema_version', ?)").run(String(SCHEMA_VERSION));
    else if (Number(v.value) > SCHEMA_VERSION) {
      throw new ConfigError(`snapshot metadata schema ${v.value} is newer than this slacker-ts (${SCHEMA_VERSION})`);
    }
  }

  close(): void {
    this.db.close();
  }

  get(key: string): SnapshotInfo {
    const row = this.db.prepare('SELECT * FROM snapshots WHERE key = ?').get(key) as Row | undefined;
    if (!row) throw new NotFoundError(`snapshot ${JSON.stringify(key)} does not exist`, { context: { key } });
    return toInfo(row);
  }

  /**
   * The snapshot containerd knows as `name` in `namespace` (its backend key is
   * `<namespace>/<n>/<name>`), if any.
   */
  byName(namespace: string, name: string): SnapshotInfo | undefined {
    const rows = this.db
      .prepare('SELECT * FROM snapshots WHERE substr(key, 1, ?) = ? AND substr(key, -?) = ?')
      .all(namespace.length + 1, `${namespace}/`, name.length + 1, `/${name}`) as Row[];
    const exact = rows.filter((r) => /^\d+$/.test(r.key.slice(namespace.length + 1, r.key.length - name.length - 1)));
    return exact[0] && toInfo(exact[0]);
  }

  /** The snapshot that is layer `layer`, if any. */
  byLayer(layer: string): SnapshotInfo | undefined {
    const row = this.db.prepare('SELECT * FROM snapshots WHERE layer = ?').get(layer) as Row | undefined;
    return row && toInfo(row);
  }

  has(key: string): boolean {
    return this.db.prepare('SELECT 1 FROM snapshots WHERE key = ?').get(key) !== undefined;
  }

  list(): SnapshotInfo[] {
    return (this.db.prepare('SELECT * FROM snapshots ORDER BY key').all() as Row[]).map(toInfo);
  }

  /**
   * Records a new active snapshot or view: the key must be new and the parent ('' for none)
   * committed. Returns it with a fresh layer id; the caller makes the layer.
   */
  create(key: string, parent: string, kind: 'active' | 'view', labels: Record<string, string>): SnapshotInfo {
    checkKey(key);
    checkLabels(labels);
    return this.db.transaction(() => {
      if (this.has(key))
        throw new AlreadyExistsError(`snapshot ${JSON.stringify(key)} already exists`, { context: { key } });
      if (parent !== '') {
        const p = this.get(parent);
        if (p.kind !== 'committed') {
          throw new InvalidArgumentError(`parent ${JSON.stringify(parent)} is not a committed snapshot`, {
            context: { key, parent },
          });
        }
      }
      const now = Date.now();
      const row: Row = {
        key,
        layer: `ctrd-${randomBytes(10).toString('hex')}`,
        kind: KIND_NUMBER[kind],
        parent,
        labels: JSON.stringify(labels),
        created: now,
        updated: now,
      };
      this.db
        .prepare('INSERT INTO snapshots VALUES (@key, @layer, @kind, @parent, @labels, @created, @updated)')
        .run(row);
      return toInfo(row);
    })();
  }

  /** Active `key` becomes committed `name` (same layer), with `labels` if any are given. */
  commit(key: string, name: string, labels: Record<string, string>): SnapshotInfo {
    checkKey(name);
    checkLabels(labels);
    return this.db.transaction(() => {
      const s = this.get(key);
      if (s.kind !== 'active') {
        throw new ConflictError(
          `snapshot ${JSON.stringify(key)} is ${s.kind}, not active: only an active one commits`,
          {
            context: { key },
          },
        );
      }
      if (this.has(name))
        throw new AlreadyExistsError(`snapshot ${JSON.stringify(name)} already exists`, { context: { name } });
      const now = Date.now();
      const merged = Object.keys(labels).length > 0 ? labels : s.labels;
      this.db
        .prepare('UPDATE snapshots SET key = ?, kind = ?, labels = ?, updated = ? WHERE key = ?')
        .run(name, KIND_NUMBER.committed, JSON.stringify(merged), now, key);
      return this.get(name);
    })();
  }

  /** Forgets a snapshot that has no children; returns it (the caller removes its layer). */
  remove(key: string): SnapshotInfo {
    return this.db.transaction(() => {
      const s = this.get(key);
      const child = this.db.prepare('SELECT key FROM snapshots WHERE parent = ? LIMIT 1').get(key) as
        { key: string } | undefined;
      if (child) {
        throw new ConflictError(
          `snapshot ${JSON.stringify(key)} has children (${JSON.stringify(child.key)}): remove them first`,
          {
            context: { key, child: child.key },
          },
        );
      }
      this.db.prepare('DELETE FROM snapshots WHERE key = ?').run(key);
      return s;
    })();
  }

  /** Sets labels (all of them, or those the mask names: `labels` or `labels.NAME`). */
  updateLabels(key: string, labels: Record<string, string>, paths: string[]): SnapshotInfo {
    checkLabels(labels);
    return this.db.transaction(() => {
      const s = this.get(key);
      let next: Record<string, string>;
      if (paths.length === 0 || paths.includes('labels')) next = { ...labels };
      else {
        next = { ...s.labels };
        for (const p of paths) {
          if (!p.startsWith('labels.')) {
            throw new InvalidArgumentError(`cannot update ${JSON.stringify(p)}: only labels can change`, {
              context: { key, path: p },
            });
          }
          const name = p.slice('labels.'.length);
          if (labels[name] === undefined || labels[name] === '') delete next[name];
          else next[name] = labels[name];
        }
      }
      this.db
        .prepare('UPDATE snapshots SET labels = ?, updated = ? WHERE key = ?')
        .run(JSON.stringify(next), Date.now(), key);
      return this.get(key);
    })();
  }
}

function toInfo(r: Row): SnapshotInfo {
  return {
    key: r.key,
    layer: r.layer,
    kind: KIND_NAME[r.kind] ?? 'active',
    parent: r.parent,
    labels: JSON.parse(r.labels) as Record<string, string>,
    created: r.created,
    updated: r.updated,
  };
}

function checkKey(key: string): void {
  if (key === '') throw new InvalidArgumentError('a snapshot key cannot be empty');
}

function checkLabels(labels: Record<string, string>): void {
  for (const [k, v] of Object.entries(labels)) {
    if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL_BYTES) {
      throw new InvalidArgumentError(`label ${JSON.stringify(k.slice(0, 64))} is over ${MAX_LABEL_BYTES} bytes`);
    }
  }
}
