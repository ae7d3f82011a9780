/**
 * The layer core: layers as volumes, for any front end (the graphdriver plugin in plugin/; a
 * containerd snapshotter next). One layer, one volume (the layer id is the volume id):
 *   - create clones the parent volume (O(1)); a layer without a parent clones an empty, frozen
 *     ext4 template of the configured size (made once per size).
 *   - get/put mount and unmount (layer-mounts.ts); frozen layers mount read-only.
 *   - applyTar applies an ordinary layer tar to the fresh clone and freezes it; a marker tar
 *     (layer-tar/marker.ts) replaces the clone with the published snapshot it names: nothing
 *     but metadata moves. A failed apply leaves the layer as create made it.
 *   - publish puts the layer's snapshot in the backing store and returns its reference
 *     (optionally with a startup profile); the front end turns that into its own answer.
 * Knows nothing of HTTP, gRPC or Docker's formats, nor of NBD framing.
 */
import { randomBytes } from 'node:crypto';
import { rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError, InvalidArgumentError, NoSpaceError, NotFoundError, systemErrorCode } from '../common/errors.js';
import { formatSize } from '../common/units.js';
import type { Logger } from '../common/logger.js';
import type { PublishCounts, PublishOptions, VolumeManager } from '../volumes/manager.js';
import { changes, type Change, type EntryStat } from './changes.js';
import { applyLayerTar } from './layer-tar/apply.js';
import type { LayerMounts } from './layer-mounts.js';
import type { ChunkIndex } from '../volumes/types.js';
import { isDigest, type Digest } from '../common/digests.js';
import { MARKER_DIR } from './layer-tar/marker.js';

/**
 * At most this many chunks a commit changed are fetched first wherever its snapshot is opened
 * (8 MiB at 128 KiB): see deltaPrefetch.
 */
export const MAX_DELTA_PREFETCH = 64;

/**
 * At most this many chunks the committed container read of its image first (its mount, its
 * shell, the loader and the C library: what a container of any image built on that one reads
 * at its start) are fetched too wherever the commit's snapshot is opened: see deltaPrefetch.
 */
export const START_PREFETCH = 32;

/** What a publish's frozen copy of a writable layer ID is named: ID + this + 8 hex digits. */
const PUBLISH_COPY = '.diff-';

/** The layer whose publish copy `id` is, if it is one. */
function publishCopyOwner(id: string): string | undefined {
  const at = id.lastIndexOf(PUBLISH_COPY);
  return at > 0 ? id.slice(0, at) : undefined;
}

export interface LayerStoreOptions {
  manager: VolumeManager;
  mounts: LayerMounts;
  /** Virtual size of layers without a parent. */
  layerSize: number;
  attachMethod: string;
  log: Logger;
}

/** LayerStore.report: a host's state for `slacker-ts status`. */
export interface HostReport {
  root: string;
  store: { url: string; reachable: boolean; error?: string };
  attachMethod: string;
  volumes: number;
  attached: number;
  cache: { bytes: number; chunks: number; limitBytes: number; evictions: number };
  fetch: { chunks: number; bytes: number; errors: number; localHits: number; p50Ms: number; p99Ms: number };
  layers: {
    id: string;
    parent: string | null;
    frozen: boolean;
    snapshotRef: string | null;
    virtualSize: number;
    chunks: number;
    chunkSize: number;
    bytesWritten: number;
    chunksFetched: number;
    bytesFetched: number;
    localHits: number;
    attached: boolean;
  }[];
}

export class LayerStore {
  constructor(private readonly o: LayerStoreOptions) {}

  get manager(): VolumeManager {
    return this.o.manager;
  }

  /** How layers reach a block device on this host (for status). */
  get attachMethod(): string {
    return this.o.attachMethod;
  }

  get mountedCount(): number {
    return this.o.mounts.count;
  }

  /**
   * What an operator asks of a host: volumes, attachments, cache, fetches, whether the backing
   * store answers (its check, or else a manifest that cannot exist is asked for: "not found"
   * means it answered), and every layer's lazy statistics.
   */
  async report(): Promise<HostReport> {
    const m = this.manager;
    const total = m.chunks.total;
    let reachable = true;
    let error: string | undefined;
    if (m.store) {
      try {
        if (m.store.check) await m.store.check();
        else await m.store.getManifest(`sha256:${'0'.repeat(64)}` as Digest);
      } catch (err) {
        if (!(err instanceof NotFoundError || systemErrorCode(err) === 'ENOENT')) {
          reachable = false;
          error = err instanceof Error ? err.message : String(err);
        }
      }
    }
    const rows = m.list();
    return {
      root: m.root,
      store: { url: m.store?.url ?? 'none', reachable, ...(error ? { error } : {}) },
      attachMethod: this.o.attachMethod,
      volumes: rows.length,
      attached: this.o.mounts.count,
      cache: m.cacheStats(),
      fetch: {
        chunks: total.chunksFetched,
        bytes: total.bytesFetched,
        errors: total.fetchErrors,
        localHits: total.localHits,
        p50Ms: total.latencyQuantile(0.5),
        p99Ms: total.latencyQuantile(0.99),
      },
      layers: rows.map((row) => {
        const s = m.stats(row.id);
        return {
          id: s.id,
          parent: s.parent,
          frozen: s.frozen,
          snapshotRef: s.snapshotRef,
          virtualSize: s.virtualSize,
          chunks: s.chunks,
          chunkSize: s.chunkSize,
          bytesWritten: s.bytesWritten,
          chunksFetched: s.fetch.chunksFetched,
          bytesFetched: s.fetch.bytesFetched,
          localHits: s.fetch.localHits,
          attached: this.o.mounts.isMounted(s.id),
        };
      }),
    };
  }

  /** Block devices attached since start. */
  get attachCount(): number {
    return this.o.mounts.attaches;
  }

  isMounted(id: string): boolean {
    return this.o.mounts.isMounted(id);
  }

  exists(id: string): boolean {
    return this.manager.has(id);
  }

  /**
   * A new layer: a clone of `parent`, or a blank base of `size` (default: the layer size). A
   * clone has its parent's size: a `size` it cannot have is refused, never ignored (a clone's
   * file system is its parent's; growing it is not supported).
   */
  async create(id: string, parent: string | undefined, size?: number): Promise<void> {
    if (parent && size !== undefined) {
      const parentSize = this.manager.get(parent).size;
      if (size !== parentSize) {
        throw new InvalidArgumentError(
          `layer ${id} cannot have size ${formatSize(size)}: a layer has its base layer's size ` +
            `(${formatSize(parentSize)} here), set for base layers with --size or --storage-opt slacker.size`,
          { context: { layer: id, size, parentSize } },
        );
      }
    }
    await this.o.mounts.lock.run(id, async () => {
      if (parent) await this.manager.clone(await this.frozenParent(parent), id);
      // A base layer starts blank: it gets its file system (a template clone) only when first
      // mounted or given an ordinary tar; a marker layer never needs one.
      else await this.manager.create(id, size ?? this.o.layerSize);
      this.o.log.info({ layer: id, parent: parent ?? null }, 'layer created');
    });
  }

  async remove(id: string): Promise<void> {
    // Remove is idempotent, as in moby's drivers
    await this.o.mounts.lock.run(id, () => this.removeLocked(id));
  }

  /** Unmounts and removes layer `id` if it exists; says whether it did. For callers holding its lock. */
  private async removeLocked(id: string): Promise<boolean> {
    if (!this.exists(id)) return false;
    await this.o.mounts.putLocked(id, true);
    await this.manager.remove(id);
    this.o.log.info({ layer: id }, 'layer removed');
    return true;
  }

  /**
   * Removes layer `id` if `unused()` still holds once no call on the layer runs, and says
   * whether it did. For a front end's sweep of the layers nothing names, which runs while other
   * calls go on (containerd calls Cleanup after its garbage collections): `unused` is asked under
   * the lock, so a layer named meanwhile stays. A publish's copy (ID.diff-…) exists only while
   * layer ID publishes, under ID's lock: swept under that lock, only a crash's leftover goes.
   */
  async removeIfUnused(id: string, unused: () => boolean): Promise<boolean> {
    return this.o.mounts.lock.run(publishCopyOwner(id) ?? id, async () => unused() && this.removeLocked(id));
  }

  /**
   * Removes the publish copies (ID.diff-…) a crashed predecessor left: a copy lives only while
   * its layer publishes, so at start every one is a leftover (its chunks stay where they are).
   * Returns their ids.
   */
  async removeLeftoverCopies(): Promise<string[]> {
    const copies = this.manager
      .list()
      .map((row) => row.id)
      .filter((id) => publishCopyOwner(id) !== undefined);
    const removed: string[] = [];
    for (const id of copies) if (await this.removeIfUnused(id, () => true)) removed.push(id);
    if (removed.length > 0) this.o.log.warn({ copies: removed }, "a crashed publish's copies removed");
    return removed;
  }

  /**
   * Mounts the layer (or counts one more user) and answers its mount point. `onMounted` runs on
   * the tree when this Get mounts it (not when it was mounted already): see LayerMounts.getLocked.
   */
  async get(id: string, options: { onMounted?: (dir: string) => Promise<void> } = {}): Promise<string> {
    this.manager.get(id); // unknown ids fail here with a clear NotFoundError
    return this.o.mounts.lock.run(id, async () => {
      await this.formatted(id);
      return this.o.mounts.getLocked(id, { onMounted: options.onMounted });
    });
  }

  put(id: string): Promise<void> {
    return this.o.mounts.put(id);
  }

  /**
   * Hands the layer out as a block device for an engine that mounts it itself (a containerd
   * snapshot), its file system made first for a blank base layer; read-only when asked or
   * frozen. Stays attached until detach (or remove). `warm: false` for a layer no container will
   * run on (one being pulled): see LayerMounts.attachLocked.
   */
  async attach(id: string, options: { readOnly: boolean; warm?: boolean }): Promise<string> {
    this.manager.get(id); // unknown ids fail here with a clear NotFoundError
    return this.o.mounts.lock.run(id, async () => {
      await this.formatted(id);
      const readOnly = options.readOnly || this.manager.get(id).frozen;
      return this.o.mounts.attachLocked(id, { readOnly, warm: options.warm });
    });
  }

  /** Runs `fn` on the tree of a layer attached (or mounted) here: see LayerMounts.withTreeLocked. */
  withTree<T>(id: string, fn: (dir: string) => Promise<T>): Promise<T> {
    return this.o.mounts.lock.run(id, () => this.o.mounts.withTreeLocked(id, fn));
  }

  /** Undoes attach (or every Get): the layer is no longer attached or mounted here. */
  detach(id: string): Promise<void> {
    return this.o.mounts.lock.run(id, () => this.o.mounts.putLocked(id, true));
  }

  /** Freezes a layer that nobody has attached or mounted: it becomes a parent that others clone. */
  async freeze(id: string): Promise<void> {
    await this.o.mounts.lock.run(id, async () => {
      await this.o.mounts.settleLocked(id);
      if (this.o.mounts.isMounted(id)) {
        throw new ConflictError(`layer ${id} is still attached: it cannot be frozen`, { context: { layer: id } });
      }
      await this.formatted(id);
      await this.manager.freeze(id);
    });
  }

  /**
   * Applies a layer tar (optionally gzip'ed) to layer `id`, made by Create(id, parent) before.
   * Returns the bytes of file data applied (for a marker: those of the chunks that differ from
   * the parent's). Reads `body` no further than the tar's end and never destroys it.
   */
  async applyTar(id: string, parent: string | undefined, body: AsyncIterable<Buffer>): Promise<number> {
    return this.o.mounts.lock.run(id, async () => {
      if (!this.exists(id)) await this.reset(id, parent);
      const row = this.manager.get(id);
      if (row.frozen) throw new ConflictError(`layer ${id} is committed already: ApplyDiff needs a new layer`);
      // Where the tar goes: a staged copy of the layer on a loop device straight on a local
      // file when its base is all here (the fast path: no FUSE or NBD for every byte), else the
      // layer itself, mounted through its NBD export.
      let where = 'none' as 'none' | 'staged' | 'mounted';
      try {
        const result = await applyLayerTar(body, async () => {
          await this.formatted(id);
          const staged = await this.o.mounts.mountStagedLocked(id);
          if (staged) {
            where = 'staged';
            return staged;
          }
          where = 'mounted';
          return this.o.mounts.getLocked(id, { internal: true });
        });
        if (result.kind === 'marker') {
          await this.replaceWithSnapshotLocked(id, result.ref);
          const size = this.changedBytes(id, parent);
          this.o.log.info({ layer: id, ref: result.ref, size }, 'marker layer applied: snapshot opened lazily');
          return size;
        }
        const t0 = Date.now();
        let stored: number | undefined;
        if (where === 'staged') {
          await this.o.mounts.unmountStagedLocked(id);
          where = 'none';
          stored = (await this.manager.freezeStaged(id)).stored;
        } else {
          if (where === 'mounted') await this.o.mounts.putLocked(id, true);
          where = 'none';
          await this.manager.freeze(id);
        }
        this.o.log.info(
          {
            layer: id,
            bytes: result.size,
            entries: result.entries,
            writeWaitMs: result.writeWaitMs,
            staged: stored !== undefined,
            chunksStored: stored,
            freezeMs: Date.now() - t0,
          },
          'layer tar applied',
        );
        if (result.skippedXattrs > 0) {
          this.o.log.warn(
            { layer: id, skipped: result.skippedXattrs },
            'extended attributes the layer file system does not support were skipped',
          );
        }
        return result.size;
      } catch (e) {
        const err = e instanceof NoSpaceError ? this.layerFull(id, e) : e;
        // Nothing half-applied: the layer goes back to the fresh clone Create made.
        if (where === 'mounted') await this.o.mounts.putLocked(id, true).catch(() => undefined);
        await this.o.mounts.unmountStagedLocked(id).catch(() => undefined);
        await this.manager.discardStaged(id).catch(() => undefined);
        await this.reset(id, parent).catch((e: unknown) => this.o.log.error({ err: e, layer: id }, 'reset failed'));
        this.o.log.warn({ err, layer: id }, 'ApplyDiff failed; layer reset');
        throw err;
      }
    });
  }

  /**
   * A new layer (fresh from create, not yet frozen) becomes the published snapshot `ref`, opened
   * lazily: what a marker layer means. For a front end whose engine applies layers itself (a
   * containerd differ), which may hold the layer attached: it is detached first.
   */
  async replaceWithSnapshot(id: string, ref: Digest): Promise<void> {
    await this.o.mounts.lock.run(id, async () => {
      if (this.manager.get(id).frozen) {
        throw new ConflictError(`layer ${id} is committed already: a marker applies to a new layer`, {
          context: { layer: id },
        });
      }
      await this.o.mounts.putLocked(id, true);
      const size = this.manager.get(id).size;
      try {
        await this.replaceWithSnapshotLocked(id, ref);
      } catch (err) {
        // Nothing half-made: the layer is a blank one again (its engine discards it).
        if (!this.exists(id)) await this.manager.create(id, size);
        throw err;
      }
      this.o.log.info({ layer: id, ref }, 'marker applied: snapshot opened lazily');
    });
  }

  /**
   * The snapshot reference of a marker that an engine's own tar applier wrote into layer `id`
   * (the file `.slacker/<ref>`; see layer-tar/marker.ts), read from the attached device after the
   * engine unmounted it. Undefined for any other layer.
   */
  async writtenMarker(id: string): Promise<Digest | undefined> {
    const names = await this.o.mounts.lock.run(id, () => this.o.mounts.listLocked(id, `/${MARKER_DIR}`));
    const refs = (names ?? []).filter(isDigest);
    return names?.length === 1 && refs.length === 1 ? refs[0] : undefined;
  }

  /** The layer attached here as block device `path` (as an engine hands the device back), if any. */
  layerOfDevice(path: string): string | undefined {
    return this.o.mounts.layerOfDevice(path);
  }

  /**
   * The reference of the layer's published snapshot (publishing it first if needed). `counts`
   * says what this publish sent (left as it is when the layer was published before).
   */
  publish(id: string, counts?: PublishCounts): Promise<Digest> {
    return this.o.mounts.lock.run(id, () => this.publishLocked(id, { counts }));
  }

  /**
   * publish with a startup profile: the layer is published (again) with the chunks that layer
   * `profileFrom` (a container's layer on top of it, run until ready) read first, so that
   * hosts opening the snapshot fetch those at once (see volumes/read-trace.ts).
   */
  async publishWithProfile(id: string, profileFrom: string): Promise<{ ref: Digest; prefetch: number }> {
    const trace = this.startupTrace(id, profileFrom);
    if (trace.length === 0) {
      throw new ConflictError(`layer ${profileFrom} read nothing of its image since the plugin started: no profile`, {
        context: { layer: profileFrom },
      });
    }
    const ref = await this.o.mounts.lock.run(id, () => this.publishLocked(id, { prefetch: trace }));
    return { ref, prefetch: trace.length };
  }

  /**
   * What a container's start read of image layer `id`, in order: first what the layers between
   * them read (Docker's `-init` layer, which the engine mounts and writes to set the container
   * up: the file system's superblock, group descriptors, /etc...), then the container's own
   * layer. Without the former, a host starting the image fetched those one round trip at a time
   * during `docker create`, before anything of the profile was asked for.
   */
  private startupTrace(id: string, profileFrom: string): ChunkIndex[] {
    const between: string[] = [];
    let p = this.manager.get(profileFrom).parent;
    for (; p !== null && p !== id; p = this.manager.get(p).parent) between.unshift(p);
    // Only layers on the way down from the image: a container of another image profiles alone.
    const layers = p === id ? [...between, profileFrom] : [profileFrom];
    const seen = new Set<ChunkIndex>();
    const out: ChunkIndex[] = [];
    for (const layer of layers) {
      for (const idx of this.manager.readTrace(layer)) {
        if (!seen.has(idx)) {
          seen.add(idx);
          out.push(idx);
        }
      }
    }
    return out;
  }

  /** `parentAlso`: paths the parent has beyond its own tree (see changes.ts). */
  async changes(
    id: string,
    parent: string | undefined,
    parentAlso?: ReadonlyMap<string, EntryStat>,
  ): Promise<{ changes: Change[]; size: number }> {
    const dir = await this.get(id);
    try {
      if (!parent) return await changes(dir, undefined, parentAlso);
      const parentDir = await this.get(parent);
      try {
        return await changes(dir, parentDir, parentAlso);
      } finally {
        await this.put(parent);
      }
    } finally {
      await this.put(id);
    }
  }

  /** Unmounts everything (at the front end's cleanup, and shutdown). */
  async cleanup(): Promise<void> {
    await this.o.mounts.unmountAll();
  }

  /** Publishes the layer: a writable one through a frozen copy of what it holds now. */
  private async publishLocked(id: string, options: PublishOptions = {}): Promise<Digest> {
    const row = this.manager.get(id);
    if (row.frozen) return (!options.prefetch && row.snapshotRef) || (await this.manager.publish(id, options));
    const copy = `${id}${PUBLISH_COPY}${randomBytes(4).toString('hex')}`;
    const t0 = performance.now();
    try {
      await this.o.mounts.quiescedLocked(id, () => this.manager.snapshot(id, copy));
    } catch (err) {
      // The copy may be made already (its layer's file system then failed to mount back).
      if (this.manager.has(copy)) await this.manager.remove(copy);
      throw err;
    }
    const t1 = performance.now();
    try {
      const ref = await this.manager.publish(
        copy,
        options.prefetch ? options : { ...options, ...this.deltaPrefetch(id, copy) },
      );
      // Where a commit's time goes (issue 19): the snapshot (freeze, hash, store) and the upload.
      const snapshotMs = Math.round(t1 - t0);
      this.o.log.debug(
        { layer: id, ref, snapshotMs, publishMs: Math.round(performance.now() - t1) },
        'layer published',
      );
      return ref;
    } finally {
      await this.manager.remove(copy); // its chunks stay local and in the store
    }
  }

  /**
   * A commit without a startup profile still has chunks every start of the new image reads:
   * - the ones it changed hold the file system's metadata it touched (superblock, bitmaps, inode
   *   tables, journal, directories) and its new files. On MultiMake's worker, the ext4 mount of a
   *   container on a pulled build step took 44-55 ms (2-9 ms on the builder, where they are
   *   local): a round trip per chunk it read. More than MAX_DELTA_PREFETCH (a layer of data, not
   *   a tweak) are left to be read on demand;
   * - the first START_PREFETCH chunks the committed container read of its image: the mount's
   *   metadata, the shell, the loader and the C library, which a container of the new image
   *   reads too. On MultiMake's fresh worker they were still 4 round trips in the create and ~10
   *   in the run (docs/BENCHMARKS.md, "What a commit's first container reads"). A warmed layer's
   *   reads begin with its warm's, which come in the image's last container's first-read order:
   *   a start's order too.
   * They become the snapshot's prefetch list, fetched from where they are (the commit's own from
   * the pack this publish puts them in) when the snapshot is opened; on a host that has the
   * image already, only the commit's own are fetched.
   */
  private deltaPrefetch(id: string, copy: string): PublishOptions {
    const parent = this.manager.get(id).parent;
    if (!parent) return {};
    const changed = this.manager.changedChunks(parent, copy);
    const delta = changed.length <= MAX_DELTA_PREFETCH ? changed : [];
    const listed = new Set(delta);
    const start = this.manager
      .readTrace(id)
      .filter((idx) => !listed.has(idx))
      .slice(0, START_PREFETCH);
    const prefetch = [...delta, ...start];
    return prefetch.length > 0 ? { prefetch, prefetchInPlace: true } : {};
  }

  private async replaceWithSnapshotLocked(id: string, ref: Digest): Promise<void> {
    await this.manager.remove(id);
    await this.manager.openSnapshot(ref, id);
  }

  /** A parent must be frozen to be cloned: a writable one (a container's init layer) is frozen now. */
  private async frozenParent(parent: string): Promise<string> {
    const row = this.manager.get(parent);
    if (row.frozen) return parent;
    // A parent that only lingers mounted after its last Put (a container's init layer) is unmounted first.
    await this.o.mounts.lock.run(parent, () => this.o.mounts.settleLocked(parent));
    if (this.o.mounts.isMounted(parent)) {
      throw new ConflictError(`parent layer ${parent} is mounted: it cannot be frozen for a child`, {
        context: { layer: parent },
      });
    }
    await this.manager.freeze(parent);
    return parent;
  }

  /** The frozen empty ext4 volume of a size, made on first use. */
  private template(size: number): Promise<string> {
    const id = `template.ext4.${size}`;
    // One caller at a time: a second one would take a template being made for a crash's leftover.
    return this.o.mounts.lock.run(id, async () => {
      if (this.exists(id)) {
        if (this.manager.get(id).frozen) return id;
        await this.manager.remove(id); // a half-made template from a crash
      }
      await this.manager.create(id, size);
      const dir = await this.o.mounts.getLocked(id, { mkfs: true, internal: true });
      try {
        // An empty root: lost+found would otherwise show up in every image made here.
        await rmdir(join(dir, 'lost+found'));
      } finally {
        await this.o.mounts.putLocked(id, true);
      }
      await this.manager.freeze(id);
      this.o.log.info({ template: id, size }, 'empty ext4 template made');
      return id;
    });
  }

  /**
   * Makes the empty ext4 template of the layer size now if there is none, so that the first
   * layer made without a parent does not wait for it (~80 ms: mkfs through NBD). containerd
   * prepares every pulled layer's snapshot as a blank base, whose content (a marker) then
   * replaces it; the graphdriver never needs one for a marker layer.
   */
  async prepareTemplate(): Promise<void> {
    await this.template(this.o.layerSize);
  }

  /** Bytes of the chunks in which a frozen layer differs from its parent. */
  private changedBytes(id: string, parent: string | undefined): number {
    const s = this.manager.stats(id);
    if (!parent) return s.chunks * s.chunkSize;
    return this.manager.diffChunks(parent, id) * s.chunkSize;
  }

  /** ENOSPC while applying: say how large the layer is and how to make layers larger. */
  private layerFull(id: string, err: NoSpaceError): NoSpaceError {
    const size = formatSize(this.manager.get(id).size);
    return new NoSpaceError(
      `layer ${id} is full: its file system holds ${size} (every layer has its base layer's size) and the layer tar ` +
        `needs more (${err.message}). Start the driver with a larger size: \`slacker-ts serve --size SIZE\` or ` +
        `dockerd --storage-opt slacker.size=SIZE; then load or pull the image again`,
      { cause: err, context: { layer: id, size } },
    );
  }

  private async reset(id: string, parent: string | undefined): Promise<void> {
    const size = this.exists(id) ? this.manager.get(id).size : this.o.layerSize;
    if (this.exists(id)) await this.manager.remove(id);
    if (parent) await this.manager.clone(await this.frozenParent(parent), id);
    else await this.manager.create(id, size);
  }

  /** A blank base layer (no parent, nothing written) becomes a clone of the empty ext4 template. */
  private async formatted(id: string): Promise<void> {
    // Every Get passes here: the row alone settles it for all but parentless writable layers.
    const row = this.manager.get(id);
    if (row.parent !== null || row.frozen || this.o.mounts.isMounted(id)) return;
    if (this.manager.stats(id).chunks > 0) return; // written to: it has a file system
    await this.manager.remove(id);
    await this.manager.clone(await this.template(row.size), id);
  }
}
