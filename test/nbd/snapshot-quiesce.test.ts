/**
 * How a commit gets a consistent image of a mounted layer (LayerMounts.quiescedLocked), on the
 * real parts: a layer nothing else uses is unmounted and its device held exclusively instead of
 * frozen (FIFREEZE waits for RCU grace periods); anything else that keeps the file system alive
 * (a second user, a process inside the mount, a copy of the mount in another mount namespace, an
 * engine's own mount of a handed-out device) still gets the freeze. Every case checks that the
 * snapshot holds what was written and that the layer is as its users left it.
 */
import { once } from 'node:events';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chooseAttacher } from '../../attach/choose-attacher.js';
import { ext4 } from '../../attach/ext4.js';
import type { Attacher, BlockDevice } from '../../attach/attacher.js';
import type { LayerFilesystem } from '../../attach/filesystem.js';
import type { Digest } from '../../common/digests.js';
import { DirStore } from '../../stores/dir-store.js';
import { startHost, type Host } from '../helpers/driver-conformance.js';
import { tempDir } from '../helpers/tmp.js';
import type { Started } from '../../common/exec.js';
import { requireRoot, requireTools, run, startProcess } from '../helpers/tools.js';

describe('a commit of a mounted layer: unmounted and held, or frozen', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let a: Host;
  let b: Host;
  let calls: { freeze: number; mount: number };
  let failClaims: boolean;
  let failMounts: boolean;
  const started: Started[] = [];
  const mounted: string[] = [];

  beforeEach(async () => {
    requireRoot();
    await requireTools('nbdfuse', 'losetup', 'mkfs.ext4', 'unshare');
    dir = await tempDir('slacker-quiesce-');
    calls = { freeze: 0, mount: 0 };
    const counted: LayerFilesystem = {
      ...ext4,
      freeze: (d) => (calls.freeze++, ext4.freeze(d)),
      mount: (device, d, options) =>
        failMounts
          ? Promise.reject(new Error('made-up mount failure'))
          : (calls.mount++, ext4.mount(device, d, options)),
    };
    const store = new DirStore(join(dir.path, 'store'));
    failClaims = false;
    failMounts = false;
    // This host's attacher, whose devices' claims can be made to fail (an error other than EBUSY).
    const attacher = (): Attacher => {
      const real = chooseAttacher('auto');
      return Object.assign(Object.create(real) as Attacher, {
        attach: async (...args: Parameters<Attacher['attach']>): Promise<BlockDevice> => {
          const device = await real.attach(...args);
          const claim = device.claim?.bind(device);
          return Object.assign(Object.create(device) as BlockDevice, {
            claim: claim && (() => (failClaims ? Promise.reject(new Error('EACCES (made up)')) : claim())),
          });
        },
      });
    };
    const parts = { attacher, filesystem: counted, store: () => store };
    a = await startHost(join(dir.path, 'a'), store, parts);
    b = await startHost(join(dir.path, 'b'), store, parts);
  });
  afterEach(async () => {
    for (const p of started.splice(0)) await p.stop();
    for (const d of mounted.splice(0)) await ext4.unmount(d).catch(() => undefined);
    await a?.close();
    await b?.close();
    await run('rm', ['-rf', dir.path]);
  });

  /** Host b's copy of snapshot `ref`, read through its own mount. */
  async function readOnB(ref: Digest, files: string[]): Promise<string[]> {
    const id = `copy-${calls.mount}-${Math.random().toString(16).slice(2)}`;
    await b.driver.create(id, undefined);
    await b.driver.replaceWithSnapshot(id, ref);
    const at = await b.driver.get(id);
    try {
      return await Promise.all(files.map((f) => readFile(join(at, f), 'utf8').catch(() => '')));
    } finally {
      await b.driver.put(id);
    }
  }

  /** Creates layer w, mounts it for one user and writes a file. */
  async function mountedLayer(): Promise<string> {
    await a.driver.create('w', undefined);
    const at = await a.driver.get('w');
    await writeFile(join(at, 'before.txt'), 'written before the commit');
    return at;
  }

  it("a layer mounted for one user (dockerd's own Get around a commit) is unmounted, not frozen, and mounted again on the same device", async () => {
    const at = await mountedLayer();
    const attaches = a.mounts.attaches;
    const mounts = calls.mount;
    const ref = await a.driver.publish('w');
    expect(calls.freeze).toBe(0);
    expect(calls.mount).toBe(mounts + 1); // mounted back
    expect(a.mounts.attaches).toBe(attaches); // on the device it had
    // Still the user's mount, writable.
    await writeFile(join(at, 'after.txt'), 'written after the commit');
    expect(await readFile(join(at, 'after.txt'), 'utf8')).toBe('written after the commit');
    await a.driver.put('w');
    expect(await readOnB(ref, ['before.txt', 'after.txt'])).toEqual(['written before the commit', '']);
  });

  it('a layer lingering after its last Put (a stopped container) is unmounted for its commit, not frozen', async () => {
    await mountedLayer();
    await a.driver.put('w'); // lingers
    const ref = await a.driver.publish('w');
    expect(calls.freeze).toBe(0);
    expect(await readOnB(ref, ['before.txt'])).toEqual(['written before the commit']);
  });

  it('a device that cannot be claimed for another reason than a mount is frozen, and the commit goes on', async () => {
    const at = await mountedLayer();
    failClaims = true;
    const ref = await a.driver.publish('w');
    expect(calls.freeze).toBe(1);
    await writeFile(join(at, 'after.txt'), 'still mounted'); // mounted back before the freeze
    await a.driver.put('w');
    expect(await readOnB(ref, ['before.txt'])).toEqual(['written before the commit']);
  });

  it('a layer that cannot be mounted back after its snapshot fails the commit, leaves no copy, and mounts afresh at the next Get', async () => {
    await mountedLayer();
    const volumes = a.manager.list().length;
    failMounts = true;
    await expect(a.driver.publish('w')).rejects.toThrow(/made-up mount failure/);
    failMounts = false;
    expect(a.manager.list()).toHaveLength(volumes); // the publish's copy went
    expect(a.mounts.isMounted('w')).toBe(false); // taken down: dockerd's Put finds nothing
    await a.driver.put('w');
    const at = await a.driver.get('w');
    expect(await readFile(join(at, 'before.txt'), 'utf8')).toBe('written before the commit');
    const ref = await a.driver.publish('w');
    await a.driver.put('w');
    expect(await readOnB(ref, ['before.txt'])).toEqual(['written before the commit']);
  });

  it('a layer with two users (a running container and the commit) is frozen', async () => {
    await mountedLayer();
    await a.driver.get('w');
    const ref = await a.driver.publish('w');
    expect(calls.freeze).toBe(1);
    await a.driver.put('w');
    await a.driver.put('w');
    expect(await readOnB(ref, ['before.txt'])).toEqual(['written before the commit']);
  });

  it('a layer a process is inside of cannot be unmounted: it is frozen, and stays mounted', async () => {
    const at = await mountedLayer();
    await mkdir(join(at, 'work'));
    const inside = startProcess('sh', ['-c', `cd ${join(at, 'work')} && echo in && exec sleep 60`]);
    started.push(inside);
    await once(inside.child.stdout!, 'data');
    const ref = await a.driver.publish('w');
    expect(calls.freeze).toBe(1);
    expect(await readFile(join(at, 'before.txt'), 'utf8')).toBe('written before the commit');
    await inside.stop();
    await a.driver.put('w');
    expect(await readOnB(ref, ['before.txt'])).toEqual(['written before the commit']);
  });

  it('a copy of the mount in another mount namespace keeps the file system alive: the unmount is undone and the layer frozen', async () => {
    const at = await mountedLayer();
    const other = startProcess('unshare', [
      '--mount',
      '--propagation',
      'private',
      'sh',
      '-c',
      'echo in && exec sleep 60',
    ]);
    started.push(other);
    await once(other.child.stdout!, 'data');
    await writeFile(join(at, 'late.txt'), 'written after the copy was made');
    const ref = await a.driver.publish('w');
    expect(calls.freeze).toBe(1);
    expect(await readFile(join(at, 'late.txt'), 'utf8')).toBe('written after the copy was made');
    await a.driver.put('w');
    expect(await readOnB(ref, ['before.txt', 'late.txt'])).toEqual([
      'written before the commit',
      'written after the copy was made',
    ]);
  });

  it('a device handed out to an engine is held, not mounted and frozen, once the engine unmounted it; frozen while it has it mounted', async () => {
    await a.driver.create('d', undefined);
    const device = await a.driver.attach('d', { readOnly: false });
    const engine = join(dir.path, 'engine-mount');
    await ext4.mount(device, engine, { readOnly: false });
    mounted.push(engine);
    await writeFile(join(engine, 'engine.txt'), 'written by the engine');
    const mounts = calls.mount;
    const whileMounted = await a.driver.publish('d');
    expect(calls.freeze).toBe(1); // through a second mount of its own
    expect(calls.mount).toBe(mounts + 1);
    await ext4.unmount(engine);
    const afterwards = await a.driver.publish('d');
    expect(calls.freeze).toBe(1);
    expect(calls.mount).toBe(mounts + 1);
    expect(await readOnB(whileMounted, ['engine.txt'])).toEqual(['written by the engine']);
    expect(await readOnB(afterwards, ['engine.txt'])).toEqual(['written by the engine']);
  });
});
