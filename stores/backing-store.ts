/**
 * A backing store holds published chunks and snapshot manifests, shared by every host that
 * pulls from it. Implementations are chosen by URL (see open-store.ts): `dir:///path` (a local
 * or NFS directory) and, next, `oci://host:port/repository` (any OCI distribution registry).
 *
 * Chunks are addressed by their SHA-256 digest. A store may keep them packed: `putChunks`
 * returns, per chunk, an opaque location hint that is recorded in the snapshot manifest and
 * handed back to `getChunk`. Callers verify every chunk against its digest; stores need not.
 */
import type { Digest } from '../common/digests.js';

export interface StoredChunk {
  digest: Digest;
  data: Buffer;
}

/** What a store holds, for garbage collection (`slacker-ts gc`). */
export interface StoredObject {
  kind: 'chunk' | 'manifest';
  digest: Digest;
  bytes: number;
  /** When it was last written (or reused by a publish): ms since the epoch. */
  modified: number;
}

/** Chunks packed for a store, not yet in it (BackingStore.prepareChunks). */
export interface PreparedChunks {
  /** Where each chunk will be once stored: what putChunks would answer. */
  readonly hints: Map<Digest, string>;
  /** Stores them; `counts` as putChunks's. */
  put(counts?: UploadCounts): Promise<void>;
}

/** What an upload found already in the store (BackingStore.putChunks). */
export interface UploadCounts {
  skipped: number;
}

export interface BackingStore {
  /** The store's URL, for logs and for recording where chunks were published. */
  readonly url: string;
  /**
   * Whether chunks live in packs read by range: then where a chunk sits matters, and a startup
   * profile is worth a pack of its own, in profile order (VolumeManager.publish).
   */
  readonly packs: boolean;
  /**
   * Uploads chunks; returns a location hint per digest ('' when the digest alone locates it).
   * `counts.skipped` goes up by the chunks the store already held and did not take again (a
   * chunk file that exists; every chunk of a pack blob the registry has).
   */
  putChunks(chunks: StoredChunk[], counts?: UploadCounts): Promise<Map<Digest, string>>;
  /**
   * putChunks in two steps: the chunks packed and their hints known at once, stored by `put`,
   * so that a publish uploads its manifest while its last pack uploads (VolumeManager.publish).
   * Optional: a store without it is written with putChunks alone.
   */
  prepareChunks?(chunks: StoredChunk[]): Promise<PreparedChunks>;
  /**
   * Fetches chunks (unverified), in the order asked, in as few requests as the store's layout
   * allows (adjacent chunks of a pack in one range). A store error fails them all; honours
   * `signal`. A store may receive bytes into buffers from `allocate` (pooled: the caller gives
   * them back once it is done with the chunks).
   */
  getChunks(
    wanted: { digest: Digest; hint: string }[],
    signal?: AbortSignal,
    allocate?: (length: number) => Buffer,
  ): Promise<Buffer[]>;
  /**
   * Which request a chunk's fetch would ride on: chunks with the same key can come in one
   * request (one pack's), so a reader batches them together. Absent: any grouping is as good.
   */
  requestKey?(hint: string): string;
  /**
   * Stores a snapshot manifest; returns its reference (the manifest's digest). `hints`: the
   * location hints it names (from putChunks), so that a store can keep what they point at (an
   * oci:// store references its packs from the snapshot's OCI manifest, against registry GC).
   * `chunksStored`: the upload of chunks it names, still under way: the manifest is not made
   * visible (an oci:// store's tag) before it ends, and its failure fails this call, which
   * settles only once it has.
   */
  putManifest(manifest: Buffer, hints?: Iterable<string>, chunksStored?: Promise<void>): Promise<Digest>;
  /** Fetches a snapshot manifest by reference (unverified). */
  getManifest(ref: Digest): Promise<Buffer>;
  /**
   * Everything the store holds (absent where the store cannot list itself, as a registry cannot
   * list its blobs: its own garbage collection removes what no tagged manifest references).
   */
  inventory?(): AsyncIterable<StoredObject>;
  /** Removes a chunk (garbage collection); absent with inventory. */
  removeChunk?(digest: Digest): Promise<void>;
  /** Rejects if the store cannot be reached now (for status); absent: ask for a manifest instead. */
  check?(): Promise<void>;
  /** Releases what the store holds open (pooled connections); its owner calls it last. */
  close?(): void;
}
