/**
 * Garbage collection of a backing store, `slacker-ts gc`: mark and sweep. Every snapshot
 * manifest in the store is a root; the chunks they name are live; a chunk no manifest names is
 * removed once it is older than the grace period. The grace period is what makes it safe
 * against publishes running meanwhile: a publish writes (or, for a chunk already there, touches)
 * its chunks before its manifest, so they are young until the manifest that names them lands.
 * A manifest that cannot be read stops the collection: what it names cannot be known.
 *
 * Stores that cannot list what they hold (a registry: oci://) are not collected here; their
 * own garbage collection removes the packs no tagged snapshot manifest references.
 */
import { NotSupportedError } from '../common/errors.js';
import type { Digest } from '../common/digests.js';
import type { Logger } from '../common/logger.js';
import type { BackingStore, StoredObject } from '../stores/backing-store.js';
import { decodeManifest } from './manifest.js';

export const DEFAULT_GRACE_MS = 3600_000;

export interface GcReport {
  store: string;
  dryRun: boolean;
  graceMs: number;
  snapshots: number;
  live: { chunks: number; bytes: number };
  /** Removed (or, in a dry run, that would be). */
  removed: { chunks: number; bytes: number };
  /** Unreferenced but younger than the grace period: kept. */
  young: { chunks: number; bytes: number };
}

export async function collectGarbage(
  store: BackingStore,
  o: { dryRun: boolean; graceMs?: number; log: Logger; now?: number },
): Promise<GcReport> {
  if (!store.inventory || !store.removeChunk) {
    throw new NotSupportedError(
      `${store.url} cannot list what it holds: run the registry's own garbage collection (for Docker's ` +
        "registry, 'registry garbage-collect'); every pack a snapshot needs is referenced by its tagged manifest",
    );
  }
  const graceMs = o.graceMs ?? DEFAULT_GRACE_MS;
  const now = o.now ?? Date.now();
  const manifests: StoredObject[] = [];
  const chunks: StoredObject[] = [];
  for await (const obj of store.inventory()) (obj.kind === 'manifest' ? manifests : chunks).push(obj);

  // Mark. Manifests are read after the listing: one published meanwhile names chunks that are
  // young, which the sweep keeps anyway.
  const live = new Set<Digest>();
  for (const m of manifests) {
    const manifest = decodeManifest(m.digest, await store.getManifest(m.digest));
    for (const d of manifest.chunks.values()) live.add(d);
  }

  const report: GcReport = {
    store: store.url,
    dryRun: o.dryRun,
    graceMs,
    snapshots: manifests.length,
    live: { chunks: 0, bytes: 0 },
    removed: { chunks: 0, bytes: 0 },
    young: { chunks: 0, bytes: 0 },
  };
  for (const c of chunks) {
    const bucket = live.has(c.digest) ? report.live : now - c.modified < graceMs ? report.young : report.removed;
    bucket.chunks++;
    bucket.bytes += c.bytes;
    if (bucket === report.removed && !o.dryRun) {
      await store.removeChunk(c.digest);
      o.log.debug({ chunk: c.digest, bytes: c.bytes }, 'gc: unreferenced chunk removed');
    }
  }
  o.log.info({ ...report }, o.dryRun ? 'gc: dry run' : 'gc: done');
  return report;
}
