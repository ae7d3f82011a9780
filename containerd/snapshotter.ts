/**
 * containerd's snapshotter semantics over the layer core: every snapshot is a layer.
 *   - Prepare(key, parent): an active snapshot, an O(1) writable clone of the committed parent's
 *     layer (or a blank base), handed out as a block device: Mounts is `ext4` on that device,
 *     which containerd (or the runc shim) mounts itself.
 *   - View(key, parent): the same, read-only.
 *   - Commit(name, key): the active layer is detached and frozen; it keeps its layer id under
 *     its new name, and children clone it.
 *   - Remove: refused while children exist (FAILED_PRECONDITION); the layer goes with the row.
 *   - Docker's init snapshot ("<id>-init-key", committed as "<id>-init"), into which the engine
 *     writes a few empty files where the image has none: its Mounts are a bind mount of a plain
 *     directory (its scratch, STATE_ROOT/init-layers/LAYER), not a device; its layer stays a clean
 *     clone of the image. A snapshot prepared on it (the container's) gets the scratch's files
 *     copied in where the image has none (layers/copy-missing.ts), before its Mounts go out; so
 *     does a view of it (Docker's `docker diff` compares the container with one).
 *   - Stat, Update (labels only), List, Usage: from metadata (snapshot-metastore.ts and the
 *     volumes'), never a walk of a lazily fetched file system.
 * A failed Prepare or View leaves nothing behind. Knows nothing of gRPC (snapshot-service.ts).
 */
import { AlreadyExistsError, ConflictError, NotFoundError } from '../common/errors.js';
import type { Digest } from '../common/digests.js';
import type { Logger } from '../common/logger.js';
import { readdir } from 'node:fs/promises';
import { copyMissing } from '../layers/copy-missing.js';
import type { InitScratches } from '../layers/init-scratch.js';
import type { LayerStore } from '../layers/layer-store.js';
import type { SnapshotInfo, SnapshotMetastore } from './snapshot-metastore.js';

/** containerd.types.Mount */
export interface MountSpec {
  type: string;
  source: string;
  target: string;
  options: string[];
}

/** containerd's unpacker and Docker's commit prepare a layer's snapshot under "…/extract-…" keys. */
function isExtraction(key: string): boolean {
  return /(^|\/)extract-/.test(key);
}

/** Docker prepares a container's init snapshot under "<id>-init-key" (moby's containerd image service). */
function isInitKey(key: string): boolean {
  return key.endsWith('-init-key');
}

export class Snapshotter {
  /**
   * @param scratches init snapshots' scratch directories (one per layer)
   */
  constructor(
    private readonly layers: LayerStore,
    private readonly meta: SnapshotMetastore,
    private readonly log: Logger,
    private readonly scratches: InitScratches,
  ) {}

  private scratchMounts(layer: string): MountSpec[] {
    return [{ type: 'bind', source: this.scratches.pathOf(layer), target: '', options: ['rbind', 'rw'] }];
  }

  prepare(key: string, parent: string, labels: Record<string, string>): Promise<MountSpec[]> {
    return this.create(key, parent, 'active', labels);
  }

  view(key: string, parent: string, labels: Record<string, string>): Promise<MountSpec[]> {
    return this.create(key, parent, 'view', labels);
  }

  async mounts(key: string): Promise<MountSpec[]> {
    const s = this.meta.get(key);
    if (s.kind === 'committed') {
      throw new ConflictError(`snapshot ${JSON.stringify(key)} is committed: only active snapshots and views mount`, {
        context: { key },
      });
    }
    if (this.scratches.has(s.layer)) return this.scratchMounts(s.layer);
    return this.mountsOf(s);
  }

  async commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    const s = this.meta.get(key);
    if (s.kind !== 'active') {
      throw new ConflictError(`snapshot ${JSON.stringify(key)} is ${s.kind}, not active: only an active one commits`, {
        context: { key },
      });
    }
    if (this.meta.has(name)) {
      throw new AlreadyExistsError(`snapshot ${JSON.stringify(name)} already exists`, { context: { name } });
    }
    // A marker applied by containerd's own differ (ours not configured) left its file behind:
    // the layer becomes the snapshot it names, as if our differ had applied it. Only layer
    // extractions are looked at (containerd and Docker name those keys "extract-...").
    const written = isExtraction(key) && !this.layers.manager.get(s.layer).frozen;
    const ref = written ? await this.layers.writtenMarker(s.layer) : undefined;
    if (ref) await this.layers.replaceWithSnapshot(s.layer, ref);
    await this.layers.detach(s.layer); // containerd has unmounted it
    await this.layers.freeze(s.layer);
    this.meta.commit(key, name, labels);
    this.log.info({ key, name, layer: s.layer }, 'snapshot committed');
  }

  async remove(key: string): Promise<void> {
    const s = this.meta.remove(key); // refused while children exist
    await this.layers.detach(s.layer);
    await this.layers.remove(s.layer);
    await this.scratches.remove(s.layer);
    this.log.info({ key, layer: s.layer }, 'snapshot removed');
  }

  stat(key: string): SnapshotInfo {
    return this.meta.get(key);
  }

  update(key: string, labels: Record<string, string>, paths: string[]): SnapshotInfo {
    return this.meta.updateLabels(key, labels, paths);
  }

  list(): SnapshotInfo[] {
    return this.meta.list();
  }

  /**
   * Bytes a snapshot holds of its own: an active one's written chunks, a committed one's chunks
   * that differ from its parent's (chunk granularity). From metadata only.
   */
  usage(key: string): { size: number; inodes: number } {
    const s = this.meta.get(key);
    const stats = this.layers.manager.stats(s.layer);
    if (s.kind !== 'committed') return { size: stats.bytesWritten, inodes: 0 };
    const parent = s.parent ? this.meta.get(s.parent).layer : undefined;
    const chunks = parent ? this.layers.manager.diffChunks(parent, s.layer) : stats.chunks;
    return { size: chunks * stats.chunkSize, inodes: 0 };
  }

  /**
   * The snapshot whose Mounts these are (containerd hands a differ the mounts it got from us),
   * or undefined for mounts that are not one of our devices.
   */
  snapshotOfMounts(mounts: MountSpec[]): SnapshotInfo | undefined {
    if (mounts.length !== 1 || mounts[0]!.type !== 'ext4') return undefined;
    const layer = this.layers.layerOfDevice(mounts[0]!.source);
    return layer === undefined ? undefined : this.meta.byLayer(layer);
  }

  /**
   * A marker layer applied to active snapshot `key`: its layer becomes the published snapshot
   * `ref`, opened lazily; containerd commits it next. The marker's files are never written.
   */
  async applyMarker(key: string, ref: Digest): Promise<void> {
    const s = this.meta.get(key);
    if (s.kind !== 'active') {
      throw new ConflictError(`snapshot ${JSON.stringify(key)} is ${s.kind}: a layer applies to an active one`, {
        context: { key },
      });
    }
    await this.layers.replaceWithSnapshot(s.layer, ref);
    this.log.info({ key, layer: s.layer, ref }, 'marker applied: snapshot opened lazily');
  }

  /**
   * Publishes snapshot `key` (an active one through a consistent copy of what it holds now, its
   * file system frozen meanwhile) and returns the reference a marker layer carries.
   */
  async publish(key: string): Promise<Digest> {
    const s = this.meta.get(key);
    const ref = await this.layers.publish(s.layer);
    this.log.info({ key, layer: s.layer, ref }, 'snapshot published');
    return ref;
  }

  /**
   * Publishes the committed snapshot containerd knows as `name` in `namespace` (an image's chain
   * ID), with the startup profile of active snapshot `profileFrom` (a container) if given.
   */
  async publishNamed(
    namespace: string,
    name: string,
    profileFrom?: string,
  ): Promise<{ ref: Digest; prefetch: number }> {
    const s = this.named(namespace, name);
    if (!profileFrom) return { ref: await this.layers.publish(s.layer), prefetch: 0 };
    return this.layers.publishWithProfile(s.layer, this.named(namespace, profileFrom).layer);
  }

  private named(namespace: string, name: string): SnapshotInfo {
    const s = this.meta.byName(namespace, name);
    if (!s) {
      throw new NotFoundError(`no snapshot ${JSON.stringify(name)} in containerd namespace ${namespace}`, {
        context: { namespace, name },
      });
    }
    return s;
  }

  /**
   * Removes layers (and init scratches) this front end made that no snapshot names (a crash
   * between steps). containerd calls it after its garbage collections, while other calls run:
   * whether a snapshot names a layer is asked again at the moment it would go (a Prepare may
   * have named it since the list was read), and a layer's publish copy waits for the publish.
   */
  async cleanup(): Promise<void> {
    const unnamed = (layer: string) => () => this.meta.byLayer(layer) === undefined;
    for (const row of this.layers.manager.list()) {
      if (!row.id.startsWith('ctrd-')) continue;
      if (await this.layers.removeIfUnused(row.id, unnamed(row.id))) {
        this.log.warn({ layer: row.id }, 'cleanup: layer of no snapshot removed');
      }
    }
    for (const layer of await readdir(this.scratches.dir).catch(() => [] as string[])) {
      // No await between the question and the removal's start: create() names a layer before it makes its scratch.
      if (layer.startsWith('ctrd-') && unnamed(layer)()) await this.scratches.remove(layer);
    }
  }

  private async create(
    key: string,
    parent: string,
    kind: 'active' | 'view',
    labels: Record<string, string>,
  ): Promise<MountSpec[]> {
    const s = this.meta.create(key, parent, kind, labels);
    try {
      const parentLayer = parent ? this.meta.get(parent).layer : undefined;
      await this.layers.create(s.layer, parentLayer);
      if (kind === 'active' && parentLayer && isInitKey(key)) {
        await this.scratches.make(s.layer);
        this.log.info({ key, parent, kind, layer: s.layer }, 'snapshot prepared: an init scratch');
        return this.scratchMounts(s.layer);
      }
      const initFiles = parentLayer && this.scratches.has(parentLayer) ? this.scratches.pathOf(parentLayer) : undefined;
      let mounts: MountSpec[];
      if (initFiles && kind === 'view') {
        // A view is attached read-only: its init files are copied in before, mounted here.
        const dir = await this.layers.get(s.layer);
        try {
          await copyMissing(initFiles, dir);
        } finally {
          await this.layers.detach(s.layer);
        }
        mounts = await this.mountsOf(s);
      } else {
        mounts = await this.mountsOf(s);
        if (initFiles) await this.layers.withTree(s.layer, (dir) => copyMissing(initFiles, dir));
      }
      this.log.info({ key, parent, kind, layer: s.layer }, 'snapshot prepared');
      return mounts;
    } catch (err) {
      // Nothing half-made: the row, the layer and a scratch go.
      this.meta.remove(key);
      await this.scratches.remove(s.layer);
      if (this.layers.exists(s.layer)) {
        await this.layers.detach(s.layer).catch(() => undefined);
        await this.layers
          .remove(s.layer)
          .catch((e: unknown) => this.log.error({ err: e, layer: s.layer }, 'undo failed'));
      }
      throw err;
    }
  }

  private async mountsOf(s: SnapshotInfo): Promise<MountSpec[]> {
    const readOnly = s.kind === 'view';
    // A layer being pulled is written from its tar (or replaced by its marker's snapshot), not run:
    // its cache is not filled with a container's reads.
    const device = await this.layers.attach(s.layer, { readOnly, warm: !isExtraction(s.key) });
    return [{ type: 'ext4', source: device, target: '', options: [readOnly ? 'ro' : 'rw'] }];
  }
}
