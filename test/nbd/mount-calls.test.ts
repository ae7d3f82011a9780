/**
 * This process's calls on its own layer mounts (a changes walk, a container's init files) run on
 * libuv's threadpool and can wait there for the layer's device, whose NBD server is this same
 * process and needs a threadpool thread to read a chunk from a dir store. Many such calls at once,
 * with chunks still to fetch, must not take every thread (layers/mount-calls.ts): before the gate,
 * each case here hung.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chooseAttacher } from '../../attach/choose-attacher.js';
import { ext4 } from '../../attach/ext4.js';
import type { Digest } from '../../common/digests.js';
import { copyMissing } from '../../layers/copy-missing.js';
import { DirStore } from '../../stores/dir-store.js';
import { startHost, type Host } from '../helpers/driver-conformance.js';
import { tempDir } from '../helpers/tmp.js';
import { requireRoot, requireTools, run } from '../helpers/tools.js';

const DIRS = 64;
const FILES = 12;
const SIZE = 20_000;

describe("calls on this process's own mounts while their chunks are fetched", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let a: Host;
  let b: Host;
  let ref: Digest;

  beforeEach(async () => {
    requireRoot();
    await requireTools('nbdfuse', 'losetup', 'mkfs.ext4');
    dir = await tempDir('slacker-mount-calls-');
    const store = new DirStore(join(dir.path, 'store'));
    const parts = { attacher: () => chooseAttacher('auto'), filesystem: ext4, store: () => store };
    a = await startHost(join(dir.path, 'a'), store, parts);
    b = await startHost(join(dir.path, 'b'), store, parts);
    // An image layer of many directories and files, each in chunks of its own, published by host a:
    // host b opens it lazily, so every first look at a directory or inode table is a fetch.
    await a.driver.create('image', undefined);
    const at = await a.driver.get('image');
    for (let d = 0; d < DIRS; d++) {
      await mkdir(join(at, `d${d}`));
      for (let f = 0; f < FILES; f++) await writeFile(join(at, `d${d}`, `f${f}`), randomBytes(SIZE));
    }
    await a.driver.put('image');
    ref = await a.driver.publish('image');
    await b.driver.create('image', undefined);
    await b.driver.replaceWithSnapshot('image', ref);
  });
  afterEach(async () => {
    await a?.close();
    await b?.close();
    if (dir) await run('rm', ['-rf', dir.path]);
  });

  it('many changes walks of a lazily opened layer at once all finish, and agree', async () => {
    const walks = await Promise.all(Array.from({ length: 12 }, () => b.driver.changes('image', undefined)));
    for (const w of walks) {
      expect(w.changes).toHaveLength(DIRS * (FILES + 1));
      expect(w.size).toBe(DIRS * FILES * SIZE);
    }
  });

  it("many containers' init files copied at once onto children of a lazily opened layer all finish", async () => {
    const init = join(dir.path, 'init');
    await mkdir(join(init, 'etc'), { recursive: true });
    await writeFile(join(init, 'etc', 'hostname'), 'container\n');
    // Each copy looks into every directory of the layer: the parent's chunks, fetched on demand.
    for (let d = 0; d < DIRS; d++) await mkdir(join(init, `d${d}`, 'new'), { recursive: true });
    const ids = Array.from({ length: 12 }, (_, i) => `c${i}`);
    const trees: string[] = [];
    for (const id of ids) {
      await b.driver.create(id, 'image');
      trees.push(await b.driver.get(id));
    }
    try {
      await Promise.all(trees.map((tree) => copyMissing(init, tree)));
      for (const tree of trees) {
        expect(await readFile(join(tree, 'etc', 'hostname'), 'utf8')).toBe('container\n');
        expect((await readFile(join(tree, `d${DIRS - 1}`, 'f5'))).length).toBe(SIZE);
      }
    } finally {
      for (const id of ids) await b.driver.put(id);
    }
  });
});
