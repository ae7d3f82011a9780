import { writeFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { FileBackend } from '../../block/backends/file.js';
import { MemoryBackend } from '../../block/backends/memory.js';
import { readOnly } from '../../block/filters/read-only.js';
import { capabilitiesOf } from '../../block/backend.js';
import { backendConformance, CONFORMANCE_SIZE } from '../helpers/backend-conformance.js';
import { tempDir } from '../helpers/tmp.js';

async function sparseFile(): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const dir = await tempDir();
  const path = join(dir.path, 'disk.img');
  await writeFile(path, '');
  await truncate(path, CONFORMANCE_SIZE);
  return { path, cleanup: dir.cleanup };
}

backendConformance('memory', async () => ({
  backend: new MemoryBackend({ size: CONFORMANCE_SIZE }),
  cleanup: async () => undefined,
}));

backendConformance('file', async () => {
  const f = await sparseFile();
  return { backend: await FileBackend.open({ path: f.path }), cleanup: f.cleanup };
});

// The volumes' way of opening their data files: on the event loop, the same backend after it.
backendConformance('file (opened locally)', async () => {
  const f = await sparseFile();
  return { backend: FileBackend.openLocal({ path: f.path }), cleanup: f.cleanup };
});

backendConformance('read-only(file)', async () => {
  const f = await sparseFile();
  return { backend: readOnly(await FileBackend.open({ path: f.path, readOnly: true })), cleanup: f.cleanup };
});

describe('opening a file backend', () => {
  it('fails with the errno of the open, for either way of opening', async () => {
    const dir = await tempDir();
    try {
      const missing = join(dir.path, 'missing.img');
      expect(() => FileBackend.openLocal({ path: missing })).toThrow(expect.objectContaining({ code: 'ENOENT' }));
      await expect(FileBackend.open({ path: missing })).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(FileBackend.open({ path: dir.path })).rejects.toMatchObject({ code: 'EISDIR' });
    } finally {
      await dir.cleanup();
    }
  });

  it('once closed, refuses every call, never reaching a file that took over its descriptor number', async () => {
    const f = await sparseFile();
    try {
      const b = FileBackend.openLocal({ path: f.path });
      await b.close();
      const other = await FileBackend.open({ path: f.path }); // likely gets the same number back
      try {
        await expect(b.pread(4096, 0)).rejects.toMatchObject({ name: 'ShutdownError' });
        await expect(b.pwrite(Buffer.alloc(4096, 1), 0, { fua: false })).rejects.toMatchObject({
          name: 'ShutdownError',
        });
        expect((await other.pread(4096, 0)).every((x) => x === 0)).toBe(true);
      } finally {
        await other.close();
      }
    } finally {
      await f.cleanup();
    }
  });
});

describe('capabilities are inferred from the operations a backend has', () => {
  it('memory offers everything but cache', () => {
    const caps = capabilitiesOf(new MemoryBackend({ size: 4096 }));
    expect(caps).toMatchObject({ write: true, flush: true, fua: true, trim: true, zero: true, fastZero: true });
    expect(caps.cache).toBe(false);
    expect(caps.multiConn).toBe(true);
  });

  it('read-only filter removes every write operation', () => {
    const caps = capabilitiesOf(readOnly(new MemoryBackend({ size: 4096 })));
    expect(caps).toMatchObject({ write: false, fua: false, trim: false, zero: false, fastZero: false });
    expect(caps.extents).toBe(true);
  });

  it('the file backend reports holes of a sparse file via SEEK_HOLE', async () => {
    const f = await sparseFile();
    const b = await FileBackend.open({ path: f.path });
    try {
      await b.pwrite(Buffer.alloc(4096, 1), 4 * 1024 * 1024, { fua: false });
      const ext = await b.extents(0, CONFORMANCE_SIZE);
      expect(ext.map((x) => [x.offset, x.length, x.hole])).toEqual([
        [0, 4 * 1024 * 1024, true],
        [4 * 1024 * 1024, 4096, false],
        [4 * 1024 * 1024 + 4096, CONFORMANCE_SIZE - 4 * 1024 * 1024 - 4096, true],
      ]);
    } finally {
      await b.close();
      await f.cleanup();
    }
  });
});

describe('file backend writes', () => {
  it('run on the event loop while quick, and on the threadpool for a while after a slow one', async () => {
    const f = await sparseFile();
    const b = await FileBackend.open({ path: f.path });
    try {
      expect(b.writesInline).toBe(true);
      const small = Buffer.alloc(4096, 7);
      const p = b.pwrite(small, 0, { fua: false });
      // Inline: the bytes are in the file before the promise is even awaited.
      expect((await b.pread(4096, 0)).equals(small)).toBe(true);
      await p;
      expect(b.writesInline).toBe(true);
      // 48 MiB of fresh page cache takes well over the 2 ms an inline write may take.
      const big = Buffer.alloc(48 * 1024 * 1024, 1);
      await b.pwritev([big.subarray(0, 1000), big.subarray(1000)], 0, { fua: false });
      expect(b.writesInline).toBe(false);
      await b.pwrite(small, 8192, { fua: false }); // offloaded writes land all the same
      expect((await b.pread(4096, 8192)).equals(small)).toBe(true);
      expect((await b.pread(4096, 4 * 1024 * 1024)).every((x) => x === 1)).toBe(true);
    } finally {
      await b.close();
      await f.cleanup();
    }
  });

  it('stay on the threadpool longer each time the next inline write is slow too, and come back after a quick one', async () => {
    const f = await sparseFile();
    const b = await FileBackend.open({ path: f.path });
    const timed = (ms: number) => (b as unknown as { timedInlineWrite(ms: number): void }).timedInlineWrite(ms);
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const t0 = Date.now();
      const at = (ms: number) => vi.setSystemTime(t0 + ms);
      timed(5); // slow: 1 s on the threadpool
      expect(b.writesInline).toBe(false);
      at(1_001);
      expect(b.writesInline).toBe(true);
      timed(5); // slow again: 2 s
      at(2_500);
      expect(b.writesInline).toBe(false);
      at(3_002);
      expect(b.writesInline).toBe(true);
      timed(0.1); // quick: the next slow one costs 1 s again
      timed(5);
      at(4_003);
      expect(b.writesInline).toBe(true);
    } finally {
      vi.useRealTimers();
      await b.close();
      await f.cleanup();
    }
  });
});
