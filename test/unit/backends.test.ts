import { writeFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
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

backendConformance('read-only(file)', async () => {
  const f = await sparseFile();
  return { backend: readOnly(await FileBackend.open({ path: f.path, readOnly: true })), cleanup: f.cleanup };
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
