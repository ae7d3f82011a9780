/**
 * A backing store in memory, for running the layer core without a registry or a shared
 * directory. Chunks are located by digest alone (no packs); it counts what it served.
 */
import { digestOf, type Digest } from '../../common/digests.js';
import { NotFoundError } from '../../common/errors.js';
import type { BackingStore, StoredChunk, UploadCounts } from '../../stores/backing-store.js';

export class MemoryStore implements BackingStore {
  readonly url = `memory://${Math.random().toString(36).slice(2)}`;
  readonly packs = false;
  readonly chunks = new Map<Digest, Buffer>();
  readonly manifests = new Map<Digest, Buffer>();
  bytesServed = 0;

  async putChunks(chunks: StoredChunk[], counts?: UploadCounts): Promise<Map<Digest, string>> {
    for (const c of chunks) {
      if (this.chunks.has(c.digest) && counts) counts.skipped++;
      this.chunks.set(c.digest, Buffer.from(c.data));
    }
    return new Map(chunks.map((c) => [c.digest, '']));
  }

  async getChunks(wanted: { digest: Digest; hint: string }[]): Promise<Buffer[]> {
    return wanted.map(({ digest }) => {
      const data = this.chunks.get(digest);
      if (!data) throw new NotFoundError(`${this.url} has no chunk ${digest}`);
      this.bytesServed += data.length;
      return Buffer.from(data);
    });
  }

  async putManifest(manifest: Buffer, _hints?: Iterable<string>, chunksStored?: Promise<void>): Promise<Digest> {
    await chunksStored;
    const ref = digestOf(manifest);
    this.manifests.set(ref, Buffer.from(manifest));
    return ref;
  }

  async getManifest(ref: Digest): Promise<Buffer> {
    const m = this.manifests.get(ref);
    if (!m) throw new NotFoundError(`${this.url} has no manifest ${ref}`);
    return m;
  }
}
