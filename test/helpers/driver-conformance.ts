/**
 * The layer conformance suite, as moby's graphtest is for its drivers: the layer core
 * (LayerStore, what the graphdriver plugin serves) called directly (no dockerd), on "hosts" that each have their own volumes, NBD server and
 * layer mounts and share one backing store. Run against the real parts (an attacher, ext4, a
 * dir:// store) and against fakes (a fake attacher over NBD, tarfs, an in-memory store) by a
 * one-line test file each.
 */
import { mkdir, readFile, readdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Attacher } from '../../attach/attacher.js';
import type { LayerFilesystem } from '../../attach/filesystem.js';
import { run } from '../../common/exec.js';
import { silentLogger } from '../../common/logger.js';
import { rawTar } from '../../harness/raw-tar.js';
import { NbdServer } from '../../nbd-server/server.js';
import { ChangeKind } from '../../layers/changes.js';
import { InitLayers } from '../../plugin/init-layers.js';
import { missingEntries } from '../../layers/copy-missing.js';
import { LayerStore, MAX_DELTA_PREFETCH, START_PREFETCH } from '../../layers/layer-store.js';
import { decodeManifest } from '../../volumes/manifest.js';
import type { Digest } from '../../common/digests.js';
import { markerTar } from '../../layers/layer-tar/marker.js';
import { DEFAULT_LINGER_MS, LayerMounts } from '../../layers/layer-mounts.js';
import type { BackingStore } from '../../stores/backing-store.js';
import { VolumeManager } from '../../volumes/manager.js';
import { randomBytes, tempDir } from './tmp.js';

export interface DriverParts {
  attacher: () => Attacher;
  filesystem: LayerFilesystem;
  /** One store shared by every host of a test. */
  store: (dir: string) => BackingStore;
  /** Checks run once before the suite (tools, root); throw to say what is missing. */
  requirements?: () => Promise<void> | void;
}

export interface Host {
  driver: LayerStore;
  manager: VolumeManager;
  mounts: LayerMounts;
  close(): Promise<void>;
}

const LAYER_SIZE = 64 * 2 ** 20;

/** A host's layer core (volumes, NBD server, mounts, LayerStore) over `parts`, as the suite makes each host. */
export async function startHost(dir: string, store: BackingStore, parts: DriverParts): Promise<Host> {
  const log = silentLogger();
  const manager = await VolumeManager.open(join(dir, 'volumes'), { store, log });
  const nbd = new NbdServer({ log });
  const nbdSocket = join(dir, 'nbd.sock');
  await nbd.listen(`unix://${nbdSocket}`);
  const attacher = parts.attacher();
  const mounts = new LayerMounts({ manager, nbd, nbdSocket, attacher, dir, log, filesystem: parts.filesystem });
  const driver = new LayerStore({ manager, mounts, layerSize: LAYER_SIZE, attachMethod: attacher.method, log });
  return {
    driver,
    manager,
    mounts,
    close: async () => {
      await driver.cleanup();
      await nbd.close();
      await manager.close();
    },
  };
}

/** Writes files into a layer through Get/Put. */
async function write(h: Host, id: string, files: Record<string, string>): Promise<void> {
  const dir = await h.driver.get(id);
  try {
    for (const [path, data] of Object.entries(files)) {
      await mkdir(join(dir, path, '..'), { recursive: true });
      await writeFile(join(dir, path), data);
    }
  } finally {
    await h.driver.put(id);
  }
}

/** Reads files of a layer through Get/Put ('' for a missing one). */
async function read(h: Host, id: string, paths: string[]): Promise<string[]> {
  const dir = await h.driver.get(id);
  try {
    return await Promise.all(paths.map((p) => readFile(join(dir, p), 'utf8').catch(() => '')));
  } finally {
    await h.driver.put(id);
  }
}

const body = (tar: Buffer): AsyncIterable<Buffer> => Readable.from([tar]);

export function driverConformance(name: string, parts: DriverParts): void {
  describe(`layer conformance: ${name}`, () => {
    let dir: Awaited<ReturnType<typeof tempDir>>;
    let store: BackingStore;
    let a: Host;
    let b: Host;

    beforeEach(async () => {
      await parts.requirements?.();
      dir = await tempDir('slacker-conformance-');
      store = parts.store(join(dir.path, 'store'));
      a = await startHost(join(dir.path, 'a'), store, parts);
      b = await startHost(join(dir.path, 'b'), store, parts);
    });
    afterEach(async () => {
      await a?.close();
      await b?.close();
      await run('rm', ['-rf', dir.path]);
    });

    it('creates, mounts, writes and removes a base layer; Remove is idempotent', async () => {
      await a.driver.create('base', undefined);
      expect(a.driver.exists('base')).toBe(true);
      await write(a, 'base', { 'etc/hostname': 'slacker\n', 'bin/tool': 'x' });
      expect(await read(a, 'base', ['etc/hostname', 'bin/tool'])).toEqual(['slacker\n', 'x']);
      expect(await readdir(await a.driver.get('base'))).toEqual(expect.arrayContaining(['bin', 'etc']));
      await a.driver.put('base');
      await a.driver.remove('base');
      expect(a.driver.exists('base')).toBe(false);
      await a.driver.remove('base');
      expect(a.mounts.count).toBe(0);
    });

    it('Get and Put nest: the layer stays mounted until the last Put', async () => {
      await a.driver.create('nest', undefined);
      const d1 = await a.driver.get('nest');
      const d2 = await a.driver.get('nest');
      expect(d2).toBe(d1);
      await a.driver.put('nest');
      expect(a.mounts.isMounted('nest')).toBe(true);
      await a.driver.put('nest');
      expect(a.mounts.isMounted('nest')).toBe(false);
    });

    it('after its last Put a layer stays mounted a moment: the next Get attaches nothing; a child freezes it at once', async () => {
      await a.driver.create('lin', undefined);
      const d1 = await a.driver.get('lin');
      await a.driver.put('lin');
      expect(a.mounts.isMounted('lin')).toBe(false); // no user: it only lingers
      const attaches = a.mounts.attaches;
      expect(await a.driver.get('lin')).toBe(d1);
      expect(a.mounts.attaches).toBe(attaches); // the same mount, nothing attached
      await writeFile(join(d1, 'f'), 'x');
      await a.driver.put('lin');
      expect(a.mounts.lingering).toBe(1);
      await a.driver.create('lin-child', 'lin'); // freezes 'lin': its lingering mount ends first
      expect(a.mounts.lingering).toBe(0);
      expect(await read(a, 'lin-child', ['f'])).toEqual(['x']);
      expect(a.mounts.lingering).toBe(1);
      await new Promise((r) => setTimeout(r, DEFAULT_LINGER_MS + 500));
      expect(a.mounts.lingering).toBe(0); // and by itself once the linger time is over
      await a.driver.remove('lin-child');
      await a.driver.remove('lin');
    });

    it('after its last Put a writable layer is written out to its volume while it lingers, and reads back the same after', async () => {
      await a.driver.create('wo', undefined);
      const dir = await a.driver.get('wo');
      const data = randomBytes(1024 * 1024, 77);
      const before = a.manager.stats('wo').chunks;
      await writeFile(join(dir, 'big'), data);
      await a.driver.put('wo');
      // Well before the file system would write it back by itself (ext4: 30 s), and still mounted.
      const deadline = Date.now() + DEFAULT_LINGER_MS - 500;
      while (a.manager.stats('wo').chunks < before + 8 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
      expect(a.manager.stats('wo').chunks).toBeGreaterThanOrEqual(before + 8); // 1 MiB: 8 chunks of 128 KiB
      expect(a.mounts.lingering).toBe(1);
      await a.driver.create('wo-child', 'wo'); // the lingering mount ends, the layer is frozen
      const back = await a.driver.get('wo-child');
      try {
        expect((await readFile(join(back, 'big'))).equals(data)).toBe(true);
      } finally {
        await a.driver.put('wo-child');
      }
    });

    it("a new container's device is warmed with what the image's last container here read", async () => {
      await a.driver.create('wimg', undefined);
      await write(a, 'wimg', { 'etc/a.bin': 'a'.repeat(256 * 1024), 'srv/b.bin': 'b'.repeat(1024 * 1024) });
      await a.driver.freeze('wimg');
      await a.driver.create('w1', 'wimg');
      const dir1 = await a.driver.get('w1');
      const mountOnly = new Set(a.manager.readTrace('w1'));
      expect(await readFile(join(dir1, 'srv/b.bin'), 'utf8')).toBe('b'.repeat(1024 * 1024));
      await a.driver.put('w1');
      const read1 = a.manager.readTrace('w1');
      await a.driver.remove('w1'); // its reads are kept for the image's next container

      await a.driver.create('w2', 'wimg');
      const dir2 = await a.driver.get('w2');
      try {
        // Without reading anything, the new device reads what w1 read (in the background).
        const deadline = Date.now() + 5_000;
        const has = (): boolean => read1.every((c) => a.manager.readTrace('w2').includes(c));
        while (!has() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        expect(has()).toBe(true);
        // ...and more than a mount reads: b.bin's data (tarfs reads its whole tree to mount).
        if (parts.filesystem.name !== 'tarfs') expect(read1.some((c) => !mountOnly.has(c))).toBe(true);
        expect(await readFile(join(dir2, 'srv/b.bin'), 'utf8')).toBe('b'.repeat(1024 * 1024));
        await writeFile(join(dir2, 'srv/b.bin'), 'changed');
      } finally {
        await a.driver.put('w2');
      }
      expect(await read(a, 'w2', ['srv/b.bin', 'etc/a.bin'])).toEqual(['changed', 'a'.repeat(256 * 1024)]);
      await a.driver.remove('w2');
      // A layer handed out for a pull (containerd's extraction snapshot) is not warmed: no container runs on it.
      await a.driver.create('w3', 'wimg');
      await a.driver.attach('w3', { readOnly: false, warm: false });
      await new Promise((r) => setTimeout(r, 300));
      expect(a.manager.readTrace('w3')).toEqual([]);
      await a.driver.detach('w3');
      await a.driver.remove('w3');
      await a.driver.remove('wimg');
    });

    it('children see their parent; their writes stay theirs; a container init layer is frozen for its child', async () => {
      await a.driver.create('img', undefined);
      await write(a, 'img', { 'a.txt': 'from the image', 'etc/conf': 'v1' });
      await a.driver.create('c-init', 'img'); // dockerd: CreateReadWrite(<id>-init, image)
      await write(a, 'c-init', { 'etc/hosts': 'init' });
      await a.driver.create('c', 'c-init'); // then CreateReadWrite(<id>, <id>-init): freezes c-init
      await write(a, 'c', { 'a.txt': 'changed', 'new.txt': 'added' });
      expect(await read(a, 'c', ['a.txt', 'etc/conf', 'etc/hosts', 'new.txt'])).toEqual([
        'changed',
        'v1',
        'init',
        'added',
      ]);
      expect(await read(a, 'img', ['a.txt', 'new.txt'])).toEqual(['from the image', '']);
      expect(a.manager.get('c-init').frozen).toBe(true);
    });

    it("dockerd's init layers as directories (plugin/init-layers.ts): the container's layer gets their files where its image has none, after a restart too; Changes count them as the init layer's", async () => {
      const inits = new InitLayers(join(dir.path, 'a'), a.driver, silentLogger());
      await inits.create('img', undefined, undefined);
      await write(a, 'img', { 'etc/hostname': 'the image', 'bin/sh': 'x' });
      await inits.create('ctr-init', 'img', undefined);
      const scratch = await inits.get('ctr-init'); // what dockerd writes its init files into
      expect(a.mounts.isMounted('ctr-init')).toBe(false); // no device for it
      await mkdir(join(scratch, 'etc'));
      await writeFile(join(scratch, 'etc/hostname'), '');
      await writeFile(join(scratch, 'etc/hosts'), '');
      await writeFile(join(scratch, '.dockerenv'), '');
      await symlink('/proc/mounts', join(scratch, 'etc/mtab'));
      await inits.put('ctr-init');
      await inits.create('ctr', 'ctr-init', undefined);
      expect(a.manager.get('ctr-init').frozen).toBe(true);
      // A restarted front end finds its state on disk
      const again = new InitLayers(join(dir.path, 'a'), a.driver, silentLogger());
      const root = await again.get('ctr');
      try {
        expect(await readFile(join(root, 'etc/hostname'), 'utf8')).toBe('the image'); // the image's stays
        expect(await readFile(join(root, 'etc/hosts'), 'utf8')).toBe('');
        expect(await readdir(root)).toEqual(expect.arrayContaining(['.dockerenv', 'bin', 'etc']));
        await writeFile(join(root, 'new.txt'), 'added');
      } finally {
        await again.put('ctr');
      }
      const { changes } = await again.changes('ctr', 'ctr-init');
      expect(changes).toEqual([{ Path: '/new.txt', Kind: ChangeKind.Add }]);
      await again.remove('ctr');
      await again.remove('ctr-init');
      expect(again.isScratch('ctr-init')).toBe(false);
      expect(a.driver.exists('ctr-init')).toBe(false);
    });

    it('an init copy a crash interrupted is made again from its plan: the files whole, Changes still without them', async () => {
      const inits = new InitLayers(join(dir.path, 'a'), a.driver, silentLogger());
      await inits.create('cimg', undefined, undefined);
      await write(a, 'cimg', { 'etc/hostname': 'the image' });
      await inits.create('cc-init', 'cimg', undefined);
      const scratch = await inits.get('cc-init');
      await mkdir(join(scratch, 'etc'));
      await writeFile(join(scratch, 'etc/hosts'), '127.0.0.1 localhost\n');
      await writeFile(join(scratch, '.dockerenv'), '');
      await inits.put('cc-init');
      await inits.create('cc', 'cc-init', undefined);
      // The daemon died in the middle of the first Get's copy: its plan recorded, one file made
      // and cut short, the rest not yet.
      const recordPath = join(dir.path, 'a', 'init-layers', 'cc.json');
      const root = await a.driver.get('cc');
      try {
        const planned = await missingEntries(scratch, root);
        expect(planned).toEqual(['/.dockerenv', '/etc/hosts']);
        await writeFile(recordPath, JSON.stringify({ ...JSON.parse(await readFile(recordPath, 'utf8')), planned }));
        await writeFile(join(root, 'etc/hosts'), '127.0');
      } finally {
        await a.driver.put('cc');
      }
      const again = new InitLayers(join(dir.path, 'a'), a.driver, silentLogger());
      const mounted = await again.get('cc');
      try {
        expect(await readFile(join(mounted, 'etc/hosts'), 'utf8')).toBe('127.0.0.1 localhost\n');
        expect(await readdir(mounted)).toEqual(expect.arrayContaining(['.dockerenv', 'etc']));
        expect(await readFile(join(mounted, 'etc/hostname'), 'utf8')).toBe('the image');
      } finally {
        await again.put('cc');
      }
      expect(JSON.parse(await readFile(recordPath, 'utf8'))).not.toHaveProperty('planned');
      expect((await again.changes('cc', 'cc-init')).changes).toEqual([]);
      await again.remove('cc');
      await again.remove('cc-init');
    });

    it('refuses a size a child layer cannot have, instead of ignoring it', async () => {
      await a.driver.create('sized', undefined, 32 * 2 ** 20);
      expect(a.manager.get('sized').size).toBe(32 * 2 ** 20);
      await expect(a.driver.create('bigger', 'sized', 64 * 2 ** 20)).rejects.toThrow(
        /cannot have size 64MiB: a layer has its base layer's size \(32MiB here\)/,
      );
      expect(a.driver.exists('bigger')).toBe(false);
      await a.driver.create('same', 'sized', 32 * 2 ** 20);
      expect(a.manager.get('same').size).toBe(32 * 2 ** 20);
    });

    it('refuses to freeze a mounted parent for a child', async () => {
      await a.driver.create('p', undefined);
      await a.driver.get('p');
      try {
        await expect(a.driver.create('child', 'p')).rejects.toThrow(/is mounted/);
      } finally {
        await a.driver.put('p');
      }
    });

    it('Changes lists what a layer added, changed and deleted against its parent', async () => {
      await a.driver.create('p', undefined);
      await write(a, 'p', {
        'keep.txt': 'same',
        'edit.txt': 'old',
        'gone.txt': 'x',
        'etc/app/conf': 'v1',
        'var/keep': 'k',
      });
      await a.driver.create('c', 'p');
      const dir = await a.driver.get('c');
      try {
        await writeFile(join(dir, 'edit.txt'), 'newer and longer');
        await writeFile(join(dir, 'added.txt'), 'new');
        await writeFile(join(dir, 'etc/app/conf'), 'v2 longer');
        await run('rm', [join(dir, 'gone.txt')]);
      } finally {
        await a.driver.put('c');
      }
      const { changes, size } = await a.driver.changes('c', 'p');
      expect(changes).toEqual(
        expect.arrayContaining([
          { Path: '/added.txt', Kind: ChangeKind.Add },
          { Path: '/edit.txt', Kind: ChangeKind.Modify },
          { Path: '/gone.txt', Kind: ChangeKind.Delete },
          // moby's rule: every directory above a change is modified too
          { Path: '/etc', Kind: ChangeKind.Modify },
          { Path: '/etc/app', Kind: ChangeKind.Modify },
          { Path: '/etc/app/conf', Kind: ChangeKind.Modify },
        ]),
      );
      expect(changes.find((c) => c.Path === '/keep.txt')).toBeUndefined();
      expect(changes.find((c) => c.Path === '/var')).toBeUndefined(); // nothing inside it changed
      expect(size).toBe('new'.length + 'newer and longer'.length + 'v2 longer'.length);
    });

    it('ApplyDiff of an ordinary tar fills a new layer and reports its file bytes; a refused tar leaves it empty', async () => {
      await a.driver.create('l1', undefined);
      const size = await a.driver.applyTar(
        'l1',
        undefined,
        body(
          rawTar([
            { name: 'usr/', type: 'directory' },
            { name: 'usr/app', data: 'binary', mode: 0o755 },
            { name: 'usr/link', type: 'symlink', linkname: 'app' },
          ]),
        ),
      );
      expect(size).toBe('binary'.length);
      expect(await read(a, 'l1', ['usr/app', 'usr/link'])).toEqual(['binary', 'binary']);
      expect(a.manager.get('l1').frozen).toBe(true);

      await a.driver.create('bad', 'l1');
      await expect(
        a.driver.applyTar('bad', 'l1', body(rawTar([{ name: 'ok', data: 'x' }, { name: '.wh...' }]))),
      ).rejects.toThrow(/whiteout must name a file/);
      expect(a.driver.exists('bad')).toBe(true);
      expect(await read(a, 'bad', ['ok', 'usr/app'])).toEqual(['', 'binary']); // back to the fresh clone
    });

    it('a startup profile starts with what the layers between image and container read (the -init layer)', async () => {
      await a.driver.create('pimg', undefined);
      await write(a, 'pimg', { 'etc/a.bin': 'a'.repeat(512 * 1024), 'srv/b.bin': 'b'.repeat(512 * 1024) });
      await a.driver.freeze('pimg');
      await a.driver.create('pc-init', 'pimg');
      expect(await read(a, 'pc-init', ['etc/a.bin'])).toEqual(['a'.repeat(512 * 1024)]); // the engine sets up
      await a.driver.create('pc', 'pc-init');
      expect(await read(a, 'pc', ['srv/b.bin'])).toEqual(['b'.repeat(512 * 1024)]); // the container starts
      const own = a.manager.readTrace('pc');
      const { prefetch } = await a.driver.publishWithProfile('pimg', 'pc');
      const init = a.manager.readTrace('pc-init');
      expect(init.length).toBeGreaterThan(0);
      // Every chunk either read, once each, the -init layer's first (the profile's order).
      expect(new Set([...init, ...own]).size).toBe(prefetch);
      expect(prefetch).toBeGreaterThanOrEqual(own.length);
    });

    it('Diff publishes a marker; another host applies it and reads the same files, fetched from the store', async () => {
      await a.driver.create('base', undefined);
      await write(a, 'base', { 'data/big': 'b'.repeat(300_000), 'etc/motd': 'hello' });
      await a.driver.create('top', 'base');
      await write(a, 'top', { 'etc/motd': 'hello from the top' });
      await a.driver.create('top2', 'top'); // top is frozen now
      const markerBase = await markerTar(await a.driver.publish('base'));
      const markerTop = await markerTar(await a.driver.publish('top'));
      expect(markerTop.length).toBeLessThan(16 * 1024);

      await b.driver.create('base', undefined);
      await b.driver.applyTar('base', undefined, body(markerBase));
      await b.driver.create('top', 'base');
      await b.driver.applyTar('top', 'base', body(markerTop));
      expect(b.manager.stats('top').snapshotRef).toBe(a.manager.stats('top').snapshotRef);
      expect(await read(b, 'top', ['etc/motd', 'data/big'])).toEqual(['hello from the top', 'b'.repeat(300_000)]);
      expect(b.manager.chunks.total.bytesFetched).toBeGreaterThan(0);
    });

    it("a commit's own chunks, when few, and the first it read of its image are fetched wherever its snapshot is opened, before any read", async () => {
      await a.driver.create('base', undefined);
      await write(a, 'base', { 'data/big': 'b'.repeat(600_000) });
      await a.driver.create('small', 'base');
      await write(a, 'small', { 'etc/motd': 'a small change' });
      expect(await read(a, 'small', ['data/big'])).toEqual(['b'.repeat(600_000)]); // read, not changed
      await a.driver.create('large', 'base');
      const big = randomBytes(10 * 1024 * 1024, 5); // 80 chunks of 128 KiB: more than MAX_DELTA_PREFETCH
      const dir = await a.driver.get('large');
      try {
        await writeFile(join(dir, 'blob'), big);
      } finally {
        await a.driver.put('large');
      }
      const baseRef = await a.driver.publish('base');
      const smallRef = await a.driver.publish('small');
      const largeRef = await a.driver.publish('large');
      const manifest = async (ref: string) => decodeManifest(ref as Digest, await store.getManifest(ref as Digest));
      const baseMap = (await manifest(baseRef)).chunks;
      expect((await manifest(baseRef)).prefetch).toBeUndefined(); // no parent: not a commit on an image
      // Listed: a commit's changed chunks (when few) first, then what it read of its image first.
      const parts = (m: Awaited<ReturnType<typeof manifest>>): { own: number[]; read: number[] } => {
        const list = m.prefetch ?? [];
        const own = list.filter((idx) => m.chunks.get(idx) !== baseMap.get(idx));
        expect(list.slice(0, own.length)).toEqual(own);
        return { own, read: list.slice(own.length) };
      };
      // 80 changed chunks and more: read on demand; only what it read first is listed.
      const large = (await manifest(largeRef)).prefetch ?? [];
      expect(large.length).toBeGreaterThan(0); // at least its mount's
      expect(large.length).toBeLessThanOrEqual(START_PREFETCH);
      const smallManifest = await manifest(smallRef);
      const small = parts(smallManifest);
      expect(small.own.length).toBeGreaterThan(0);
      expect(small.own.length).toBeLessThanOrEqual(MAX_DELTA_PREFETCH);
      expect(small.read.length).toBeGreaterThan(0);
      expect(small.read.length).toBeLessThanOrEqual(START_PREFETCH);
      // Host b has the base; opening the commit fetches the listed chunks with nothing read yet.
      await b.driver.create('base', undefined);
      await b.driver.applyTar('base', undefined, body(await markerTar(baseRef)));
      await b.driver.create('small', 'base');
      await b.driver.applyTar('small', 'base', body(await markerTar(smallRef)));
      const listed = new Set(smallManifest.prefetch!.map((idx) => smallManifest.chunks.get(idx))).size;
      const deadline = Date.now() + 5000;
      while (b.manager.stats('small').fetch.chunksFetched < listed && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
      expect(b.manager.stats('small').fetch.chunksFetched).toBe(listed);
      expect(await read(b, 'small', ['etc/motd'])).toEqual(['a small change']);
    });

    it('a Diff of a mounted, writable layer is a consistent image of it', async () => {
      await a.driver.create('w', undefined);
      const dir = await a.driver.get('w');
      try {
        await writeFile(join(dir, 'live.txt'), 'written while mounted');
        await symlink('live.txt', join(dir, 'alias'));
        const marker = await markerTar(await a.driver.publish('w'));
        await b.driver.create('w', undefined);
        await b.driver.applyTar('w', undefined, body(marker));
      } finally {
        await a.driver.put('w');
      }
      expect(await read(b, 'w', ['live.txt', 'alias'])).toEqual(['written while mounted', 'written while mounted']);
    });

    it('a sweep of unused layers during a publish waits for it, and removes only what nothing uses', async () => {
      await a.driver.create('w', undefined);
      await write(a, 'w', { 'kept.txt': 'published' });
      await a.driver.create('unused', undefined);
      // A crash's leftover publish copy of w, and the publish now holding its own copy at the upload.
      await a.manager.snapshot('w', 'w.diff-deadbeef');
      let release!: () => void;
      const held = new Promise<void>((r) => (release = r));
      const putManifest = store.putManifest.bind(store);
      store.putManifest = async (manifest, hints, stored) => (await held, putManifest(manifest, hints, stored));
      try {
        const publishing = a.driver.publish('w');
        while (a.manager.list().filter((r) => r.id.startsWith('w.diff-')).length < 2) {
          await new Promise((r) => setTimeout(r, 5));
        }
        // What a front end's sweep asks of every layer: w is in use, the rest nothing names.
        const ids = [
          'w',
          'unused',
          ...a.manager
            .list()
            .map((r) => r.id)
            .filter((id) => id.startsWith('w.diff-')),
        ];
        let swept = false;
        const sweep = Promise.all(ids.map((id) => a.driver.removeIfUnused(id, () => id !== 'w'))).then((removed) => {
          swept = true;
          return ids.filter((_, i) => removed[i]);
        });
        await new Promise((r) => setTimeout(r, 100));
        expect(swept).toBe(false); // the copies wait for w's publish
        release();
        const ref = await publishing;
        expect((await sweep).sort()).toEqual(['unused', 'w.diff-deadbeef']);
        expect(a.manager.list().filter((r) => /^(unused|w\.diff-)/.test(r.id))).toEqual([]);
        expect(a.driver.exists('w')).toBe(true);
        await b.driver.create('w', undefined);
        await b.driver.applyTar('w', undefined, body(await markerTar(ref)));
        expect(await read(b, 'w', ['kept.txt'])).toEqual(['published']);
      } finally {
        release();
        store.putManifest = putManifest;
      }
    });

    it("at start, a crashed publish's leftover copies are removed, and nothing else", async () => {
      await a.driver.create('p', undefined);
      await write(a, 'p', { f: 'kept' });
      await a.driver.create('p-child', 'p'); // p is frozen
      await a.manager.snapshot('p-child', 'p-child.diff-0badc0de');
      await a.manager.snapshot('p-child', 'p-child.diff-0badc0df');
      expect((await a.driver.removeLeftoverCopies()).sort()).toEqual([
        'p-child.diff-0badc0de',
        'p-child.diff-0badc0df',
      ]);
      expect(
        a.manager
          .list()
          .map((r) => r.id)
          .filter((id) => id.startsWith('p')),
      ).toEqual(expect.arrayContaining(['p', 'p-child']));
      expect(a.manager.list().filter((r) => r.id.includes('.diff-'))).toEqual([]);
      expect(await read(a, 'p-child', ['f'])).toEqual(['kept']);
      expect(await a.driver.removeLeftoverCopies()).toEqual([]);
    });

    it('reads every file through a chain of 128 layers', { timeout: 600_000 }, async () => {
      let parent: string | undefined;
      for (let i = 0; i < 128; i++) {
        const id = `layer${i}`;
        await a.driver.create(id, parent);
        await a.driver.applyTar(id, parent, body(rawTar([{ name: `files/f${i}`, data: `content ${i}` }])));
        parent = id;
      }
      const all = await read(
        a,
        'layer127',
        Array.from({ length: 128 }, (_, i) => `files/f${i}`),
      );
      expect(all).toEqual(Array.from({ length: 128 }, (_, i) => `content ${i}`));
      expect(a.mounts.count).toBe(0);
    });
  });
}
