/**
 * `slacker-ts gc` over a dir:// store: chunks no snapshot references are removed once older
 * than the grace period; every snapshot still opens and reads in full elsewhere; a dry run
 * removes nothing; a publish running at the same time loses nothing; a chunk a publish reuses
 * counts as young again; a store that cannot list itself is refused with a clear message.
 */
import { mkdir, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { digestOf, hexOf, type Digest } from '../../common/digests.js';
import { silentLogger } from '../../common/logger.js';
import { DirStore } from '../../stores/dir-store.js';
import { openStore } from '../../stores/open-store.js';
import { VolumeManager } from '../../volumes/manager.js';
import { collectGarbage } from '../../volumes/store-gc.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';
import { publishVolume } from '../helpers/volumes.js';

const CHUNK = 64 * 1024;
const SIZE = 16 * 2 ** 20;
const chunkData = (i: number): Buffer => randomBytes(CHUNK, 5000 + i);
const log = silentLogger();

describe('garbage collection of a dir:// store', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let storePath: string;
  let store: DirStore;
  let host: VolumeManager;

  /** A chunk file nobody references, last written `ageMs` ago. */
  const plant = async (seed: number, ageMs: number): Promise<string> => {
    const data = randomBytes(CHUNK, seed);
    const hex = hexOf(digestOf(data));
    const path = join(storePath, 'chunks', hex.slice(0, 2), hex.slice(2));
    await mkdir(join(path, '..'), { recursive: true });
    await writeFile(path, data);
    const t = new Date(Date.now() - ageMs);
    await utimes(path, t, t);
    return path;
  };
  const exists = (p: string): Promise<boolean> =>
    stat(p).then(
      () => true,
      () => false,
    );

  /** Opens `ref` on a fresh host and reads every chunk back. */
  const readsBack = async (ref: Digest, chunks: number[]): Promise<void> => {
    const other = await VolumeManager.open(join(dir.path, `other-${Math.random()}`), {
      store: openStore(`dir://${storePath}`),
    });
    try {
      await other.openSnapshot(ref, 'v');
      const v = await other.acquire('v');
      for (const i of chunks) expect((await v.pread(CHUNK, i * CHUNK)).equals(chunkData(i))).toBe(true);
      await other.release('v');
    } finally {
      await other.close();
    }
  };

  beforeEach(async () => {
    dir = await tempDir('slacker-gc-');
    storePath = join(dir.path, 'store');
    store = new DirStore(storePath);
    host = await VolumeManager.open(join(dir.path, 'a'), { store });
  });
  afterEach(async () => {
    await host?.close();
    await dir.cleanup();
  });

  it('removes old unreferenced chunks, keeps young ones and every referenced one; a dry run removes nothing', async () => {
    const a = await publishVolume(host, 'a', [0, 1, 2, 3], { size: SIZE, chunkSize: CHUNK, data: chunkData });
    const b = await publishVolume(host, 'b', [2, 3, 4, 5], { size: SIZE, chunkSize: CHUNK, data: chunkData });
    const old = await plant(1, 2 * 3600_000);
    const young = await plant(2, 60_000);

    const dry = await collectGarbage(store, { dryRun: true, log });
    expect(dry).toMatchObject({
      snapshots: 2,
      live: { chunks: 6, bytes: 6 * CHUNK },
      removed: { chunks: 1, bytes: CHUNK },
      young: { chunks: 1, bytes: CHUNK },
    });
    expect(await exists(old)).toBe(true);

    const real = await collectGarbage(store, { dryRun: false, log });
    expect(real.removed).toEqual({ chunks: 1, bytes: CHUNK });
    expect(await exists(old)).toBe(false);
    expect(await exists(young)).toBe(true);
    await readsBack(a, [0, 1, 2, 3]);
    await readsBack(b, [2, 3, 4, 5]);
    // With no grace period the young one goes too.
    expect((await collectGarbage(store, { dryRun: false, graceMs: 0, log })).removed.chunks).toBe(1);
  });

  it('a publish running at the same time loses nothing', async () => {
    const chunks = Array.from({ length: 64 }, (_, i) => i);
    const [ref] = await Promise.all([
      publishVolume(host, 'c', chunks, { size: SIZE, chunkSize: CHUNK, data: chunkData }),
      (async () => {
        for (let i = 0; i < 5; i++) await collectGarbage(store, { dryRun: false, log });
      })(),
    ]);
    await collectGarbage(store, { dryRun: false, log });
    await readsBack(ref, chunks);
  });

  it('a chunk already in the store that a publish reuses counts as young again', async () => {
    const path = await plant(5000 + 7, 2 * 3600_000); // the same content as chunkData(7)
    const before = (await stat(path)).mtimeMs;
    await publishVolume(host, 'd', [7], { size: SIZE, chunkSize: CHUNK, data: chunkData });
    expect((await stat(path)).mtimeMs).toBeGreaterThan(before + 3600_000);
  });

  it('refuses a store that cannot list itself, saying what collects it instead', async () => {
    const oci = openStore('oci://127.0.0.1:1/slacker/store');
    await expect(collectGarbage(oci, { dryRun: true, log })).rejects.toThrow(/registry garbage-collect/);
    oci.close?.();
  });
});
