/** Layer volumes: the backend conformance suite, then copy-on-write, freeze, clone and lifecycle. */
import { closeSync, existsSync, openSync } from 'node:fs';
import { open, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FileBackend } from '../../block/backends/file.js';
import { ConflictError, InvalidArgumentError, NotFoundError, ReadOnlyError } from '../../common/errors.js';
import { capabilitiesOf } from '../../block/backend.js';
import { fileOps } from '../../common/fileops.js';
import { FetchCounters } from '../../volumes/chunks/fetch-counters.js';
import { VolumeManager } from '../../volumes/manager.js';
import { SCHEMA_VERSION } from '../../volumes/metadata.js';
import { createStaged, fillStaged } from '../../volumes/staged-copy.js';
import { backendConformance, CONFORMANCE_SIZE } from '../helpers/backend-conformance.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const CHUNK = 64 * KiB;

async function managerIn(): Promise<{ mgr: VolumeManager; cleanup: () => Promise<void> }> {
  const dir = await tempDir('slacker-vol-');
  const mgr = await VolumeManager.open(dir.path);
  return {
    mgr,
    cleanup: async () => {
      await mgr.close();
      await dir.cleanup();
    },
  };
}

backendConformance('volume (new, writable)', async () => {
  const { mgr, cleanup } = await managerIn();
  await mgr.create('v', CONFORMANCE_SIZE, { chunkSize: CHUNK });
  return { backend: await mgr.acquire('v'), cleanup };
});

backendConformance('volume (clone of a frozen snapshot)', async () => {
  const { mgr, cleanup } = await managerIn();
  await mgr.create('base', CONFORMANCE_SIZE, { chunkSize: CHUNK });
  const b = await mgr.acquire('base');
  await b.pwrite!(randomBytes(300 * KiB, 9), 6 * MiB + 100, { fua: true });
  await mgr.release('base');
  await mgr.freeze('base');
  await mgr.clone('base', 'child');
  return { backend: await mgr.acquire('child'), cleanup };
});

describe('volumes', () => {
  let mgr: VolumeManager;
  let cleanup: () => Promise<void>;
  beforeEach(async () => {
    ({ mgr, cleanup } = await managerIn());
  });
  afterEach(async () => {
    await cleanup();
  });

  /** Writes through a short-lived handle, the way a client would, then flushes. */
  async function write(id: string, data: Buffer, offset: number): Promise<void> {
    const v = await mgr.acquire(id);
    await v.pwrite!(data, offset, { fua: true });
    await mgr.release(id);
  }
  async function read(id: string, length: number, offset: number): Promise<Buffer> {
    const v = await mgr.acquire(id);
    try {
      return await v.pread(length, offset);
    } finally {
      await mgr.release(id);
    }
  }

  it('clones in O(1): no chunk map copied, no data allocated, whatever the size', async () => {
    for (const [id, size] of [
      ['small', GiB],
      ['huge', 100 * GiB],
    ] as const) {
      await mgr.create(id, size, { chunkSize: CHUNK });
      for (let i = 0; i < 50; i++) await write(id, randomBytes(CHUNK, i), i * 37 * CHUNK);
      await mgr.freeze(id);
      const t0 = performance.now();
      await mgr.clone(id, `${id}-clone`);
      expect(performance.now() - t0).toBeLessThan(50);
      expect(mgr.stats(`${id}-clone`)).toMatchObject({ chunks: 0, bytesWritten: 0, virtualSize: size });
      expect((await stat(join(mgr.root, 'data', `${id}-clone.data`))).blocks).toBe(0);
      expect((await read(`${id}-clone`, CHUNK, 37 * CHUNK)).equals(randomBytes(CHUNK, 1))).toBe(true);
    }
  });

  it('copies on write: a clone changes, its parent does not', async () => {
    await mgr.create('p', 16 * MiB, { chunkSize: CHUNK });
    const original = randomBytes(3 * CHUNK, 1);
    await write('p', original, CHUNK);
    await mgr.freeze('p');
    await mgr.clone('p', 'c');
    await write('c', Buffer.from('patched'), CHUNK + 1000); // partial: copy-up of the base chunk
    const expected = Buffer.from(original);
    Buffer.from('patched').copy(expected, 1000);
    expect((await read('c', 3 * CHUNK, CHUNK)).equals(expected)).toBe(true);
    expect((await read('p', 3 * CHUNK, CHUNK)).equals(original)).toBe(true);
    expect(mgr.stats('c')).toMatchObject({ chunks: 1, bytesWritten: CHUNK });
  });

  it('freezes a clone nothing was written to as its parent: same content, no data file, and a write afterwards still counts', async () => {
    await mgr.create('p', 16 * MiB, { chunkSize: CHUNK });
    const original = randomBytes(3 * CHUNK, 2);
    await write('p', original, CHUNK);
    await mgr.freeze('p');
    await mgr.clone('p', 'init');
    await mgr.acquire('init'); // opened and read, never written (dockerd's init layer is a directory now)
    await mgr.release('init');
    await mgr.freeze('init');
    expect(existsSync(join(mgr.root, 'data', 'init.data'))).toBe(false);
    await mgr.clone('init', 'c');
    expect((await read('c', 3 * CHUNK, CHUNK)).equals(original)).toBe(true);
    // A clone that was written is not taken for a clean one
    await mgr.clone('p', 'w');
    await write('w', Buffer.from('x'), 0);
    await mgr.freeze('w');
    await mgr.clone('w', 'wc');
    expect((await read('wc', 1, 0)).toString()).toBe('x');
  });

  it('serialises concurrent partial writes to one chunk (no lost update in copy-on-write)', async () => {
    await mgr.create('p', 4 * MiB, { chunkSize: CHUNK });
    await write('p', Buffer.alloc(CHUNK, 0x11), 0);
    await mgr.freeze('p');
    await mgr.clone('p', 'c');
    const v = await mgr.acquire('c');
    await Promise.all(
      Array.from({ length: 16 }, (_, i) => v.pwrite!(Buffer.alloc(100, i + 1), i * 1000, { fua: false })),
    );
    const got = await v.pread(CHUNK, 0);
    for (let i = 0; i < 16; i++) expect(got.subarray(i * 1000, i * 1000 + 100).every((b) => b === i + 1)).toBe(true);
    expect(got[50_000]).toBe(0x11);
    await mgr.release('c');
  });

  it('freezes into content-addressed chunks: duplicates stored once, zero chunks become holes', async () => {
    await mgr.create('v', 8 * MiB, { chunkSize: CHUNK });
    const same = randomBytes(CHUNK, 5);
    await write('v', same, 0);
    await write('v', same, 10 * CHUNK);
    await write('v', Buffer.alloc(CHUNK), 20 * CHUNK); // written, but all zeroes
    await mgr.freeze('v');
    const files = (await readdir(join(mgr.root, 'chunks'), { recursive: true, withFileTypes: true })).filter(
      // chunk files, not the fetched-chunk cache or the packs
      (e) => e.isFile() && e.parentPath !== mgr.chunks.segments!.dir && !e.parentPath.endsWith('/packs'),
    );
    expect(files).toHaveLength(1);
    expect(mgr.stats('v')).toMatchObject({ frozen: true, chunks: 2 });
    const v = await mgr.acquire('v');
    expect(capabilitiesOf(v).write).toBe(false); // frozen volumes are served read-only
    const ext = await v.extents!(0, 21 * CHUNK);
    expect(ext.find((x) => x.offset <= 20 * CHUNK && 20 * CHUNK < x.offset + x.length)!.hole).toBe(true);
    await mgr.release('v');
  });

  it('keeps reads flat along a deep clone chain', async () => {
    await mgr.create('l0', 8 * MiB, { chunkSize: CHUNK });
    let parent = 'l0';
    for (let i = 1; i <= 30; i++) {
      await write(parent, randomBytes(CHUNK, 100 + i), i * CHUNK);
      await mgr.freeze(parent);
      await mgr.clone(parent, `l${i}`);
      parent = `l${i}`;
    }
    for (let i = 1; i <= 30; i++)
      expect((await read(parent, CHUNK, i * CHUNK)).equals(randomBytes(CHUNK, 100 + i))).toBe(true);
    await mgr.freeze(parent);
    expect(mgr.stats(parent).chunks).toBe(30); // the complete map, not a chain to walk
  });

  it('persists flushed writes across a restart of the manager', async () => {
    await mgr.create('v', 4 * MiB, { chunkSize: CHUNK });
    await write('v', Buffer.from('durable'), 12345);
    await mgr.close();
    const again = await VolumeManager.open(mgr.root);
    try {
      const v = await again.acquire('v');
      expect((await v.pread(7, 12345)).toString()).toBe('durable');
      await again.release('v');
    } finally {
      await again.close();
    }
  });

  it('syncs its data file on a flush only when something was written since the last flush began', async () => {
    await mgr.create('f', 4 * MiB, { chunkSize: CHUNK });
    const v = await mgr.acquire('f');
    const syncs = vi.spyOn(FileBackend.prototype, 'flush');
    try {
      await v.pwrite!(Buffer.from('one'), 100, { fua: false });
      await v.flush!();
      await v.flush!(); // an fsync of a clean file: nothing new to make durable
      expect(syncs).toHaveBeenCalledTimes(1);
      // A write that lands while a flush runs is not covered by it: the next flush syncs again.
      await v.pwrite!(Buffer.from('two'), 200 * KiB, { fua: false });
      const first = v.flush!();
      await v.pwrite!(Buffer.from('three'), 300 * KiB, { fua: false });
      const second = v.flush!();
      const third = v.flush!(); // asked while the second runs, nothing written since it began
      expect(third).toBe(second);
      await Promise.all([first, second, third]);
      expect(syncs).toHaveBeenCalledTimes(3);
      // A failed sync covers nothing and forgets no override: the next flush syncs and commits.
      await v.pwrite!(Buffer.from('four'), 400 * KiB, { fua: false });
      syncs.mockRejectedValueOnce(Object.assign(new Error('EIO'), { code: 'EIO' }));
      await expect(v.flush!()).rejects.toThrow('EIO');
      await v.flush!();
      expect(syncs).toHaveBeenCalledTimes(5);
    } finally {
      syncs.mockRestore();
      await mgr.release('f');
    }
    await mgr.close();
    const again = await VolumeManager.open(mgr.root);
    try {
      const r = await again.acquire('f');
      expect((await r.pread(4, 400 * KiB)).toString()).toBe('four');
      expect((await r.pread(5, 300 * KiB)).toString()).toBe('three');
      await again.release('f');
    } finally {
      await again.close();
    }
  });

  it('refuses what would lose data or break a dependant, with typed errors', async () => {
    await mgr.create('p', 4 * MiB);
    await expect(mgr.create('p', 4 * MiB)).rejects.toBeInstanceOf(ConflictError);
    await expect(mgr.create('../evil', 4 * MiB)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(mgr.create('odd', 1000)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(mgr.clone('p', 'c')).rejects.toThrow(/freeze it before cloning/);
    await mgr.freeze('p');
    await mgr.clone('p', 'c');
    await expect(mgr.remove('p')).rejects.toThrow(/has 1 clone/);
    await mgr.acquire('c');
    await expect(mgr.remove('c')).rejects.toBeInstanceOf(ConflictError);
    await expect(mgr.freeze('c')).rejects.toThrow(/is open/);
    await mgr.release('c');
    const frozen = await mgr.acquire('p');
    await expect(frozen.pread(1, 4 * MiB - 1)).resolves.toHaveLength(1);
    await mgr.release('p');
    expect(() => mgr.get('nope')).toThrow(NotFoundError);
    await mgr.remove('c');
    await mgr.remove('p');
    expect(mgr.list()).toEqual([]);
  });

  it('serves frozen volumes without any write operation, and writable ones refuse writes once frozen', async () => {
    await mgr.create('p', 4 * MiB);
    await mgr.freeze('p');
    const backend = await mgr.acquire('p');
    expect(backend.pwrite).toBeUndefined(); // so the NBD export is read-only (EPERM on writes)
    await mgr.release('p');
    const { Volume } = await import('../../volumes/volume.js');
    const { Metadata } = await import('../../volumes/metadata.js');
    const meta = new Metadata(join(mgr.root, 'probe.db'));
    expect(meta.schemaVersion).toBe(SCHEMA_VERSION);
    const row = mgr.get('p');
    const direct = new Volume({
      row,
      snapshot: new Map(),
      overrides: new Map(),
      data: undefined,
      chunks: mgr.chunks,
      metadata: meta,
      counters: new FetchCounters(),
    });
    await expect(direct.pwrite(Buffer.alloc(1), 0, { fua: false })).rejects.toBeInstanceOf(ReadOnlyError);
    meta.close();
  });

  describe('staged copies (one plain file for the kernel to work on)', () => {
    async function baseAndChild(): Promise<void> {
      await mgr.create('base', 8 * MiB, { chunkSize: CHUNK });
      await write('base', randomBytes(3 * CHUNK, 21), 0); // chunks 0-2
      await write('base', randomBytes(CHUNK, 22), 40 * CHUNK);
      await mgr.freeze('base');
      await mgr.clone('base', 'child');
      await write('child', randomBytes(CHUNK, 23), 60 * CHUNK); // the child's own write
    }

    it('holds the whole content; freezing from it keeps the base digests of unchanged chunks', async () => {
      await baseAndChild();
      const before = await read('child', 8 * MiB, 0);
      const path = (await mgr.stage('child'))!;
      const file = await open(path, 'r+');
      try {
        expect((await file.readFile()).equals(before)).toBe(true);
        await file.write(randomBytes(100, 24), 0, 100, CHUNK + 5); // changes base chunk 1
        await file.write(Buffer.alloc(CHUNK), 0, CHUNK, 2 * CHUNK); // zeroes base chunk 2
        await file.write(randomBytes(CHUNK, 25), 0, CHUNK, 70 * CHUNK); // a new chunk
      } finally {
        await file.close();
      }
      const expected = await readFile(path);
      expect(mgr.stats('child').frozen).toBe(false); // untouched until freezeStaged
      const { stored } = await mgr.freezeStaged('child');
      expect(stored).toBe(3); // chunks 1, 60 and 70; 0 and 40 keep the base's digests
      expect(mgr.diffChunks('base', 'child')).toBe(4); // 1, 60, 70 changed; 2 became a hole
      expect(mgr.stats('child')).toMatchObject({ frozen: true, chunks: 5 });
      expect((await read('child', 8 * MiB, 0)).equals(expected)).toBe(true);
      expect(await readdir(join(mgr.root, 'staging'))).toEqual([]);
      // The staged file became the new chunks' pack (no chunk file was written), durable
      // across a restart.
      expect(await readdir(join(mgr.root, 'chunks/packs'))).toContain('00000001.seg');
      const root = mgr.root;
      await mgr.close();
      mgr = await VolumeManager.open(root);
      expect((await read('child', 8 * MiB, 0)).equals(expected)).toBe(true);
    });

    it('fills from file ranges, holes and reads alike (fillStaged)', async () => {
      const dir = await tempDir('slacker-fill-');
      try {
        const src = join(dir.path, 'src');
        const srcData = randomBytes(2 * CHUNK, 31);
        await writeFile(src, srcData);
        const staged = join(dir.path, 'staged');
        const g = { size: 6 * CHUNK - 100, chunkSize: CHUNK };
        await createStaged(staged, g);
        const fd = openSync(src, 'r');
        const read = randomBytes(CHUNK, 32);
        try {
          // 0: a file range; 1: a hole; 2: read; 3: read, all zeroes (stays a hole); 5: a short last chunk.
          const locate = (idx: number) =>
            idx === 0
              ? { fd, position: CHUNK }
              : idx === 5
                ? { fd, position: 0 }
                : idx === 1
                  ? ('hole' as const)
                  : undefined;
          await fillStaged(staged, g, [0, 1, 2, 3, 5], locate, async (idx, out) => {
            (idx === 2 ? read : Buffer.alloc(CHUNK)).copy(out, 0, 0, out.length);
          });
        } finally {
          closeSync(fd);
        }
        const got = await readFile(staged);
        expect(got.length).toBe(g.size);
        expect(got.subarray(0, CHUNK).equals(srcData.subarray(CHUNK))).toBe(true);
        expect(got.subarray(CHUNK, 2 * CHUNK).every((x) => x === 0)).toBe(true);
        expect(got.subarray(2 * CHUNK, 3 * CHUNK).equals(read)).toBe(true);
        expect(got.subarray(5 * CHUNK).equals(srcData.subarray(0, CHUNK - 100))).toBe(true);
        const f = openSync(staged, 'r');
        try {
          expect(fileOps.seekData(f, CHUNK)).toBe(2 * CHUNK); // chunk 1 stayed a hole
          expect(fileOps.seekData(f, 3 * CHUNK)).toBe(5 * CHUNK); // and so did the zero chunk 3
        } finally {
          closeSync(f);
        }
      } finally {
        await dir.cleanup();
      }
    });

    it('stores the new chunks as files when another process owns the packs', async () => {
      await baseAndChild();
      const path = (await mgr.stage('child'))!;
      await writeFile(path, randomBytes(CHUNK, 26), { flag: 'r+' });
      const expected = await readFile(path);
      const lock = openSync(join(mgr.root, 'chunks/packs/lock'), 'r');
      expect(fileOps.lockExclusive(lock)).toBe(false); // the manager holds it
      closeSync(lock);
      const root = mgr.root;
      await mgr.close();
      // Another owner of the packs (a server beside a CLI command) while this manager opens.
      const owner = openSync(join(root, 'chunks/packs/lock'), 'r');
      expect(fileOps.lockExclusive(owner)).toBe(true);
      try {
        mgr = await VolumeManager.open(root);
        // stage again: a restart removes staged copies
        const again = (await mgr.stage('child'))!;
        await writeFile(again, randomBytes(CHUNK, 26), { flag: 'r+' });
        expect(mgr.chunks.keepsPacks).toBe(false);
        const { stored } = await mgr.freezeStaged('child');
        expect(stored).toBe(2); // chunk 0 (rewritten) and the child's own chunk 60
        expect((await read('child', 8 * MiB, 0)).equals(expected)).toBe(true);
        expect(await readdir(join(root, 'staging'))).toEqual([]);
      } finally {
        closeSync(owner);
      }
    });

    it('discards a staged copy without touching the volume; a restart removes a stale one', async () => {
      await baseAndChild();
      const before = await read('child', 8 * MiB, 0);
      const path = (await mgr.stage('child'))!;
      await writeFile(path, 'scribbled over', { flag: 'r+' });
      await mgr.discardStaged('child');
      expect((await read('child', 8 * MiB, 0)).equals(before)).toBe(true);
      await mgr.stage('child');
      const root = mgr.root;
      await mgr.close();
      mgr = await VolumeManager.open(root);
      expect(await readdir(join(root, 'staging'))).toEqual([]);
      expect((await read('child', 8 * MiB, 0)).equals(before)).toBe(true);
    });

    it('refuses frozen and open volumes', async () => {
      await baseAndChild();
      await expect(mgr.stage('base')).rejects.toThrow(ConflictError);
      await mgr.acquire('child');
      await expect(mgr.stage('child')).rejects.toThrow(/open/);
      await mgr.release('child');
    });
  });
});
