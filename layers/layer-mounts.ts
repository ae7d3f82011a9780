/**
 * Mounted layers, refcounted: dockerd's Get/Put come in pairs and nest. The first Get of a layer
 * exports its volume on this host's NBD server, attaches it as a block device and mounts its
 * ext4 (read-only for frozen layers); the last Put undoes all three, in reverse. Work on one
 * layer is serialised; different layers proceed in parallel.
 *
 * Attachments outlive the daemon (issue 20): every change is recorded in DIR/attach/attached.json
 * (layer, mount point, use count, the device's record), a shutdown leaves the layers in use
 * attached and mounted, and the next daemon adopts them at start (recover): their exports are
 * added to its NBD server, and the NBD relay, which kept the clients' connections, reconnects.
 * What cannot be adopted, or is not recorded, is torn down.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { join } from 'node:path';
import type { Attacher, BlockDevice, DeviceRecord, ReleaseClaim } from '../attach/attacher.js';
import { ext4 } from '../attach/ext4.js';
import type { LayerFilesystem } from '../attach/filesystem.js';
import { loopsUnder, mountSources, mountsUnder } from '../attach/host-state.js';
import { ConflictError, IoError } from '../common/errors.js';
import { run } from '../common/exec.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/logger.js';
import type { NbdServer } from '../nbd-server/server.js';
import type { VolumeManager } from '../volumes/manager.js';

interface Mounted {
  refs: number;
  /** The mount point; undefined for a layer handed out as a block device only (attachLocked). */
  dir: string | undefined;
  device: BlockDevice;
  readOnly: boolean;
  /** Mounted by the layer core for its own work (applying a tar, making a template), not for an engine. */
  internal?: boolean;
  /** Set while the layer stays mounted with no user (refs 0), until it runs: see DEFAULT_LINGER_MS. */
  linger?: NodeJS.Timeout;
  /** The write-out started at the last Put (syncLingering), awaited before the unmount; never rejects. */
  syncing?: Promise<void>;
}

/**
 * How long a layer an engine mounted stays mounted after its last Put. dockerd mounts a new
 * container's layer when it creates the container and puts it at once, then mounts it again to
 * start it; each mount of a layer is an attach (nbdfuse, loop) and an ext4 mount, and each
 * unmount a detach (~20-45 ms on this VM): a create-then-start pays one of each less this way.
 */
export const DEFAULT_LINGER_MS = 2000;

export interface LayerMountsOptions {
  manager: VolumeManager;
  nbd: NbdServer;
  /** The unix socket block devices' NBD clients connect to (the NBD relay's, which outlives us). */
  nbdSocket: string;
  /**
   * The unix socket `nbd` itself listens on, for internal mounts: they are never adopted by a
   * restarted daemon, so holding their I/O across restarts buys nothing, and the relay's hop
   * costs (default nbdSocket).
   */
  serverSocket?: string;
  attacher: Attacher;
  /** Mount points go under DIR/mnt, attachment scratch space under DIR/attach. */
  dir: string;
  /** The file system in every layer (default ext4). */
  filesystem?: LayerFilesystem;
  /** How long a layer stays mounted after its last Put (default DEFAULT_LINGER_MS; 0: none). */
  lingerMs?: number;
  /**
   * Told, at start, of the exports a predecessor left attached that are not adopted, before
   * they are torn down (the NBD relay then fails their held I/O instead of waiting for them).
   */
  abandon?: (exports: string[]) => Promise<void>;
  log: Logger;
}

/** Warms (fillCache) running at once; a layer attached while as many run is not warmed. */
export const MAX_FILLS = 2;
/**
 * Longest a new layer's warm waits for its image's startup profile to land (fetched from the
 * pull on: HelloBench's largest, 59 MB, took 0.4-0.5 s), and so the longest a detach of the
 * layer can wait for the warm.
 */
const PROFILE_WAIT_MS = 1_000;

/** One attachment as attached.json keeps it. */
interface AttachmentRecord {
  id: string;
  dir?: string;
  refs: number;
  readOnly: boolean;
  device: DeviceRecord;
}

export class LayerMounts {
  private readonly mounted = new Map<string, Mounted>();
  /** Staged copies mounted for the core's own work (mountStagedLocked), never recorded. */
  private readonly staged = new Map<string, { dir: string; device: BlockDevice }>();
  /** Reads into new writable layers' caches still being asked for (fillCache), by layer. */
  private readonly filling = new Map<string, Promise<void>>();
  /** The last write of attached.json, so that writes happen one after another. */
  private saving: Promise<void> = Promise.resolve();
  /** Block devices attached since start (each Get of an unmounted layer, each handed-out device). */
  attaches = 0;
  readonly lock = new KeyedLock<string>();

  constructor(private readonly o: LayerMountsOptions) {}

  /** Layers mounted or attached for a user (not those lingering after their last Put). */
  get count(): number {
    let n = 0;
    for (const m of this.mounted.values()) if (m.refs > 0) n++;
    return n;
  }

  /** Layers still mounted after their last Put, for the next Get (DEFAULT_LINGER_MS). */
  get lingering(): number {
    return this.mounted.size - this.count;
  }

  /** Whether the layer is mounted or attached for a user (one that lingers after its last Put is not). */
  isMounted(id: string): boolean {
    const m = this.mounted.get(id);
    return m !== undefined && m.refs > 0;
  }

  /**
   * Unmounts the layer now if it only lingers after its last Put (before it is frozen, or its
   * volume otherwise needs to be closed). For callers holding the layer's lock.
   */
  async settleLocked(id: string): Promise<void> {
    const m = this.mounted.get(id);
    if (m && m.refs === 0) await this.putLocked(id, true);
  }

  mountPoint(id: string): string {
    return join(this.o.dir, 'mnt', id);
  }

  private get fs(): LayerFilesystem {
    return this.o.filesystem ?? ext4;
  }

  /**
   * Runs `fn` while the layer's volume holds a consistent image of its file system (for a
   * snapshot: a commit). For callers holding the layer's lock. The cheapest way that is safe:
   * - nothing has the device mounted, anywhere (a handed-out device its engine unmounted: a
   *   stopped container on containerd): the device is held exclusively meanwhile, so no mount
   *   starts;
   * - mounted here for one user at most (dockerd's own Get around a commit, the stopped
   *   container's layer lingering after its last Put): unmounted, held exclusively, mounted again
   *   after. A busy mount, or a copy of it living on in another mount namespace (the claim
   *   fails), is mounted again and frozen instead; a crash in between leaves the layer to
   *   recover() as any unmounted one;
   * - otherwise (a running container's layer) frozen with FIFREEZE.
   * Why not always freeze: FIFREEZE waits for RCU grace periods, 40-55 ms on this VM, where an
   * unmount and a mount take ~6 ms (docs/BENCHMARKS.md, "A commit without a freeze").
   */
  async quiescedLocked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const m = this.mounted.get(id);
    if (!m || (m.dir === undefined && m.readOnly)) return fn();
    const release = await this.claimLocked(id, m);
    if (release) {
      try {
        return await fn();
      } finally {
        await release();
      }
    }
    return this.withTreeLocked(id, async (dir) => {
      await this.fs.freeze(dir);
      try {
        return await fn();
      } finally {
        await this.fs.unfreeze(dir);
      }
    });
  }

  /** quiescedLocked's exclusive claim of the layer's device, if it can have one; its release mounts back what it unmounted. */
  private async claimLocked(id: string, m: Mounted): Promise<ReleaseClaim | undefined> {
    const device = m.device;
    const claimDevice = device.claim?.bind(device);
    if (!claimDevice) return undefined;
    // A claim that fails for any other reason than a mount leaves the freeze to do the work.
    const claim = (): Promise<ReleaseClaim | undefined> =>
      claimDevice().catch((err: unknown) => {
        this.o.log.warn({ err, layer: id, device: device.path }, 'cannot tell whether the device is mounted: freezing');
        return undefined;
      });
    if (m.dir === undefined) return claim();
    if (m.refs > 1 || m.readOnly || !this.fs.unmountIfIdle) return undefined;
    const dir = m.dir;
    await m.syncing; // its open directory would make the mount busy
    if (!(await this.fs.unmountIfIdle(dir))) return undefined;
    const mountBack = async (): Promise<void> => {
      try {
        await this.fs.mount(device.path, dir, { readOnly: false });
      } catch (err) {
        // Not mounted, although recorded so: taken down, so that the next Get starts afresh.
        await this.dropLocked(id, m);
        throw err;
      }
    };
    const held = await claim();
    if (!held) {
      await mountBack();
      return undefined;
    }
    this.o.log.debug({ layer: id }, 'layer unmounted for a snapshot');
    return async () => {
      try {
        await held();
      } finally {
        await mountBack();
      }
    };
  }

  /**
   * Runs `fn` on the tree of a layer that is mounted here or handed out as a device, which is
   * then mounted at its mount point for the while: a second mount of the same device shares its
   * superblock (the kernel keeps one per block device), so what `fn` writes is what the engine's
   * mount sees. Read-write, as the engine's is: a mount may not flip that. For callers holding
   * the layer's lock.
   */
  async withTreeLocked<T>(id: string, fn: (dir: string) => Promise<T>): Promise<T> {
    const m = this.mounted.get(id);
    if (!m) throw new ConflictError(`layer ${id} is neither mounted nor attached`, { context: { layer: id } });
    if (m.dir !== undefined) return fn(m.dir);
    const dir = this.mountPoint(id);
    await this.fs.mount(m.device.path, dir, { readOnly: m.readOnly });
    try {
      return await fn(dir);
    } finally {
      // Unmounted after the caller's answer, next in the layer's lock (whatever comes next for
      // the layer waits for it): the engine's mount keeps the superblock, so this unmount writes
      // nothing back, but it still waited ~25 ms for the device, on every container's Prepare.
      void this.lock
        .run(id, () => this.fs.unmount(dir))
        .catch((err: unknown) => this.o.log.error({ err, layer: id, dir }, 'unmounting a second mount failed'));
    }
  }

  /**
   * The names in directory `path` of a layer handed out as a device (and not mounted by its
   * engine now), read without mounting it; undefined if there is no such directory or the file
   * system cannot tell. For callers holding the layer's lock.
   */
  async listLocked(id: string, path: string): Promise<string[] | undefined> {
    const m = this.mounted.get(id);
    if (!m || m.dir !== undefined || !this.fs.list) return undefined;
    return this.fs.list(m.device.path, path);
  }

  /** The layer attached here as block device `path` (a path an engine hands back), if any. */
  layerOfDevice(path: string): string | undefined {
    for (const [id, m] of this.mounted) if (m.device.path === path) return id;
    return undefined;
  }

  /** Mounts the layer (or counts one more user) and returns its mount point. */
  get(id: string): Promise<string> {
    return this.lock.run(id, () => this.getLocked(id));
  }

  /** One user fewer; the last one unmounts and detaches. */
  put(id: string): Promise<void> {
    return this.lock.run(id, () => this.putLocked(id, false));
  }

  /**
   * For callers already holding the layer's lock. `mkfs`: make a fresh file system first
   * (templates). `internal`: a mount for the core's own work, which a restarted daemon does not
   * adopt (the work died with the old one). `onMounted`: work a front end does on the tree of a
   * layer it has just mounted, before the warm starts and before the Get answers (a container's
   * init files); if it fails, the layer is unmounted and detached again.
   */
  async getLocked(
    id: string,
    options: { mkfs?: boolean; internal?: boolean; onMounted?: (dir: string) => Promise<void> } = {},
  ): Promise<string> {
    const m = this.mounted.get(id);
    if (m) {
      if (m.dir === undefined) throw this.handedOut(id);
      clearTimeout(m.linger);
      m.linger = undefined;
      m.refs++;
      await this.persist();
      return m.dir;
    }
    const readOnly = this.o.manager.get(id).frozen;
    const dir = this.mountPoint(id);
    const t0 = performance.now();
    let attachedAt = t0;
    const internal = options.internal ?? false;
    const device = await this.attached(id, { readOnly, internal, warm: !readOnly && !internal }, async (d) => {
      attachedAt = performance.now();
      if (options.mkfs) await this.fs.mkfs(d.path);
      await this.fs.mount(d.path, dir, { readOnly });
      if (!options.onMounted) return;
      try {
        await options.onMounted(dir);
      } catch (err) {
        await this.fs.unmount(dir).catch(() => undefined);
        throw err;
      }
    });
    const mountMs = Math.round(performance.now() - attachedAt);
    this.mounted.set(id, { refs: 1, dir, device, readOnly, internal: options.internal });
    await this.persist();
    const attachMs = Math.round(attachedAt - t0);
    this.o.log.debug({ layer: id, device: device.path, dir, readOnly, attachMs, mountMs }, 'layer mounted');
    return dir;
  }

  /**
   * Writes a writable layer's dirty data out once its last user is gone, in the background and
   * outside the layer's lock: the next step for a stopped container is its commit, whose freeze
   * then has little left to write (a build step's freeze took 57-72 ms of its commit, most of it
   * this write-out through the device), or its removal, whose unmount would write it anyway. The
   * next Get does not wait for it. Failures are only logged: the freeze or unmount that follows
   * writes what is left and reports its own errors.
   */
  private async syncLingering(id: string, m: Mounted, sync: (dir: string) => Promise<void>): Promise<void> {
    const t0 = performance.now();
    try {
      await sync(m.dir!);
      this.o.log.debug({ layer: id, ms: Math.round(performance.now() - t0) }, 'layer written out after its last Put');
    } catch (err) {
      this.o.log.warn({ err, layer: id }, 'writing a layer out after its last Put failed');
    } finally {
      m.syncing = undefined;
    }
  }

  /**
   * Mounts a staged copy of layer `id` (VolumeManager.stage) through a loop device straight on
   * the file, for the core's own work on a layer nobody else sees: a layer tar applied there is
   * written through the kernel's page cache alone, not through FUSE and NBD into this process
   * (most of what an apply cost: docs/BENCHMARKS.md). Undefined when the attacher cannot attach
   * files or the layer's base is not all on this host. End with unmountStagedLocked, then
   * VolumeManager.freezeStaged or discardStaged. For callers holding the layer's lock.
   */
  async mountStagedLocked(id: string): Promise<string | undefined> {
    if (!this.o.attacher.attachFile || this.mounted.has(id) || this.staged.has(id)) return undefined;
    const staged = await this.o.manager.prepareStage(id);
    if (!staged) return undefined;
    const dir = this.mountPoint(id);
    let device: BlockDevice | undefined;
    try {
      // The device goes on the empty file, then the content is written: configured on a file
      // full of dirty pages, it would write them all to disk first (attach/loop.ts).
      device = await this.o.attacher.attachFile(staged.path, { readOnly: false, fill: staged.fill });
      await this.fs.mount(device.path, dir, { readOnly: false, scratch: true });
    } catch (err) {
      await device?.detach().catch(() => undefined);
      await this.o.manager.discardStaged(id);
      throw err;
    }
    this.staged.set(id, { dir, device });
    this.o.log.debug({ layer: id, device: device.path, dir }, 'staged copy mounted');
    return dir;
  }

  /** Unmounts a staged copy (its file then holds everything written); a no-op if none is mounted. */
  async unmountStagedLocked(id: string): Promise<void> {
    const m = this.staged.get(id);
    if (!m) return;
    this.staged.delete(id);
    try {
      await this.fs.unmount(m.dir);
    } finally {
      await m.device.detach();
    }
  }

  /**
   * Attaches the layer as a block device without mounting it, for a front end whose engine
   * mounts it (a containerd snapshot's Mounts); returns the device. Idempotent: it stays
   * attached until putLocked(id, true). For callers holding the layer's lock. `warm` (default:
   * writable): a container will run on it, so its cache is filled with what the image's last
   * container read (fillCache); not for a layer about to be written from a tar.
   */
  async attachLocked(id: string, options: { readOnly: boolean; warm?: boolean }): Promise<string> {
    const m = this.mounted.get(id);
    if (m) {
      if (m.dir !== undefined) {
        throw new ConflictError(`layer ${id} is mounted by this process: it cannot also be handed out as a device`, {
          context: { layer: id },
        });
      }
      return m.device.path;
    }
    const warm = (options.warm ?? true) && !options.readOnly;
    const device = await this.attached(
      id,
      { readOnly: options.readOnly, internal: false, warm },
      async () => undefined,
    );
    this.mounted.set(id, { refs: 1, dir: undefined, device, readOnly: options.readOnly });
    await this.persist();
    this.o.log.debug({ layer: id, device: device.path, readOnly: options.readOnly }, 'layer attached');
    return device.path;
  }

  isAttachedOnly(id: string): boolean {
    const m = this.mounted.get(id);
    return m !== undefined && m.dir === undefined;
  }

  private handedOut(id: string): ConflictError {
    return new ConflictError(`layer ${id} is handed out as a block device: it cannot be mounted here too`, {
      context: { layer: id },
    });
  }

  /** Exports and attaches the layer's volume, then runs `use` on the device; undoes it all if anything fails. */
  private async attached(
    id: string,
    { readOnly, internal, warm }: { readOnly: boolean; internal: boolean; warm: boolean },
    use: (device: BlockDevice) => Promise<void>,
  ): Promise<BlockDevice> {
    const fetchErrors = this.o.manager.stats(id).fetch.fetchErrors;
    const backend = await this.o.manager.acquire(id);
    const undo: (() => Promise<unknown>)[] = [];
    try {
      this.o.nbd.addExport({ name: id, backend });
      undo.push(async () => this.o.nbd.removeExport(id, { force: true }));
      const device = await this.o.attacher.attach(
        { socket: (internal && this.o.serverSocket) || this.o.nbdSocket, exportName: id },
        join(this.o.dir, 'attach', id),
        { readOnly },
      );
      undo.push(() => device.detach());
      this.attaches++;
      await use(device);
      // After the mount and the caller's first work on it (a container's init files): started
      // before, the warm's reads queued ahead of theirs on the same path (a build step's mount
      // 48 ms and init copy 60 ms against 15 and 16 without a warm, docs/BENCHMARKS.md).
      if (warm) this.fillCache(id, device);
      return device;
    } catch (err) {
      for (let step = undo.pop(); step; step = undo.pop()) await step().catch(() => undefined);
      const failedFetches = this.o.manager.stats(id).fetch.fetchErrors - fetchErrors;
      await this.o.manager.release(id);
      if (failedFetches > 0) {
        // The usual reason a lazy layer does not mount: say so, not just "mount failed".
        throw new IoError(
          `layer ${id} cannot be mounted: ${failedFetches} chunk fetch(es) from the backing store ` +
            `${this.o.manager.store?.url ?? ''} failed (is the store reachable?)`,
          { cause: err, context: { layer: id, failedFetches } },
        );
      }
      throw err;
    }
  }

  /**
   * Starts reading into a new writable layer's device cache what the last container of the
   * same image read here, or the image's startup profile for its first container
   * (VolumeManager.warmRanges), while the mount and the container's start
   * go on. Every container gets a new device with an empty page cache, so without it each one
   * read its image's files anew through the device's five hops, local or not: a build step's
   * compile took 0.2-0.25 s longer than the same compile run twice in one container
   * (docs/BENCHMARKS.md, "Warming a new container's device"). Failures are only logged: the
   * container then reads on demand, as without.
   */
  private fillCache(id: string, device: BlockDevice): void {
    const readIntoCache = device.readIntoCache?.bind(device);
    if (!readIntoCache) return;
    const landing = this.o.manager.profileLanding(id);
    // Without a profile to wait for, what to warm is known now.
    const known = landing ? undefined : this.o.manager.warmRanges(id);
    if (known?.length === 0) return;
    if (this.filling.size >= MAX_FILLS) {
      // Many containers starting at once: each warm would compete with the others and with the
      // starts for the same cores, and fill the page cache with a copy per device.
      this.o.log.debug({ layer: id, inFlight: this.filling.size }, "no warm: others still fill their layers' caches");
      return;
    }
    const t0 = performance.now();
    const fill = async (): Promise<void> => {
      // The image's profile still landing: wait for it (a while at most), then ask for all of it
      // at once. One ask, not one now and one later: each opens the FUSE file, and an open drops
      // the file's cache (nbdfuse does not set FOPEN_KEEP_CACHE), what the first had put there.
      if (landing) await Promise.race([landing, delay(PROFILE_WAIT_MS, undefined, { ref: false })]);
      const waitedMs = Math.round(performance.now() - t0);
      const ranges = known ?? this.o.manager.warmRanges(id);
      if (ranges.length === 0) return;
      await readIntoCache(ranges);
      const bytes = ranges.reduce((n, r) => n + r.length, 0);
      this.o.log.debug(
        { layer: id, bytes, ranges: ranges.length, waitedMs, ms: Math.round(performance.now() - t0) },
        "what the image's containers read asked into the new layer's cache",
      );
    };
    const filling = fill()
      .catch((err: unknown) => this.o.log.warn({ err, layer: id }, "reading into a new layer's cache failed"))
      .finally(() => this.filling.delete(id));
    this.filling.set(id, filling);
  }

  /** `all`: unmount whatever the count (Remove, shutdown). */
  async putLocked(id: string, all: boolean): Promise<void> {
    const m = this.mounted.get(id);
    if (!m) return;
    if (!all && --m.refs > 0) return this.persist();
    const lingerMs = this.o.lingerMs ?? DEFAULT_LINGER_MS;
    if (!all && m.dir !== undefined && !m.internal && lingerMs > 0) {
      // No user now: it stays mounted a moment for the next Get (not recorded: refs 0).
      m.linger = setTimeout(() => {
        void this.lock
          .run(id, () => this.settleLocked(id))
          .catch((err: unknown) => this.o.log.error({ err, layer: id }, 'unmount after the last Put failed'));
      }, lingerMs).unref();
      if (!m.readOnly && !m.syncing && this.fs.sync) m.syncing = this.syncLingering(id, m, this.fs.sync);
      return this.persist();
    }
    clearTimeout(m.linger);
    this.mounted.delete(id);
    await this.persist();
    await m.syncing; // its open directory would make the unmount EBUSY
    if (m.dir !== undefined) await this.fs.unmount(m.dir);
    await this.dropLocked(id, m);
    this.o.log.debug({ layer: id }, 'layer unmounted');
  }

  /** Forgets an unmounted layer's attachment: detached, no longer exported, its volume released. */
  private async dropLocked(id: string, m: Mounted): Promise<void> {
    clearTimeout(m.linger);
    if (this.mounted.get(id) === m) {
      this.mounted.delete(id);
      await this.persist();
    }
    await this.filling.get(id); // its open file would make the FUSE unmount EBUSY
    await m.device.detach();
    this.o.nbd.removeExport(id, { force: true });
    await this.o.manager.release(id);
  }

  /**
   * Runs the attach and mount programs once (attach/warm.ts), in the background, so that the
   * first container's create does not read them from disk. Never fails.
   */
  warm(): void {
    const t0 = performance.now();
    this.warming = Promise.all([this.o.attacher.warm?.(), this.fs.warm?.()]).then(() =>
      this.o.log.debug({ ms: Math.round(performance.now() - t0) }, 'attach path warmed'),
    );
  }

  /** The warm-up still running, if any (awaited at release so that nothing outlives the host). */
  private warming: Promise<void> | undefined;

  /**
   * At start: the attachments a previous daemon left (attached.json) are adopted if they are
   * still whole (the device's NBD client runs, the mount is there, the volume exists): their
   * exports are added to this NBD server. Everything else under this root (mounts, loop
   * devices, FUSE mounts) is torn down, as after a crash.
   */
  async recover(): Promise<void> {
    const mntDir = join(this.o.dir, 'mnt');
    const attachDir = join(this.o.dir, 'attach');
    const mounts = new Set(await mountsUnder(mntDir));
    const records = await this.readState();
    for (const r of records) {
      const device =
        this.o.attacher.adopt && r.device.method === this.o.attacher.method
          ? await this.o.attacher.adopt(r.device).catch(() => undefined)
          : undefined;
      const whole = device !== undefined && (r.dir === undefined || mounts.has(r.dir)) && this.o.manager.has(r.id);
      if (!whole) {
        this.o.log.warn({ layer: r.id, device: r.device.path, dir: r.dir }, 'attachment not whole: not adopted');
        continue;
      }
      const backend = await this.o.manager.acquire(r.id);
      this.o.nbd.addExport({ name: r.id, backend });
      this.mounted.set(r.id, { refs: r.refs, dir: r.dir, device, readOnly: r.readOnly });
      this.o.log.info({ layer: r.id, device: device.path, dir: r.dir, refs: r.refs }, 'attachment adopted');
    }
    // Everything else a predecessor attached is abandoned: the recorded attachments not adopted,
    // and any attachment directory with a FUSE mount (attach/<layer>/fuse) not adopted either.
    const abandoned = new Set<string>();
    for (const t of await mountsUnder(attachDir)) {
      const id = t.slice(attachDir.length + 1).split('/')[0]!;
      if (!this.mounted.has(id)) abandoned.add(id);
    }
    for (const r of records) if (!this.mounted.has(r.id)) abandoned.add(r.id);
    if (abandoned.size > 0) await this.o.abandon?.([...abandoned]).catch(() => undefined);
    const adopted = [...this.mounted.values()];
    const keptDirs = new Set(adopted.map((m) => m.dir).filter((d) => d !== undefined));
    const keptLoops = new Set(adopted.map((m) => m.device.path));
    const keptFuse = new Set(adopted.map((m) => m.device.record?.fuseDir).filter((d) => typeof d === 'string'));
    for (const t of mounts) {
      if (keptDirs.has(t)) continue;
      await run('umount', ['-l', t]);
      this.o.log.warn({ mount: t }, 'recovered: stale layer mount removed');
    }
    // Loop devices on nbdfuse files, and on staged copies (never kept: their apply died).
    const loops = [...(await loopsUnder(attachDir)), ...(await loopsUnder(this.o.manager.stagingDir))];
    for (const { device, backFile } of loops) {
      if (keptLoops.has(device)) continue;
      await run('losetup', ['-d', device]);
      this.o.log.warn({ loop: device, file: backFile }, 'recovered: stale loop device detached');
    }
    for (const t of await mountsUnder(attachDir)) {
      if (keptFuse.has(t)) continue;
      await run('fusermount3', ['-u', '-z', t]);
      this.o.log.warn({ mount: t }, 'recovered: stale nbdfuse mount removed');
    }
    await this.persist();
  }

  /**
   * Shutdown of the daemon: layers in use (mounted here for dockerd, or a device the engine has
   * mounted) stay attached for the next daemon to adopt; the others are unmounted and detached.
   * Returns how many stay.
   */
  async release(): Promise<number> {
    await this.warming;
    const busy = await mountSources();
    let kept = 0;
    for (const id of [...this.mounted.keys()]) {
      await this.lock.run(id, async () => {
        const m = this.mounted.get(id);
        if (!m) return;
        const inUse = m.dir !== undefined ? !m.internal && m.refs > 0 : busy.has(m.device.path);
        if (inUse && m.device.record) {
          kept++;
          return;
        }
        await this.putLocked(id, true);
      });
    }
    await this.persist();
    if (kept > 0) this.o.log.info({ kept }, 'layers in use stay attached for the next start');
    return kept;
  }

  private get statePath(): string {
    return join(this.o.dir, 'attach', 'attached.json');
  }

  private async readState(): Promise<AttachmentRecord[]> {
    try {
      return JSON.parse(await readFile(this.statePath, 'utf8')) as AttachmentRecord[];
    } catch {
      return [];
    }
  }

  /** Records the attachments (written whole, then renamed: never half a file). */
  private persist(): Promise<void> {
    const records: AttachmentRecord[] = [];
    for (const [id, m] of this.mounted) {
      if (m.device.record && !m.internal && m.refs > 0) {
        records.push({ id, dir: m.dir, refs: m.refs, readOnly: m.readOnly, device: m.device.record });
      }
    }
    const text = JSON.stringify(records);
    this.saving = this.saving
      .catch(() => undefined)
      .then(async () => {
        await mkdir(join(this.o.dir, 'attach'), { recursive: true });
        await writeFile(`${this.statePath}.tmp`, text, { mode: 0o600 });
        await rename(`${this.statePath}.tmp`, this.statePath);
      });
    return this.saving;
  }

  /** Unmounts every layer (shutdown). */
  async unmountAll(): Promise<void> {
    await this.warming;
    for (const id of [...this.mounted.keys()]) await this.lock.run(id, () => this.putLocked(id, true));
  }
}
