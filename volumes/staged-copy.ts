/**
 * A staged copy of a writable volume: one plain sparse file holding the volume's whole content,
 * chunk `i` at byte `i × chunkSize`, for work the kernel does on it through a loop device
 * straight on the file (a layer tar applied to a new layer: no FUSE, no NBD, no user-space hop
 * for every byte). Two steps, each one pass over the chunks that hold data:
 *   - createStaged makes the empty sparse file, fillStaged has the kernel copy the volume's
 *     chunks into it (holes stay holes): two steps, so that a loop device can be put on the file while it
 *     has no dirty pages (configuring one writes the file's dirty pages back: attach/loop.ts);
 *   - mapStaged reads the file back as the volume's new complete chunk map: chunks that still
 *     equal the base's keep its digest (nothing stored), all-zero ones become holes, and the
 *     rest are handed to `store` (which may keep the file itself as their pack).
 * Knows nothing of the metadata or the chunk store's layout: the manager passes both ends in.
 */
import { open } from 'node:fs/promises';
import { digestsUnlessSame, type Digest, type OriginalBytes } from '../common/digests.js';
import { readFully, writeFully } from '../common/file-io.js';
import { fileOps } from '../common/fileops.js';
import { chunkLength, isAllZero, type ChunkIndex } from './types.js';

/** Chunks read, hashed or written per job, and jobs at once: enough to keep two CPUs and the disk busy. */
const BATCH = 16;
const JOBS = 4;
/** Chunks per copy_file_range job, and jobs at once (each holds its batch's descriptors, duplicated). */
const COPY_BATCH = 256;
const COPY_JOBS = 2;

export interface StagedGeometry {
  size: number;
  chunkSize: number;
}

/** Creates `path` (it must not exist) as an empty sparse file of the volume's size. */
export async function createStaged(path: string, g: StagedGeometry): Promise<void> {
  const f = await open(path, 'wx');
  try {
    await f.truncate(g.size);
  } finally {
    await f.close();
  }
}

/** Where a chunk's bytes are for a fill: a file range, a hole (all zeroes), or unknown (read it). */
export type ChunkSource = OriginalBytes | 'hole' | undefined;

/**
 * Writes chunk `idx` of `chunks` at its offset in staged file `path` (made by createStaged). A
 * chunk `locate` finds in a file is copied by the kernel (copy_file_range, page cache to page
 * cache, many chunks per threadpool job: no JavaScript per chunk); a hole stays a hole; any
 * other is read with `read(idx, out)` and written unless all zeroes. `locate`'s descriptors need
 * only be open while it runs (they are duplicated at once).
 */
export async function fillStaged(
  path: string,
  g: StagedGeometry,
  chunks: ChunkIndex[],
  locate: (idx: ChunkIndex) => ChunkSource,
  read: (idx: ChunkIndex, out: Buffer) => Promise<void>,
): Promise<void> {
  const f = await open(path, 'r+');
  try {
    const unknown: ChunkIndex[] = [];
    let next = 0;
    // Each batch's ranges are found and handed over in one synchronous step.
    const copier = async (): Promise<void> => {
      while (next < chunks.length) {
        const ranges: number[] = [];
        for (const idx of chunks.slice(next, (next += COPY_BATCH))) {
          const src = locate(idx);
          if (src === 'hole') continue;
          if (!src) unknown.push(idx);
          else ranges.push(src.fd, src.position, idx * g.chunkSize, chunkLength(g.size, g.chunkSize, idx));
        }
        if (ranges.length > 0) await fileOps.copyRanges(f.fd, ranges);
      }
    };
    await Promise.all(Array.from({ length: COPY_JOBS }, copier));
    await inJobs(unknown, g.chunkSize, async (batch, slab) => {
      for (const [i, idx] of batch.entries()) {
        const buf = slab.subarray(i * g.chunkSize, i * g.chunkSize + chunkLength(g.size, g.chunkSize, idx));
        await read(idx, buf);
        if (!isAllZero(buf)) await writeFully(f.fd, buf, 0, buf.length, idx * g.chunkSize);
      }
    });
  } finally {
    await f.close();
  }
}

/**
 * The complete chunk map of the content of staged file `path`. A chunk equal to `base`'s at
 * the same index keeps that digest (compared with the bytes `original` says where to find, when
 * it does, rather than hashed); one that is all zeroes (or a hole) is left out; any other
 * is passed to `store` with its digest and its offset in the file, which must keep it (or
 * where it lies) before resolving: `data` is reused once `store` resolves.
 */
export async function mapStaged(
  path: string,
  g: StagedGeometry,
  base: ReadonlyMap<ChunkIndex, Digest>,
  store: (digest: Digest, data: Buffer, offset: number) => Promise<void>,
  original?: (idx: ChunkIndex) => OriginalBytes | undefined,
): Promise<{ map: Map<ChunkIndex, Digest>; stored: number }> {
  const f = await open(path, 'r');
  const map = new Map<ChunkIndex, Digest>();
  let stored = 0;
  try {
    const nowait = { read: true };
    await inJobs(dataChunks(f.fd, g), g.chunkSize, async (batch, slab) => {
      const bufs = await Promise.all(
        batch.map(async (idx, i) => {
          const buf = slab.subarray(i * g.chunkSize, i * g.chunkSize + chunkLength(g.size, g.chunkSize, idx));
          const n = await readFully(f.fd, buf, 0, buf.length, idx * g.chunkSize, nowait);
          buf.fill(0, n); // past the end of a file cut short: zeroes, as the loop device read them
          return buf;
        }),
      );
      const kept = batch.map((idx, i) => ({ idx, buf: bufs[i]! })).filter((c) => !isAllZero(c.buf));
      // A chunk the base has is compared with the base's bytes where they are at hand, and
      // hashed only if it changed: most of a layer's chunks are its parent's, unchanged.
      const originals = kept.map((c) => (base.has(c.idx) ? original?.(c.idx) : undefined));
      const digests = await digestsUnlessSame(
        kept.map((c) => c.buf),
        originals,
      );
      for (const [i, c] of kept.entries()) {
        const digest = digests[i] ?? base.get(c.idx)!;
        map.set(c.idx, digest);
        if (base.get(c.idx) === digest) continue;
        await store(digest, c.buf, c.idx * g.chunkSize);
        stored++;
      }
    });
  } finally {
    await f.close();
  }
  return { map, stored };
}

/** Indices of the chunks that hold allocated data in the file (SEEK_DATA / SEEK_HOLE). */
function dataChunks(fd: number, g: StagedGeometry): ChunkIndex[] {
  const out: ChunkIndex[] = [];
  let last = -1;
  for (let at = fileOps.seekData(fd, 0); at >= 0 && at < g.size;) {
    const end = Math.min(fileOps.seekHole(fd, at), g.size);
    for (let idx = Math.max(Math.floor(at / g.chunkSize), last + 1); idx * g.chunkSize < end; idx++) {
      out.push(idx);
      last = idx;
    }
    at = end < g.size ? fileOps.seekData(fd, end) : -1;
  }
  return out;
}

/**
 * Runs `fn` over `items` in batches of BATCH, JOBS batches at a time. Each job reuses one slab of
 * BATCH chunks for all its batches: a fresh buffer per chunk is fresh memory whose every page
 * faults on first touch, which cost more than the copy itself (fill and map of 400 MB: see
 * docs/BENCHMARKS.md). `fn` must be done with the slab when its promise settles.
 */
async function inJobs<T>(
  items: T[],
  chunkSize: number,
  fn: (batch: T[], slab: Buffer) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    const slab = Buffer.allocUnsafeSlow(BATCH * chunkSize);
    while (next < items.length) {
      const batch = items.slice(next, (next += BATCH));
      await fn(batch, slab);
    }
  };
  await Promise.all(Array.from({ length: JOBS }, worker));
}
