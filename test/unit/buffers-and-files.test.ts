/**
 * Two small parts of the cold read path: the receive-buffer pool (reuse, what it must not take
 * back, huge pages) and the native atomic file write (one threadpool job: all or nothing); and
 * the native range copy a staged copy is filled with.
 */
import { closeSync, openSync, readFileSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BufferPool } from '../../common/buffer-pool.js';
import { fileOps } from '../../common/fileops.js';
import { tempDir } from '../helpers/tmp.js';

describe('BufferPool', () => {
  it('lends slabs, reuses the ones given back, and keeps at most maxFree of them', () => {
    const pool = new BufferPool(1024, 1);
    const a = pool.take(100);
    const b = pool.take(1024);
    expect(a.length).toBe(100);
    expect(a.buffer).not.toBe(b.buffer);
    pool.give([a.subarray(10, 20), b]); // a view counts as its slab; only one is kept
    const c = pool.take(500);
    expect([a.buffer, b.buffer]).toContain(c.buffer);
    const d = pool.take(500);
    expect(d.buffer).not.toBe(c.buffer); // the second was not kept: a fresh slab
    pool.close();
  });

  it('ignores buffers it did not lend, slabs given back twice, and lends no slab for larger takes', () => {
    const pool = new BufferPool(1024, 4);
    const big = pool.take(4096);
    expect(big.length).toBe(4096);
    const small = Buffer.from('not pooled'); // Node's own shared pool: must never be reused
    const a = pool.take(10);
    pool.give([big, small, a, a]);
    const x = pool.take(10);
    const y = pool.take(10);
    expect(x.buffer).toBe(a.buffer);
    for (const other of [big.buffer, small.buffer, a.buffer]) expect(y.buffer).not.toBe(other);
    pool.close();
  });

  it('puts slabs of 2 MiB and more on transparent huge pages, one fault per 2 MiB', () => {
    const thp = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    if (thp.includes('[never]')) {
      // Loud, not skipped: the pool still works, it only pays a fault per 4 KiB here.
      console.warn(`transparent huge pages are disabled on this kernel (${thp.trim()}): slabs use 4 KiB pages`);
      expect(fileOps.adviseHugePages(Buffer.allocUnsafeSlow(4 * HUGE))).toBe(-2);
      return;
    }
    const pool = new BufferPool(4 * HUGE, 1);
    const slab = pool.take(4 * HUGE);
    const before = process.resourceUsage().minorPageFault;
    slab.fill(1); // first touch: one fault per aligned 2 MiB
    // Measured: 4-10 faults; 2048 on 4 KiB pages, and ~80 for a slab that is not aligned to them.
    expect(process.resourceUsage().minorPageFault - before).toBeLessThan(32);
    pool.give([slab]);
    expect(pool.take(HUGE).buffer).toBe(slab.buffer); // reused as before
    pool.close();
  });
});

const HUGE = 2 * 1024 * 1024;

/** The error a promise rejects with; a promise that resolves fails the test. */
async function failure(p: Promise<unknown>): Promise<NodeJS.ErrnoException> {
  return p.then(
    () => expect.unreachable('it did not fail'),
    (e: unknown) => e as NodeJS.ErrnoException,
  );
}

describe('fileOps.writeFileAtomic', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => (dir = await tempDir('slacker-atomic-')));
  afterEach(() => dir.cleanup());

  it('writes the whole buffer under the final name, durable or not, and leaves no temporary file', async () => {
    const data = Buffer.alloc(300_000, 3);
    await fileOps.writeFileAtomic(join(dir.path, 'a'), join(dir.path, 'a.tmp'), data, true);
    await fileOps.writeFileAtomic(join(dir.path, 'b'), join(dir.path, 'b.tmp'), data.subarray(5), false);
    expect((await readFile(join(dir.path, 'a'))).equals(data)).toBe(true);
    expect((await readFile(join(dir.path, 'b'))).length).toBe(data.length - 5);
    expect((await readdir(dir.path)).sort()).toEqual(['a', 'b']);
  });

  it('fails with the errno name and leaves the final name untouched', async () => {
    await writeFile(join(dir.path, 'c'), 'old');
    await writeFile(join(dir.path, 'c.tmp'), 'someone else'); // O_EXCL: never written through
    const exists = await failure(
      fileOps.writeFileAtomic(join(dir.path, 'c'), join(dir.path, 'c.tmp'), Buffer.from('new'), false),
    );
    expect(exists.code).toBe('EEXIST');
    expect(await readFile(join(dir.path, 'c'), 'utf8')).toBe('old');
    expect(await readFile(join(dir.path, 'c.tmp'), 'utf8')).toBe('someone else');
    const missing = await failure(
      fileOps.writeFileAtomic(join(dir.path, 'no/d'), join(dir.path, 'no/d.tmp'), Buffer.from('x'), false),
    );
    expect(missing.code).toBe('ENOENT');
    expect(missing.message).toMatch(/^open: /);
    expect(() => fileOps.writeFileAtomic(join(dir.path, 'e'), join(dir.path, 'e.tmp'), 'text' as never, false)).toThrow(
      /expected \(path, tmpPath, Buffer, durable\)/,
    );
  });
});

describe('fileOps.copyRanges', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => (dir = await tempDir('slacker-copy-')));
  afterEach(() => dir.cleanup());

  it('copies ranges from several files into one, with descriptors the caller closed at once', async () => {
    const a = Buffer.alloc(200_000, 1);
    const b = Buffer.from('0123456789');
    await writeFile(join(dir.path, 'a'), a);
    await writeFile(join(dir.path, 'b'), b);
    await writeFile(join(dir.path, 'out'), Buffer.alloc(0));
    const fa = openSync(join(dir.path, 'a'), 'r');
    const fb = openSync(join(dir.path, 'b'), 'r');
    const out = openSync(join(dir.path, 'out'), 'r+');
    const copied = fileOps.copyRanges(out, [fa, 0, 1000, 200_000, fb, 3, 0, 4, fb, 0, 300_000, 10]);
    [fa, fb, out].forEach((fd) => closeSync(fd)); // duplicated at the call: the job still has them
    await copied;
    const got = await readFile(join(dir.path, 'out'));
    expect(got.length).toBe(300_010);
    expect(got.subarray(0, 4).toString()).toBe('3456');
    expect(got.subarray(4, 1000).every((x) => x === 0)).toBe(true);
    expect(got.subarray(1000, 201_000).equals(a)).toBe(true);
    expect(got.subarray(300_000).toString()).toBe('0123456789');
  });

  it('fails with EIO when a source ends inside its range, and refuses malformed ranges', async () => {
    await writeFile(join(dir.path, 'short'), 'abc');
    const fd = openSync(join(dir.path, 'short'), 'r');
    const out = openSync(join(dir.path, 'out'), 'w');
    try {
      expect((await failure(fileOps.copyRanges(out, [fd, 0, 0, 10]))).code).toBe('EIO');
      expect(() => fileOps.copyRanges(out, [fd, 0, 0])).toThrow(/expected/);
      expect(() => fileOps.copyRanges(out, [fd, -1, 0, 3])).toThrow(/non-negative/);
    } finally {
      closeSync(fd);
      closeSync(out);
    }
  });
});
