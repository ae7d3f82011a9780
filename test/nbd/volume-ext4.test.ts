/**
 * Layer volumes as real ext4 through the NBD server and nbdfuse + loop: mkfs on a new volume,
 * a tree written, frozen, cloned, the clone changed; the parent must be unchanged and the clone
 * must show exactly its changes.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirStore } from '../../stores/dir-store.js';
import { OciStore } from '../../stores/oci-store.js';
import { startRegistry } from '../../harness/registry.js';
import { VolumeManager } from '../../volumes/manager.js';
import { withMountedVolume } from '../../harness/mounted-volume.js';
import { noConnections, startServer, type TestServer } from '../helpers/server.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';
import { requireRoot, requireTools } from '../helpers/tools.js';

async function digestTree(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const e of await readdir(root, { recursive: true, withFileTypes: true })) {
    const p = join(e.parentPath, e.name);
    if (e.isFile() && !p.includes('lost+found')) {
      out.set(
        relative(root, p),
        createHash('sha256')
          .update(await readFile(p))
          .digest('hex'),
      );
    }
  }
  return out;
}

describe('ext4 on layer volumes over NBD', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let mgr: VolumeManager;
  let srv: TestServer;

  /** Exports a volume, attaches it, runs `fn` on the mount, and undoes it all. */
  const withMounted = <T>(
    id: string,
    readOnly: boolean,
    fn: (mnt: string) => Promise<T>,
    on: VolumeManager = mgr,
  ): Promise<T> =>
    withMountedVolume(
      {
        server: srv.server,
        manager: on,
        id,
        workDir: dir.path,
        readOnly,
        mkfs: !readOnly && on.stats(id).chunks === 0 && !on.get(id).parent,
      },
      fn,
    );

  beforeAll(async () => {
    requireRoot();
    await requireTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4');
    dir = await tempDir('slacker-volext4-');
    mgr = await VolumeManager.open(join(dir.path, 'state'), { store: new DirStore(join(dir.path, 'store')) });
    srv = await startServer([]);
  });
  afterAll(async () => {
    await srv?.close();
    await mgr?.close();
    await dir?.cleanup();
  });

  it('freezes, clones and diverges without touching the parent', async () => {
    await mgr.create('base', 512 * 1024 * 1024);
    const baseTree = await withMounted('base', false, async (mnt) => {
      for (let d = 0; d < 5; d++) {
        await mkdir(join(mnt, `etc${d}`));
        for (let f = 0; f < 10; f++)
          await writeFile(join(mnt, `etc${d}`, `f${f}`), randomBytes(1000 + d * 5000 + f * 333, d * 10 + f));
      }
      await writeFile(join(mnt, 'blob'), randomBytes(8 * 1024 * 1024, 77));
      return digestTree(mnt);
    });
    await mgr.freeze('base');
    await mgr.clone('base', 'child');
    expect(mgr.stats('child').chunks).toBe(0);

    const childTree = await withMounted('child', false, async (mnt) => {
      await writeFile(join(mnt, 'etc0', 'f0'), 'changed in the child');
      await rm(join(mnt, 'etc1'), { recursive: true });
      await writeFile(join(mnt, 'new-file'), randomBytes(300_000, 5));
      return digestTree(mnt);
    });
    // The child wrote a little (ext4 metadata, the new and changed files), not the image.
    expect(mgr.stats('child').bytesWritten).toBeLessThan(16 * 1024 * 1024);

    expect(await withMounted('base', true, digestTree)).toEqual(baseTree);
    await mgr.freeze('child');
    const again = await withMounted('child', true, digestTree);
    expect(again).toEqual(childTree);
    expect(again.has('etc1/f0')).toBe(false);
    expect(again.get('blob')).toBe(baseTree.get('blob'));
    // nbdfuse used several connections (multi-conn); all are gone once it has exited.
    expect(await noConnections(srv.server)).toBe(0);
  });

  it('opens a published 1 GiB volume on a second host and fetches only what a small read needs', async () => {
    const GiB = 1024 * 1024 * 1024;
    await mgr.create('big', GiB);
    const hello = await withMounted('big', false, async (mnt) => {
      for (let i = 0; i < 8; i++) await writeFile(join(mnt, `data${i}.bin`), randomBytes(25 * 1024 * 1024, 500 + i));
      await writeFile(join(mnt, 'hello.txt'), 'hello from host A');
      return 'hello from host A';
    });
    await mgr.freeze('big');
    const ref = await mgr.publish('big');

    const hostB = await VolumeManager.open(join(dir.path, 'host-b'), { store: new DirStore(join(dir.path, 'store')) });
    try {
      await hostB.openSnapshot(ref, 'big-b');
      const text = await withMounted('big-b', true, (mnt) => readFile(join(mnt, 'hello.txt'), 'utf8'), hostB);
      expect(text).toBe(hello);
      // The image holds over 200 MiB of data; reading one small file (plus the mount's ext4
      // metadata) must pull a small fraction of it.
      const { bytesFetched, chunksFetched } = hostB.stats('big-b').fetch;
      expect(chunksFetched).toBeGreaterThan(0);
      expect(bytesFetched).toBeLessThan(0.05 * GiB);
      console.log(
        `second host fetched ${(bytesFetched / 1024 / 1024).toFixed(1)} MiB of a 1 GiB volume holding 200 MiB`,
      );
    } finally {
      await hostB.close();
    }
  });

  it('publishes a file tree to an oci:// registry and a second host verifies every file', async () => {
    const registry = await startRegistry();
    try {
      const url = registry.url('slacker/ext4');
      const hostA = await VolumeManager.open(join(dir.path, 'oci-a'), { store: new OciStore(url) });
      const hostB = await VolumeManager.open(join(dir.path, 'oci-b'), { store: new OciStore(url) });
      try {
        await hostA.create('tree', 256 * 1024 * 1024);
        const tree = await withMounted(
          'tree',
          false,
          async (mnt) => {
            for (let d = 0; d < 6; d++) {
              await mkdir(join(mnt, `dir${d}`, 'sub'), { recursive: true });
              for (let f = 0; f < 8; f++) {
                await writeFile(
                  join(mnt, `dir${d}`, 'sub', `f${f}`),
                  randomBytes(1 + (((d * 8 + f) * 104729) % 700_000), 900 + d * 8 + f),
                );
              }
            }
            return digestTree(mnt);
          },
          hostA,
        );
        await hostA.freeze('tree');
        const ref = await hostA.publish('tree');
        await hostB.openSnapshot(ref, 'tree');
        expect(await withMounted('tree', true, digestTree, hostB)).toEqual(tree);
        expect(tree.size).toBe(48);
        expect(hostB.stats('tree').fetch.chunksFetched).toBeGreaterThan(0);
      } finally {
        await hostA.close();
        await hostB.close();
      }
    } finally {
      await registry.close();
    }
  });
});
