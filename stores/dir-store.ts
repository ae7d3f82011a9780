/**
 * dir:// backing store: a directory, local or an NFS mount shared by several hosts, as in
 * Slacker.
 *
 *   DIR/chunks/ab/cdef...        one file per chunk, named by its SHA-256 (fan-out by 2 hex)
 *   DIR/snapshots/ab/cdef....json snapshot manifests, named by their SHA-256
 *
 * Every file is written under a temporary name, synced and renamed, so readers on other hosts
 * see a complete file or none.
 */
import { mkdir, readdir, readFile, rm, stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { IoError } from '../common/errors.js';
import { writeFileAtomically } from '../common/fileops.js';
import { digestOf, type Digest } from '../common/digests.js';
import type { BackingStore, StoredChunk, StoredObject, UploadCounts } from './backing-store.js';

export class DirStore implements BackingStore {
  constructor(readonly root: string) {}

  get url(): string {
    return `dir://${this.root}`;
  }

  readonly packs = false;

  /** The store's directory is there (a missing mount of a shared directory shows here). */
  async check(): Promise<void> {
    const st = await stat(this.root).catch((err: unknown) => {
      throw new IoError(
        `store directory ${this.root} is not reachable (nothing published there yet, or its file system is not mounted)`,
        { cause: err },
      );
    });
    if (!st.isDirectory()) throw new IoError(`store ${this.root} is not a directory`);
  }

  async putChunks(chunks: StoredChunk[], counts?: UploadCounts): Promise<Map<Digest, string>> {
    const out = new Map<Digest, string>();
    for (const c of chunks) {
      if (!(await this.putFile(this.path('chunks', c.digest), c.data)) && counts) counts.skipped++;
      out.set(c.digest, '');
    }
    return out;
  }

  getChunks(wanted: { digest: Digest; hint: string }[], signal?: AbortSignal): Promise<Buffer[]> {
    return Promise.all(wanted.map((w) => readFile(this.path('chunks', w.digest), { signal })));
  }

  async putManifest(manifest: Buffer, _hints?: Iterable<string>, chunksStored?: Promise<void>): Promise<Digest> {
    await chunksStored;
    const ref = digestOf(manifest);
    await this.putFile(this.path('snapshots', ref, '.json'), manifest);
    return ref;
  }

  getManifest(ref: Digest): Promise<Buffer> {
    return readFile(this.path('snapshots', ref, '.json'));
  }

  private path(kind: string, digest: Digest, suffix = ''): string {
    const hex = digest.slice('sha256:'.length);
    return join(this.root, kind, hex.slice(0, 2), hex.slice(2) + suffix);
  }

  async *inventory(): AsyncIterable<StoredObject> {
    for (const [kind, dir, suffix] of [
      ['manifest', 'snapshots', '.json'],
      ['chunk', 'chunks', ''],
    ] as const) {
      const fans = await readdir(join(this.root, dir)).catch(() => [] as string[]);
      for (const fan of fans.filter((f) => /^[0-9a-f]{2}$/.test(f))) {
        for (const name of await readdir(join(this.root, dir, fan))) {
          const hex = fan + name.slice(0, name.length - suffix.length);
          if (!name.endsWith(suffix) || !/^[0-9a-f]{64}$/.test(hex)) continue; // a temporary file, or not ours
          const st = await stat(join(this.root, dir, fan, name)).catch(() => undefined);
          if (st) yield { kind, digest: `sha256:${hex}` as Digest, bytes: st.size, modified: st.mtimeMs };
        }
      }
    }
  }

  async removeChunk(digest: Digest): Promise<void> {
    await rm(this.path('chunks', digest), { force: true });
  }

  /** Writes the file unless it exists; true if it was written. */
  private async putFile(path: string, data: Buffer): Promise<boolean> {
    if (
      await stat(path).then(
        () => true,
        () => false,
      )
    ) {
      // Content-addressed: already there. Marked as just written, so that a garbage collection
      // running now counts it as young (its grace period) until this publish's manifest lands.
      const now = new Date();
      await utimes(path, now, now).catch(() => undefined);
      return false;
    }
    await mkdir(join(path, '..'), { recursive: true });
    await writeFileAtomically(path, data, { durable: true });
    return true;
  }
}
