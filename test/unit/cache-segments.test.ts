/**
 * The fetched-chunk cache's segment files (volumes/cache-segments.ts) on a real file system:
 * appends (one by one and in batches), records only what was synced, rolls over to new
 * segments, punches evicted chunks out (only once the metadata forgot them and no read uses
 * them), deletes emptied segments, adopts a staged file as a pack, and has one owner at a time.
 */
import { appendFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CacheSegments } from '../../volumes/chunks/cache-segments.js';
import { Metadata } from '../../volumes/metadata.js';
import { digestOf } from '../../common/digests.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';

const CHUNK = 64 * 1024;
const chunk = (i: number): Buffer => randomBytes(CHUNK, 300 + i);

describe('cache segments', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let metadata: Metadata;
  let segDir: string;
  const open = async (): Promise<CacheSegments> =>
    (await CacheSegments.open(segDir, metadata, { segmentBytes: 4 * CHUNK }))!;

  /** Segment files and the disk blocks they take. */
  async function onDisk(): Promise<{ files: number; bytes: number }> {
    const names = (await readdir(segDir)).filter((n) => n.endsWith('.seg'));
    let bytes = 0;
    for (const n of names) bytes += (await stat(join(segDir, n))).blocks * 512;
    return { files: names.length, bytes };
  }

  async function readBack(s: CacheSegments, i: number): Promise<Buffer> {
    const out = Buffer.alloc(CHUNK);
    expect(await s.read(digestOf(chunk(i)), 0, CHUNK, out, 0)).toBe(true);
    return out;
  }

  beforeEach(async () => {
    dir = await tempDir('slacker-segments-');
    metadata = new Metadata(join(dir.path, 'metadata.db'));
    segDir = join(dir.path, 'segments');
  });
  afterEach(async () => {
    metadata.close();
    await dir.cleanup();
  });

  it('stores a batch back to back, once per digest, across a segment rollover', async () => {
    const s = await open();
    await s.put(digestOf(chunk(0)), chunk(0));
    const batch = [1, 2, 2, 3, 4, 5, 0].map((i) => ({ digest: digestOf(chunk(i)), data: chunk(i) }));
    await s.putAll(batch); // 0 is already here and 2 is asked twice: 1..5 are new, 3 + 2 of them per segment
    expect(s.counts).toEqual({ chunks: 6, segments: 2 });
    for (let i = 0; i <= 5; i++) expect((await readBack(s, i)).equals(chunk(i))).toBe(true);
    expect(await onDisk()).toEqual({ files: 2, bytes: 6 * CHUNK }); // nothing stored twice
    await s.sync();
    expect(
      metadata
        .segmentChunks()
        .map((c) => c.offset)
        .sort((a, b) => a - b),
    ).toEqual([0, 0, CHUNK, CHUNK, 2 * CHUNK, 3 * CHUNK]);
    await s.close();
  });

  it('appends chunks into segments of the configured size, readable at once, recorded once synced', async () => {
    const s = await open();
    for (let i = 0; i < 10; i++) await s.put(digestOf(chunk(i)), chunk(i));
    expect(s.counts).toEqual({ chunks: 10, segments: 3 }); // 4 + 4 + 2
    for (let i = 0; i < 10; i++) expect((await readBack(s, i)).equals(chunk(i))).toBe(true);
    await s.sync();
    expect(metadata.segmentChunks()).toHaveLength(10);
    await s.close();

    const again = await open();
    expect(again.counts).toEqual({ chunks: 10, segments: 3 });
    expect((await readBack(again, 9)).equals(chunk(9))).toBe(true);
    await again.close();
  });

  it('forgets and frees what a crashed owner wrote but never recorded', async () => {
    const s = await open();
    for (let i = 0; i < 3; i++) await s.put(digestOf(chunk(i)), chunk(i));
    await s.close(); // records chunks 0-2
    // What an owner killed before its next sync leaves: bytes after the recorded chunks, and a
    // segment with nothing recorded in it.
    await appendFile(join(segDir, '00000001.seg'), chunk(3));
    await writeFile(join(segDir, '00000002.seg'), chunk(4));
    const again = await open();
    expect(again.counts).toEqual({ chunks: 3, segments: 1 });
    expect(await onDisk()).toEqual({ files: 1, bytes: 3 * CHUNK }); // chunk 3 punched out, 2nd segment gone
    for (let i = 0; i < 3; i++) expect((await readBack(again, i)).equals(chunk(i))).toBe(true);
    await again.close();
  });

  it('punches an evicted chunk the metadata never recorded at once, after the read using it', async () => {
    const s = await open();
    for (let i = 0; i < 3; i++) await s.put(digestOf(chunk(i)), chunk(i)); // one segment, not synced
    const pinned = s.acquire(digestOf(chunk(1)))!;
    s.remove(digestOf(chunk(1)));
    expect(s.has(digestOf(chunk(1)))).toBe(false);
    expect((await onDisk()).bytes).toBe(3 * CHUNK); // still being read
    s.release(pinned);
    expect((await onDisk()).bytes).toBe(2 * CHUNK);
    await s.close();
  });

  it('forgets a recorded chunk in the metadata before punching it out, and deletes emptied segments', async () => {
    const s = await open();
    for (let i = 0; i < 6; i++) await s.put(digestOf(chunk(i)), chunk(i));
    await s.sync();
    expect(metadata.segmentChunks()).toHaveLength(6);
    expect(await onDisk()).toEqual({ files: 2, bytes: 6 * CHUNK });

    const pinned = s.acquire(digestOf(chunk(1)))!;
    s.remove(digestOf(chunk(1)));
    expect(s.has(digestOf(chunk(1)))).toBe(false);
    // Until the metadata forgets it (next sync), its bytes stay: a crash must not find a hole.
    expect(metadata.segmentChunks()).toHaveLength(6);
    expect((await onDisk()).bytes).toBe(6 * CHUNK);
    await s.sync();
    expect(metadata.segmentChunks().map((c) => c.digest)).not.toContain(digestOf(chunk(1)));
    expect((await onDisk()).bytes).toBe(6 * CHUNK); // still being read
    s.release(pinned);
    expect((await onDisk()).bytes).toBe(5 * CHUNK);

    for (const i of [0, 2, 3]) s.remove(digestOf(chunk(i)));
    await s.sync();
    expect(await onDisk()).toEqual({ files: 1, bytes: 2 * CHUNK }); // the full first segment is gone
    expect((await readBack(s, 5)).equals(chunk(5))).toBe(true);
    expect(metadata.segmentChunks().map((c) => c.digest)).toEqual(
      expect.arrayContaining([digestOf(chunk(4)), digestOf(chunk(5))]),
    );
    expect(metadata.segmentChunks()).toHaveLength(2);
    await s.close();
  });

  it('adopts a file as a pack: keeps the chunks listed, punches the rest, records them before resolving', async () => {
    const s = await open();
    await s.put(digestOf(chunk(7)), chunk(7));
    // A staged file: chunks 0 and 1 at 0 and 2 CHUNK, a stale range between, chunk 7 (held
    // already) at 3 CHUNK, chunk 0 again at 4 CHUNK, then a stale tail.
    const staged = join(dir.path, 'staged.img');
    const file = Buffer.concat([chunk(0), chunk(50), chunk(1), chunk(7), chunk(0), chunk(51)]);
    await writeFile(staged, file);
    const listed = [0, 2, 3, 4].map((k) => ({
      digest: digestOf(file.subarray(k * CHUNK, (k + 1) * CHUNK)),
      offset: k * CHUNK,
      length: CHUNK,
    }));
    expect(await s.adopt(staged, listed)).toBe(2); // 0 and 1; 7 is held, 0 listed twice
    await expect(stat(staged)).rejects.toThrow(/ENOENT/); // moved in
    expect(
      metadata
        .segmentChunks()
        .map((c) => c.offset)
        .sort((a, b) => a - b),
    ).toEqual([0, 2 * CHUNK]); // chunk 7's append is not synced yet
    expect((await readBack(s, 0)).equals(chunk(0))).toBe(true);
    expect((await readBack(s, 1)).equals(chunk(1))).toBe(true);
    // The pack: cut after chunk 1, the stale range punched out.
    const pack = join(segDir, '00000002.seg');
    expect((await stat(pack)).size).toBe(3 * CHUNK);
    expect((await stat(pack)).blocks * 512).toBe(2 * CHUNK);
    await s.close();

    const again = await open(); // recorded, so kept across a restart
    expect((await readBack(again, 1)).equals(chunk(1))).toBe(true);
    again.remove(digestOf(chunk(0)));
    again.remove(digestOf(chunk(1)));
    await again.sync();
    expect(await readdir(segDir)).not.toContain('00000002.seg'); // emptied: deleted
    await again.close();
  });

  it('leaves a file it could not adopt where it was', async () => {
    const s = await open();
    const missing = join(dir.path, 'no-such.img');
    await expect(s.adopt(missing, [])).rejects.toThrow(/ENOENT/);
    expect(s.counts).toEqual({ chunks: 0, segments: 0 });
    await s.close();
  });

  it('has one owner at a time: another opener gets none until the owner closes', async () => {
    const owner = await open();
    await owner.put(digestOf(chunk(0)), chunk(0)); // not recorded yet: another opener must not reclaim it
    expect(await CacheSegments.open(segDir, metadata)).toBeUndefined();
    expect((await readBack(owner, 0)).equals(chunk(0))).toBe(true);
    await owner.close();
    const next = await open();
    expect(next.has(digestOf(chunk(0)))).toBe(true); // recorded at close
    await next.close();
  });
});
