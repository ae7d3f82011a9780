/**
 * dockerd's init layers, served without a block device of their own.
 *
 * For every container, dockerd creates a layer `<id>-init` on the image (CreateReadWrite), mounts
 * it (Get), creates a few empty files, directories and a symlink there where the image has none
 * (moby's setupInitLayer: /.dockerenv, /etc/hosts, /etc/hostname, /etc/resolv.conf,
 * /dev/console, /dev/pts, /dev/shm, /proc, /sys, /etc/mtab), lets go of it (Put) and creates the
 * container's layer `<id>` on it. As a layer of its own that was an attach, a mount, writes
 * through the whole NBD path, an unmount, a detach and a freeze: about 80 of the ~170 ms of a
 * `docker create` of busybox on a fresh worker (docs/BENCHMARKS.md).
 *
 * Here Get of an init layer answers a plain directory (its scratch, in the state root) where
 * dockerd writes what it would have, on an empty tree: everything. The init layer's volume
 * stays what its image is, and the first Get of the container's layer copies the scratch into
 * it with the rule dockerd applies (only what the image does not have; layers/copy-missing.ts),
 * so that the container sees what it would have. What was copied is recorded beside the scratch:
 * the container layer's Changes and DiffSize against its init layer count it as the init
 * layer's, as with overlay2, and a commit of the container holds it, as it did.
 *
 * State, all under STATE_ROOT/init-layers: `<init id>/` the scratch; `<container id>.json`
 * {init, image, planned?, entries?}: planned while the copy is made, entries once it was. A restarted daemon reads
 * them again; Remove deletes them.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/logger.js';
import { fromRecorded, type Change, type EntryStat, type RecordedStat } from '../layers/changes.js';
import { copyEntries, missingEntries, removeEntries } from '../layers/copy-missing.js';
import { InitScratches } from '../layers/init-scratch.js';
import type { LayerStore } from '../layers/layer-store.js';

/** What a container layer on a scratch init layer keeps. */
interface ContainerRecord {
  init: string;
  /** The init layer's parent: the tree the init layer stands for, with `entries` on it. */
  image: string;
  /** What the copy is about to create, recorded before it starts (paths, parents first). */
  planned?: string[];
  /** What the copy created in the container's layer, once it was made. */
  entries?: Record<string, RecordedStat>;
}

/** dockerd names a container's init layer after the container (moby's layer store). */
export function isInitLayer(id: string, parent: string | undefined): boolean {
  return id.endsWith('-init') && parent !== undefined && parent !== '';
}

export class InitLayers {
  private readonly scratches: InitScratches;
  private readonly lock = new KeyedLock<string>();

  constructor(
    root: string,
    private readonly layers: LayerStore,
    private readonly log: Logger,
  ) {
    this.scratches = new InitScratches(root);
  }

  private recordPath(container: string): string {
    return join(this.scratches.dir, `${container}.json`);
  }

  /** Whether `id` is an init layer served from its scratch. */
  isScratch(id: string): boolean {
    return this.scratches.has(id);
  }

  /** Create: the layer in the core as for any layer, and its scratch or its record. */
  async create(id: string, parent: string | undefined, size: number | undefined): Promise<void> {
    if (parent && this.isScratch(parent)) {
      const image = this.layers.manager.get(parent).parent;
      await this.layers.create(id, parent, size);
      if (image) await this.writeRecord(id, { init: parent, image });
      return;
    }
    await this.layers.create(id, parent, size);
    if (isInitLayer(id, parent)) await this.scratches.make(id);
  }

  /** Get: an init layer's scratch; any other layer mounted, with its init files on first use. */
  async get(id: string): Promise<string> {
    if (this.isScratch(id)) return this.scratches.pathOf(id);
    // The copy runs as the layer is mounted, before its warm starts (their reads would share
    // the device's path); for a layer that was mounted already (without this Get), after.
    let copied = false;
    const dir = await this.layers.get(id, {
      onMounted: async (d) => {
        await this.copyInit(id, d);
        copied = true;
      },
    });
    if (copied) return dir;
    try {
      await this.copyInit(id, dir);
    } catch (err) {
      await this.layers.put(id);
      throw err;
    }
    return dir;
  }

  put(id: string): Promise<void> {
    if (this.isScratch(id)) return Promise.resolve();
    return this.layers.put(id);
  }

  async remove(id: string): Promise<void> {
    await this.layers.remove(id);
    await this.scratches.remove(id);
    await rm(this.recordPath(id), { force: true });
  }

  /**
   * Makes sure a container layer holds its init files before something reads it other than by
   * Get (Diff publishes it, a profile is recorded from it): a layer dockerd created and never
   * mounted.
   */
  async settle(id: string): Promise<void> {
    await this.settled(id);
  }

  /** settle, answering the layer's record as it is then. */
  private async settled(id: string): Promise<ContainerRecord | undefined> {
    const record = await this.readRecord(id);
    if (!record || record.entries) return record;
    await this.get(id);
    await this.layers.put(id);
    return this.readRecord(id);
  }

  /** Changes (and DiffSize) of `id` against `parent`; against a scratch init layer, its image and its files. */
  async changes(id: string, parent: string | undefined): Promise<{ changes: Change[]; size: number }> {
    if (parent && this.isScratch(parent)) {
      const record = await this.settled(id);
      if (record?.init === parent && record.entries) {
        const also = new Map<string, EntryStat>();
        for (const [path, st] of Object.entries(record.entries)) also.set(path, fromRecorded(st));
        return this.layers.changes(id, record.image, also);
      }
    }
    return this.layers.changes(id, parent);
  }

  /**
   * Copies the init layer's scratch into the container's layer mounted at `dir`, once. What it
   * will create is recorded first (`planned`): a crash in the middle leaves a record that says
   * which entries in the layer are the copy's, and the next Get takes them away and copies
   * again. Nothing else can have written them: the container has not run, since Get had not
   * answered.
   */
  private copyInit(id: string, dir: string): Promise<void> {
    return this.lock.run(id, async () => {
      const record = await this.readRecord(id);
      if (!record || record.entries) return;
      const t0 = performance.now();
      const from = this.scratches.pathOf(record.init);
      let planned = record.planned;
      if (planned) {
        this.log.warn({ layer: id, planned: planned.length }, 'init files: an interrupted copy is made again');
        await removeEntries(dir, planned);
      } else {
        planned = await missingEntries(from, dir);
        await this.writeRecord(id, { ...record, planned });
      }
      const created = await copyEntries(from, dir, planned);
      await this.writeRecord(id, { init: record.init, image: record.image, entries: Object.fromEntries(created) });
      this.log.debug(
        { layer: id, init: record.init, created: created.size, ms: +(performance.now() - t0).toFixed(1) },
        'init files copied',
      );
    });
  }

  private async readRecord(id: string): Promise<ContainerRecord | undefined> {
    try {
      return JSON.parse(await readFile(this.recordPath(id), 'utf8')) as ContainerRecord;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Written whole or not at all (a crash leaves the previous record). */
  private async writeRecord(id: string, record: ContainerRecord): Promise<void> {
    await mkdir(this.scratches.dir, { recursive: true, mode: 0o700 });
    const tmp = `${this.recordPath(id)}.tmp`;
    await writeFile(tmp, JSON.stringify(record), { mode: 0o600 });
    await rename(tmp, this.recordPath(id));
  }
}
