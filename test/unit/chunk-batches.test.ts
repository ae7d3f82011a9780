/**
 * How the chunk fetcher cuts the fetches wanted at once into batches for the store: by the
 * store's request key (one pack's chunks together), oldest first, so readers of several regions
 * at once do not turn every batch into a Range request per pack. The store here is a small
 * in-memory one that records what it was asked; the local store is real files.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BackingStore } from '../../stores/backing-store.js';
import { FetchCounters } from '../../volumes/chunks/fetch-counters.js';
import { ChunkFetcher } from '../../volumes/chunks/fetcher.js';
import { LocalStore } from '../../volumes/chunks/local-store.js';
import { digestOf, type Digest } from '../../common/digests.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';

/** Chunks under hints `PACK:n`; records every batch asked for as its hints. */
function recordingStore(chunks: Map<Digest, Buffer>, keyed: boolean): BackingStore & { batches: string[][] } {
  const batches: string[][] = [];
  return {
    url: 'memory://test',
    packs: true,
    batches,
    putChunks: () => Promise.reject(new Error('read-only')),
    getChunks: (wanted) => {
      batches.push(wanted.map((w) => w.hint));
      return Promise.resolve(wanted.map((w) => chunks.get(w.digest)!));
    },
    ...(keyed ? { requestKey: (hint: string) => hint.split(':')[0]! } : {}),
    putManifest: () => Promise.reject(new Error('read-only')),
    getManifest: () => Promise.reject(new Error('no manifests')),
  };
}

describe('chunk fetcher batches', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => (dir = await tempDir('slacker-batches-')));
  afterEach(() => dir.cleanup());

  /** Eight chunks, alternately in packs A and B, wanted in one turn; returns the batches. */
  async function fetchInterleaved(keyed: boolean): Promise<string[][]> {
    const data = Array.from({ length: 8 }, (_, i) => randomBytes(4096, 900 + i));
    const digests = data.map(digestOf);
    const hints = new Map(digests.map((d, i) => [d, `${i % 2 ? 'B' : 'A'}:${i}`]));
    const store = recordingStore(new Map(digests.map((d, i) => [d, data[i]!])), keyed);
    const local = new LocalStore(dir.path);
    const fetcher = new ChunkFetcher(local, store, { hintsOf: (ds) => ds.map((d) => hints.get(d)!) });
    const c = new FetchCounters();
    await Promise.all(digests.map((d) => fetcher.fetch(d, c)));
    await fetcher.landed();
    expect(c.chunksFetched).toBe(8);
    for (const d of digests) expect(local.has(d)).toBe(true);
    await fetcher.close();
    return store.batches;
  }

  it('groups the chunks of one request key, oldest first', async () => {
    expect(await fetchInterleaved(true)).toEqual([
      ['A:0', 'A:2', 'A:4', 'A:6'],
      ['B:1', 'B:3', 'B:5', 'B:7'],
    ]);
  });

  it('keeps arrival order for a store without request keys', async () => {
    expect(await fetchInterleaved(false)).toEqual([['A:0', 'B:1', 'A:2', 'B:3', 'A:4', 'B:5', 'A:6', 'B:7']]);
  });

  it('sends what a reader waits for ahead of prefetches, also when every slot is busy', async () => {
    // Seven packs of one chunk each. The store holds every request until released, so the
    // slots stay as the fetcher filled them.
    const data = Array.from({ length: 7 }, (_, i) => randomBytes(4096, 950 + i));
    const digests = data.map(digestOf);
    const hints = new Map(digests.map((d, i) => [d, `P${i}:0`]));
    const store = recordingStore(new Map(digests.map((d, i) => [d, data[i]!])), true);
    const held: (() => void)[] = [];
    let holding = true;
    store.getChunks = (wanted) => {
      store.batches.push(wanted.map((w) => w.hint));
      const answer = (): Buffer[] => wanted.map((w) => data[digests.indexOf(w.digest)]!);
      return holding ? new Promise((resolve) => held.push(() => resolve(answer()))) : Promise.resolve(answer());
    };
    const fetcher = new ChunkFetcher(new LocalStore(dir.path), store, {
      hintsOf: (ds) => ds.map((d) => hints.get(d)!),
    });
    const c = new FetchCounters();
    const prefetched = digests.slice(0, 6).map((d) => fetcher.prefetch(d, c));
    await new Promise((r) => setImmediate(r));
    expect(store.batches).toEqual([['P0:0'], ['P1:0'], ['P2:0'], ['P3:0']]); // four slots; P4, P5 wait
    // A reader's chunk goes out at once, and so does a queued prefetch a reader now waits for.
    const read = fetcher.fetch(digests[6]!, c);
    const promoted = fetcher.fetch(digests[5]!, c);
    await new Promise((r) => setImmediate(r));
    expect(store.batches.slice(4).flat().sort()).toEqual(['P5:0', 'P6:0']); // P4 still waits
    holding = false;
    for (const release of held.splice(0)) release();
    expect((await read).equals(data[6]!)).toBe(true);
    expect((await promoted).equals(data[5]!)).toBe(true);
    await Promise.all(prefetched);
    await fetcher.landed();
    expect(store.batches.flat().sort()).toEqual(digests.map((_, i) => `P${i}:0`).sort()); // each asked once
    await fetcher.close();
  });
});
