/**
 * Publishing snapshots to a dir:// store and opening them on a "second host" (another state
 * root): lazy, verified, deduplicated, and robust to a tampered or vanished store.
 */
import { readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { IoError } from '../../common/errors.js';
import { DirStore } from '../../stores/dir-store.js';
import { openStore } from '../../stores/open-store.js';
import { VolumeManager } from '../../volumes/manager.js';
import { decodeManifest, MANIFEST_SCHEMA } from '../../volumes/manifest.js';
import { digestOf, type Digest } from '../../common/digests.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';
import { publishVolume } from '../helpers/volumes.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB;

/** Distinct content for chunk i (the PRNG treats seeds 0 and 1 alike, so offset them). */
const chunkData = (i: number): Buffer => randomBytes(CHUNK, 1000 + i);

async function countFiles(dir: string): Promise<number> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).length;
}

/**
 * What a host stores: chunks in files of their own plus chunks in cache segments and packs,
 * and the disk blocks the segment files take (evicted chunks are punched out of them).
 */
async function stored(m: VolumeManager): Promise<{ chunks: number; segmentBytes: number }> {
  const { segments, packs } = m.chunks;
  const entries = await readdir(join(m.root, 'chunks'), { recursive: true, withFileTypes: true });
  const own = entries.filter((e) => e.isFile() && e.parentPath !== segments!.dir && e.parentPath !== packs!.dir).length;
  let segmentBytes = 0;
  for (const name of await readdir(segments!.dir)) segmentBytes += (await stat(join(segments!.dir, name))).blocks * 512;
  return { chunks: own + segments!.counts.chunks + packs!.counts.chunks, segmentBytes };
}

describe('snapshots in a dir:// store', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let storePath: string;
  let hostA: VolumeManager;
  let hostB: VolumeManager;

  beforeEach(async () => {
    dir = await tempDir('slacker-snap-');
    storePath = join(dir.path, 'store');
    const store = openStore(`dir://${storePath}`);
    hostA = await VolumeManager.open(join(dir.path, 'a'), { store });
    hostB = await VolumeManager.open(join(dir.path, 'b'), {
      store,
      readahead: 0,
      fetchPolicy: { deadlineMs: 600, initialBackoffMs: 50, maxBackoffMs: 100 },
    });
  });
  afterEach(async () => {
    try {
      await hostA?.close();
      await hostB?.close();
    } finally {
      await dir.cleanup(); // even when a host failed to open
    }
  });

  const published = (id: string, chunks: number[], size = 16 * MiB): Promise<Digest> =>
    publishVolume(hostA, id, chunks, { size, chunkSize: CHUNK, data: chunkData });

  it('opens a published snapshot elsewhere with metadata only, fetching chunks on first read', async () => {
    const ref = await published('img', [0, 5, 100, 255]);
    expect(await hostA.publish('img')).toBe(ref); // deterministic: same snapshot, same reference
    const row = await hostB.openSnapshot(ref, 'img-b');
    expect(row).toMatchObject({ frozen: true, size: 16 * MiB, snapshotRef: ref });
    expect((await stored(hostB)).chunks).toBe(0); // nothing moved yet

    const v = await hostB.acquire('img-b');
    expect((await v.pread(CHUNK, 5 * CHUNK)).equals(chunkData(5))).toBe(true);
    expect((await v.pread(100, 100 * CHUNK + 10)).equals(chunkData(100).subarray(10, 110))).toBe(true);
    expect((await v.pread(CHUNK, 7 * CHUNK)).every((b) => b === 0)).toBe(true); // a hole: no fetch
    let s = hostB.stats('img-b');
    expect(s.fetch).toMatchObject({ chunksFetched: 2, bytesFetched: 2 * CHUNK, fetchErrors: 0 });
    await hostB.chunks.landed();
    await v.pread(CHUNK, 5 * CHUNK); // now local
    s = hostB.stats('img-b');
    expect(s.fetch.chunksFetched).toBe(2);
    expect(s.fetch.localHits).toBe(1);
    expect(s.fetch.latency.reduce((a, b) => a + b, 0)).toBe(2);
    await hostB.release('img-b');
    // The counts outlive the process that served the volume.
    await hostB.close();
    hostB = await VolumeManager.open(join(dir.path, 'b'), { store: new DirStore(storePath) });
    expect(hostB.stats('img-b').fetch).toMatchObject({ chunksFetched: 2, bytesFetched: 2 * CHUNK, localHits: 1 });
  });

  it('publishes a clone by uploading only the chunks the store lacks', async () => {
    await published('base', [0, 1, 2, 3]);
    const before = await countFiles(join(storePath, 'chunks'));
    expect(before).toBe(4);
    await hostA.clone('base', 'app');
    const v = await hostA.acquire('app');
    await v.pwrite!(chunkData(99), 9 * CHUNK, { fua: false });
    await hostA.release('app');
    await hostA.freeze('app');
    const ref = await hostA.publish('app');
    expect(await countFiles(join(storePath, 'chunks'))).toBe(before + 1);
    // And a host that opens the clone reads its parent's chunks from the same store.
    await hostB.openSnapshot(ref, 'app-b');
    const b = await hostB.acquire('app-b');
    expect((await b.pread(CHUNK, 2 * CHUNK)).equals(chunkData(2))).toBe(true);
    expect((await b.pread(CHUNK, 9 * CHUNK)).equals(chunkData(99))).toBe(true);
    await hostB.release('app-b');
  });

  it('refuses a tampered chunk with an I/O error, never wrong data, and recovers once repaired', async () => {
    const ref = await published('img', [3]);
    const chunkFile = (await readdir(join(storePath, 'chunks'), { recursive: true, withFileTypes: true })).find((e) =>
      e.isFile(),
    )!;
    const path = join(chunkFile.parentPath, chunkFile.name);
    const good = await readFile(path);
    const evil = Buffer.from(good);
    evil[100]! ^= 0xff;
    await writeFile(path, evil);

    await hostB.openSnapshot(ref, 'img-b');
    const v = await hostB.acquire('img-b');
    const err = await v.pread(16, 3 * CHUNK).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IoError);
    expect((err as Error).message).toMatch(/failed verification/);
    expect(hostB.stats('img-b').fetch.fetchErrors).toBe(1);
    await writeFile(path, good);
    expect((await v.pread(16, 3 * CHUNK)).equals(chunkData(3).subarray(0, 16))).toBe(true);
    await hostB.release('img-b');
  });

  it('fails a read with EIO within the deadline while the store is down, and works once it is back', async () => {
    const ref = await published('img', [1]);
    await hostB.openSnapshot(ref, 'img-b');
    const v = await hostB.acquire('img-b');
    await rename(storePath, `${storePath}.away`);
    const t0 = Date.now();
    await expect(v.pread(16, CHUNK)).rejects.toThrow(/did not deliver chunk .* within 600 ms/);
    const elapsed = Date.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(400); // it retried
    expect(elapsed).toBeLessThan(3000); // and gave up in bounded time
    expect(hostB.stats('img-b').fetch.fetchErrors).toBeGreaterThan(1);
    await rename(`${storePath}.away`, storePath);
    expect((await v.pread(16, CHUNK)).equals(chunkData(1).subarray(0, 16))).toBe(true);
    await hostB.release('img-b');
  });

  it('fetches a cold chunk once for many concurrent readers', async () => {
    const ref = await published('img', [4]);
    await hostB.openSnapshot(ref, 'img-b');
    const v = await hostB.acquire('img-b');
    const reads = await Promise.all(Array.from({ length: 20 }, (_, i) => v.pread(1000, 4 * CHUNK + i * 1000)));
    reads.forEach((r, i) => expect(r.equals(chunkData(4).subarray(i * 1000, i * 1000 + 1000))).toBe(true));
    expect(hostB.stats('img-b').fetch.chunksFetched).toBe(1);
    await hostB.release('img-b');
  });

  it('prefetches ahead of a sequential reader, and on NBD CACHE', async () => {
    const ref = await published('img', [0, 1, 2, 3, 4, 5, 6, 7, 20, 21]);
    const c = await VolumeManager.open(join(dir.path, 'c'), { store: new DirStore(storePath), readahead: 4 });
    try {
      await c.openSnapshot(ref, 'img-c');
      const v = await c.acquire('img-c');
      await v.pread(CHUNK, 0);
      await v.pread(CHUNK, CHUNK); // sequential: chunks 2..5 are fetched in the background
      for (let i = 0; i < 50 && c.stats('img-c').fetch.chunksFetched < 6; i++)
        await new Promise((r) => setTimeout(r, 20));
      expect(c.stats('img-c').fetch.chunksFetched).toBe(6);
      await v.cache!(20 * CHUNK, 2 * CHUNK);
      expect(c.stats('img-c').fetch.chunksFetched).toBe(8);
      await c.release('img-c');
    } finally {
      await c.close();
    }
  });

  it('fetches the chunks between two nearby misses with the second, and only those', async () => {
    const ref = await published('img', [10, 11, 12, 13, 14, 15, 60, 200]);
    const open = async (name: string, gapFillBytes?: number): Promise<VolumeManager> => {
      const m = await VolumeManager.open(join(dir.path, name), { store: new DirStore(storePath), gapFillBytes });
      await m.openSnapshot(ref, 'img');
      return m;
    };
    const fetched = (m: VolumeManager): number => m.stats('img').fetch.chunksFetched;
    const c = await open('c'); // the default gap: 2 MiB, 32 chunks of 64 KiB
    try {
      const v = await c.acquire('img');
      expect((await v.pread(4 * KiB, 10 * CHUNK)).equals(chunkData(10).subarray(0, 4 * KiB))).toBe(true);
      expect((await v.pread(4 * KiB, 14 * CHUNK)).equals(chunkData(14).subarray(0, 4 * KiB))).toBe(true);
      for (let i = 0; i < 50 && fetched(c) < 5; i++) await new Promise((r) => setTimeout(r, 20));
      expect(fetched(c)).toBe(5); // 10 and 14, and 11-13 between them
      await c.chunks.landed();
      expect((await v.pread(CHUNK, 12 * CHUNK)).equals(chunkData(12))).toBe(true);
      expect(fetched(c)).toBe(5); // read from here
      await v.pread(4 * KiB, 200 * CHUNK); // far from both: alone
      await new Promise((r) => setTimeout(r, 100));
      expect(fetched(c)).toBe(6);
      expect(c.readTrace('img')).toEqual([10, 14, 12, 200]); // what was read, not what came along
      await c.release('img');
    } finally {
      await c.close();
    }
    const off = await open('d', 0);
    try {
      const v = await off.acquire('img');
      await v.pread(4 * KiB, 10 * CHUNK);
      await v.pread(4 * KiB, 14 * CHUNK);
      await new Promise((r) => setTimeout(r, 100));
      expect(fetched(off)).toBe(2);
      await off.release('img');
    } finally {
      await off.close();
    }
  });

  it('rejects a manifest that does not match its reference', async () => {
    const ref = await published('img', [1]);
    const hex = ref.slice('sha256:'.length);
    const manifestPath = join(storePath, 'snapshots', hex.slice(0, 2), `${hex.slice(2)}.json`);
    const m = JSON.parse(await readFile(manifestPath, 'utf8'));
    m.size *= 2;
    await writeFile(manifestPath, JSON.stringify(m));
    await expect(hostB.openSnapshot(ref, 'img-b')).rejects.toThrow(/does not match the reference/);
    expect(hostB.list()).toEqual([]);
    await expect(hostB.openSnapshot('sha256:nothex', 'x')).rejects.toThrow(/bad snapshot reference/);
  });

  it('opens a snapshot it just published without fetching its manifest again; another host fetches it', async () => {
    const ref = await published('img', [0, 5, 100]);
    const store = hostA.store!;
    const getManifest = store.getManifest.bind(store);
    let fetched = 0;
    store.getManifest = (r) => (fetched++, getManifest(r));
    try {
      await hostA.openSnapshot(ref, 'img-again');
      expect(fetched).toBe(0);
      const v = await hostA.acquire('img-again');
      expect((await v.pread(CHUNK, 100 * CHUNK)).equals(chunkData(100))).toBe(true);
      await hostA.release('img-again');
      expect(hostA.stats('img-again')).toMatchObject({ frozen: true, chunks: 3, snapshotRef: ref });
      await hostB.openSnapshot(ref, 'img-b'); // the same store object: B has not published it
      expect(fetched).toBe(1);
    } finally {
      store.getManifest = getManifest;
    }
  });

  describe('startup profiles', () => {
    it('a clone notes the base chunks it reads first, in order; holes and its own writes are not noted', async () => {
      await published('img', [0, 5, 100, 255]);
      await hostA.clone('img', 'ctr');
      const v = await hostA.acquire('ctr');
      await v.pread(10, 100 * CHUNK + 3);
      await v.pread(CHUNK, 7 * CHUNK); // a hole
      await v.pwrite!(chunkData(9), 9 * CHUNK, { fua: false }); // its own chunk
      await v.pread(CHUNK, 9 * CHUNK);
      await v.pread(2 * CHUNK, 4 * CHUNK); // chunks 4 (hole) and 5
      await v.pread(1, 100 * CHUNK); // already noted
      await hostA.release('ctr');
      expect(hostA.readTrace('ctr')).toEqual([100, 5]);
      expect(() => hostA.readTrace('nope')).toThrow(/no volume/);
    });

    it('published with the snapshot, the profile is fetched as soon as another host opens it', async () => {
      const plain = await published('img', [0, 5, 100, 255]);
      const ref = await hostA.publish('img', { prefetch: [100, 5, 77] }); // 77: a hole, dropped
      expect(ref).not.toBe(plain); // the profile is part of the manifest
      expect(await hostA.publish('img', { prefetch: [] })).toBe(plain); // no profile, same reference
      await hostB.openSnapshot(ref, 'img-b'); // no read at all
      const deadline = Date.now() + 5_000;
      while (hostB.stats('img-b').fetch.chunksFetched < 2 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(hostB.stats('img-b').fetch).toMatchObject({ chunksFetched: 2, bytesFetched: 2 * CHUNK });
      await hostB.chunks.landed();
      const v = await hostB.acquire('img-b');
      expect((await v.pread(CHUNK, 100 * CHUNK)).equals(chunkData(100))).toBe(true);
      expect((await v.pread(CHUNK, 5 * CHUNK)).equals(chunkData(5))).toBe(true);
      expect(hostB.stats('img-b').fetch).toMatchObject({ chunksFetched: 2, localHits: 2 });
      expect((await v.pread(CHUNK, 0)).equals(chunkData(0))).toBe(true); // not in the profile: on demand
      expect(hostB.stats('img-b').fetch.chunksFetched).toBe(3);
      await hostB.release('img-b');
    });

    it('a manifest whose profile names chunks it does not hold is refused', () => {
      const bytes = Buffer.from(
        JSON.stringify({
          schema: MANIFEST_SCHEMA,
          size: 4 * CHUNK,
          chunkSize: CHUNK,
          hintPrefixes: [],
          chunks: [
            [1, digestOf(chunkData(1)).slice('sha256:'.length), -1, ''],
            [3, digestOf(chunkData(3)).slice('sha256:'.length), -1, ''],
          ],
          prefetch: [1, 2],
        }),
      );
      expect(() => decodeManifest(digestOf(bytes), bytes)).toThrow(/prefetch names chunk 2/);
    });
  });

  describe("warming a new clone with its base's last clone's reads", () => {
    /** A container as dockerd makes one: an init volume frozen unchanged, its clone on top. */
    const container = async (m: VolumeManager, image: string, id: string): Promise<void> => {
      await m.clone(image, `${id}-init`);
      await m.freeze(`${id}-init`);
      await m.clone(`${id}-init`, id);
    };
    const reads = async (m: VolumeManager, id: string, chunks: number[]): Promise<void> => {
      const v = await m.acquire(id);
      for (const i of chunks) await v.pread(100, i * CHUNK + 7);
      await m.release(id);
    };

    it("a container's reads of its image, through its unchanged init volume, are the next one's ranges", async () => {
      await published('img', [0, 1, 2, 5, 100, 255]);
      await publishVolume(hostA, 'other', [1, 2], {
        size: 16 * MiB,
        chunkSize: CHUNK,
        data: (i) => chunkData(500 + i),
      });
      await container(hostA, 'img', 'c1');
      expect(hostA.warmRanges('c1')).toEqual([]); // no container of img was closed yet
      await reads(hostA, 'c1', [100, 1, 2, 7, 5, 2]); // 7: a hole, never read from a chunk
      await hostA.remove('c1');
      await hostA.remove('c1-init');

      await container(hostA, 'img', 'c2');
      expect(hostA.warmRanges('c2')).toEqual([
        { offset: 100 * CHUNK, length: CHUNK },
        { offset: 1 * CHUNK, length: 2 * CHUNK }, // adjacent in read order: one range
        { offset: 5 * CHUNK, length: CHUNK },
      ]);
      await hostA.clone('img', 'direct'); // a clone of the image itself counts the same
      expect(hostA.warmRanges('direct')).toHaveLength(3);
      expect(hostA.warmRanges('img')).toEqual([]); // frozen: nothing to warm
      await container(hostA, 'other', 'c3');
      expect(hostA.warmRanges('c3')).toEqual([]); // another image, with other chunks in those places

      // The last closed container counts, not a union of all.
      await reads(hostA, 'c2', [255]);
      await container(hostA, 'img', 'c4');
      expect(hostA.warmRanges('c4')).toEqual([{ offset: 255 * CHUNK, length: CHUNK }]);
    });

    it("a new version of the image (the same chunks in place) is warmed with the last container's reads where they match", async () => {
      await published('img', [0, 1, 2, 5, 100, 255]);
      // A build step's image: the same file system, chunk 100 changed, chunk 3 added.
      const v2Data = (i: number): Buffer => (i === 100 ? chunkData(900) : chunkData(i));
      await publishVolume(hostA, 'v2', [0, 1, 2, 3, 5, 100, 255], { size: 16 * MiB, chunkSize: CHUNK, data: v2Data });
      await container(hostA, 'img', 'c1');
      await reads(hostA, 'c1', [100, 1, 2, 5]);
      await container(hostA, 'v2', 'd1');
      expect(hostA.warmRanges('d1')).toEqual([
        { offset: 1 * CHUNK, length: 2 * CHUNK },
        { offset: 5 * CHUNK, length: CHUNK }, // not 100: v2 holds other content there
      ]);
      // Its own container's reads count once there are some.
      await reads(hostA, 'd1', [3]);
      await container(hostA, 'v2', 'd2');
      expect(hostA.warmRanges('d2')).toEqual([{ offset: 3 * CHUNK, length: CHUNK }]);
      // Fewer than half of the reads in place: nothing.
      await container(hostA, 'img', 'c2');
      await reads(hostA, 'c2', [100, 255, 0]); // the most recently remembered now
      await publishVolume(hostA, 'v3', [0, 100, 255], {
        size: 16 * MiB,
        chunkSize: CHUNK,
        data: (i) => (i === 0 ? chunkData(i) : chunkData(700 + i)),
      });
      await container(hostA, 'v3', 'e1');
      expect(hostA.warmRanges('e1')).toEqual([]); // 1 of 3 in place
    });

    it("before any container of it closed, a snapshot opened with a startup profile warms with the profile's local chunks", async () => {
      await published('img', [0, 1, 2, 5, 100]);
      const ref = await hostA.publish('img', { prefetch: [100, 1, 2] });
      await hostB.openSnapshot(ref, 'img-b'); // the profile is fetched in the background
      await container(hostB, 'img-b', 'c1');
      await hostB.profileLanding('c1'); // a promise while the profile is being fetched
      expect(hostB.profileLanding('c1')).toBeUndefined(); // landed
      expect(hostB.warmRanges('c1')).toEqual([
        { offset: 100 * CHUNK, length: CHUNK },
        { offset: 1 * CHUNK, length: 2 * CHUNK },
      ]);
      expect(hostB.stats('img-b').fetch.chunksFetched).toBe(3); // the profile's, nothing more
      // Once a container of it closed, what that one read comes first.
      await reads(hostB, 'c1', [5]);
      await container(hostB, 'img-b', 'c2');
      expect(hostB.warmRanges('c2')).toEqual([{ offset: 5 * CHUNK, length: CHUNK }]);
      // A snapshot opened without a profile has nothing to go on.
      await hostB.openSnapshot(await published('plain', [0, 3]), 'plain-b');
      await container(hostB, 'plain-b', 'p1');
      expect(hostB.warmRanges('p1')).toEqual([]);
      expect(hostB.profileLanding('p1')).toBeUndefined();
    });

    it('only chunks already on this host: a warm never fetches', async () => {
      const ref = await published('img', [0, 1, 2, 5]);
      await hostB.openSnapshot(ref, 'img-b');
      await container(hostB, 'img-b', 'c1');
      await reads(hostB, 'c1', [5, 1, 2]);
      await container(hostB, 'img-b', 'c2');
      expect(hostB.warmRanges('c2')).toEqual([
        { offset: 5 * CHUNK, length: CHUNK },
        { offset: 1 * CHUNK, length: 2 * CHUNK },
      ]);
      const gone = digestOf(chunkData(1));
      const isLocal = hostB.chunks.isLocal.bind(hostB.chunks);
      hostB.chunks.isLocal = (d) => d !== gone && isLocal(d); // chunk 1 evicted since
      try {
        expect(hostB.warmRanges('c2')).toEqual([
          { offset: 5 * CHUNK, length: CHUNK },
          { offset: 2 * CHUNK, length: CHUNK },
        ]);
      } finally {
        hostB.chunks.isLocal = isLocal;
      }
    });
  });

  describe('the local chunk cache', () => {
    it('keeps fetched chunks under its limit, least recently used out first, and refetches on demand', async () => {
      const ref = await published('img', [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      const c = await VolumeManager.open(join(dir.path, 'c'), {
        store: new DirStore(storePath),
        readahead: 0,
        cacheBytes: 3 * CHUNK,
      });
      try {
        await c.openSnapshot(ref, 'img-c');
        const v = await c.acquire('img-c');
        const readChunk = async (i: number) => {
          expect((await v.pread(CHUNK, i * CHUNK)).equals(chunkData(i))).toBe(true);
          await c.chunks.landed(); // fetched chunks are stored after the read is answered
        };
        await readChunk(0);
        await readChunk(1);
        await readChunk(2);
        await readChunk(0); // touch: 1 is now the least recently used
        await readChunk(3); // evicts 1
        expect(c.cacheStats()).toMatchObject({ chunks: 3, bytes: 3 * CHUNK, evictions: 1 });
        expect(await stored(c)).toEqual({ chunks: 3, segmentBytes: 3 * CHUNK });
        const fetched = c.stats('img-c').fetch.chunksFetched;
        await readChunk(0); // still cached
        expect(c.stats('img-c').fetch.chunksFetched).toBe(fetched);
        await readChunk(1); // evicted: fetched again, verified, correct
        expect(c.stats('img-c').fetch.chunksFetched).toBe(fetched + 1);
        for (let i = 0; i < 10; i++) await readChunk(i);
        expect(c.cacheStats().bytes).toBeLessThanOrEqual(3 * CHUNK);
        await c.release('img-c');
      } finally {
        await c.close();
      }
      // The cache's content and order survive a restart.
      const again = await VolumeManager.open(join(dir.path, 'c'), {
        store: new DirStore(storePath),
        cacheBytes: 3 * CHUNK,
      });
      expect(again.cacheStats()).toMatchObject({ chunks: 3, bytes: 3 * CHUNK });
      // ... and so do the chunks, the last three read: read back without a fetch.
      expect((await stored(again)).chunks).toBe(3);
      const v = await again.acquire('img-c');
      const { chunksFetched, localHits } = again.stats('img-c').fetch; // saved by the last process
      for (const i of [7, 8, 9]) expect((await v.pread(CHUNK, i * CHUNK)).equals(chunkData(i))).toBe(true);
      expect(again.stats('img-c').fetch).toMatchObject({ chunksFetched, localHits: localHits + 3 });
      await again.release('img-c');
      await again.close();
    });

    it('leaves the fetched-chunk segments to the one process that owns them', async () => {
      const ref = await published('img', [0, 1, 2]);
      const root = join(dir.path, 'shared');
      const owner = await VolumeManager.open(root, { store: new DirStore(storePath), readahead: 0 });
      try {
        await owner.openSnapshot(ref, 'img-s');
        const v = await owner.acquire('img-s');
        for (let i = 0; i < 3; i++) await v.pread(CHUNK, i * CHUNK);
        await owner.chunks.landed(); // in the owner's segments, not recorded yet
        // A second process on the same root (say, a CLI command beside a server).
        const other = await VolumeManager.open(root, { store: new DirStore(storePath), readahead: 0 });
        expect(other.chunks.segments).toBeUndefined();
        const w = await other.acquire('img-s');
        for (let i = 0; i < 3; i++) expect((await w.pread(CHUNK, i * CHUNK)).equals(chunkData(i))).toBe(true);
        await other.release('img-s');
        await other.close();
        // The owner's chunks are untouched: still local, still right.
        const fetched = owner.stats('img-s').fetch.chunksFetched;
        for (let i = 0; i < 3; i++) expect((await v.pread(CHUNK, i * CHUNK)).equals(chunkData(i))).toBe(true);
        expect(owner.stats('img-s').fetch.chunksFetched).toBe(fetched);
        await owner.release('img-s');
      } finally {
        await owner.close();
      }
    });

    it('never evicts chunks that exist only locally, until they are published', async () => {
      const ref = await published('img', [0, 1, 2, 3, 4]);
      const c = await VolumeManager.open(join(dir.path, 'c'), {
        store: new DirStore(storePath),
        readahead: 0,
        cacheBytes: CHUNK,
      });
      try {
        await c.create('mine', 4 * MiB, { chunkSize: CHUNK });
        const w = await c.acquire('mine');
        for (let i = 0; i < 3; i++) await w.pwrite!(chunkData(50 + i), i * CHUNK, { fua: false });
        await c.release('mine');
        await c.freeze('mine'); // 3 chunks that exist nowhere else
        await c.openSnapshot(ref, 'img-c');
        const v = await c.acquire('img-c');
        for (let i = 0; i < 5; i++) await v.pread(CHUNK, i * CHUNK); // churns a 1-chunk cache
        await c.release('img-c');
        expect(c.cacheStats().chunks).toBe(1);
        // With the store gone, the local-only chunks are all still readable.
        await rename(storePath, `${storePath}.away`);
        const m = await c.acquire('mine');
        for (let i = 0; i < 3; i++) expect((await m.pread(CHUNK, i * CHUNK)).equals(chunkData(50 + i))).toBe(true);
        await c.release('mine');
        await rename(`${storePath}.away`, storePath);
        // Once published, the store has them and they become evictable.
        await c.publish('mine');
        expect(c.cacheStats().chunks).toBe(1);
        expect((await stored(c)).chunks).toBe(1);
      } finally {
        await c.close();
      }
    });
  });

  it('stages no copy of a clone whose base is not all here (it would fetch the whole snapshot)', async () => {
    const ref = await published('img', [0, 5, 100]);
    await hostB.openSnapshot(ref, 'img-b');
    await hostB.clone('img-b', 'child');
    expect(await hostB.stage('child')).toBeUndefined();
    expect((await stored(hostB)).chunks).toBe(0); // nothing fetched to find out
    const v = await hostB.acquire('img-b');
    await v.pread(3 * CHUNK, 100 * CHUNK - CHUNK); // reads chunk 100 (99 and 101 are holes)
    await v.pread(CHUNK, 0);
    await v.pread(CHUNK, 5 * CHUNK);
    await hostB.release('img-b');
    await hostB.chunks.landed();
    const path = await hostB.stage('child');
    expect(path).toBeDefined(); // every chunk is here now
    expect((await readFile(path!)).subarray(5 * CHUNK, 6 * CHUNK).equals(chunkData(5))).toBe(true);
    await hostB.discardStaged('child');
  });
});
