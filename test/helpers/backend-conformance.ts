/**
 * One conformance suite for block backends: every backend (and filter stack) must pass it.
 * Each backend's test file is a thin call into this.
 */
import { describe, expect, it, beforeEach, afterEach } from 'vitest';
import type { Backend } from '../../block/backend.js';
import { capabilitiesOf } from '../../block/backend.js';
import { NotSupportedError } from '../../common/errors.js';
import { randomBytes } from './tmp.js';

export const CONFORMANCE_SIZE = 8 * 1024 * 1024;

export function backendConformance(
  name: string,
  make: () => Promise<{ backend: Backend; cleanup: () => Promise<void> }>,
): void {
  describe(`backend conformance: ${name}`, () => {
    let backend: Backend;
    let cleanup: () => Promise<void>;
    beforeEach(async () => {
      ({ backend, cleanup } = await make());
    });
    afterEach(async () => {
      await backend.close?.();
      await cleanup();
    });

    it('reports its size and reads zeroes where nothing was written', async () => {
      expect(backend.size).toBe(CONFORMANCE_SIZE);
      const buf = await backend.pread(100_000, 12_345);
      expect(buf.length).toBe(100_000);
      expect(buf.every((b) => b === 0)).toBe(true);
    });

    it('reads back what it wrote, at unaligned offsets and across internal page boundaries', async () => {
      if (!backend.pwrite) return expect(capabilitiesOf(backend).write).toBe(false);
      const data = randomBytes(200_003, 1);
      await backend.pwrite(data, 65_536 - 7, { fua: false });
      expect((await backend.pread(data.length, 65_536 - 7)).equals(data)).toBe(true);
      // neighbours untouched
      expect((await backend.pread(7, 65_536 - 14)).every((b) => b === 0)).toBe(true);
      await backend.pwrite(Buffer.from('end'), CONFORMANCE_SIZE - 3, { fua: true });
      expect((await backend.pread(3, CONFORMANCE_SIZE - 3)).toString()).toBe('end');
    });

    it('a vectored write (pwritev) lands its pieces back to back', async () => {
      if (!backend.pwritev) return;
      const pieces = [randomBytes(65_536, 3), randomBytes(1, 4), randomBytes(100_000, 5)];
      await backend.pwritev(pieces, 3 * 1024 * 1024 + 11, { fua: false });
      const back = await backend.pread(165_537, 3 * 1024 * 1024 + 11);
      expect(back.equals(Buffer.concat(pieces))).toBe(true);
    });

    it('zero and trim make ranges read as zeroes, and whole-block zeroing reports holes', async () => {
      if (!backend.pwrite) return;
      const data = randomBytes(1024 * 1024, 2);
      await backend.pwrite(data, 0, { fua: false });
      await backend.zero?.(1000, 5000, { fua: false, mayTrim: false, fast: false });
      const z = await backend.pread(5000, 1000);
      if (backend.zero) expect(z.every((b) => b === 0)).toBe(true);
      await backend.trim?.(512 * 1024, 512 * 1024, { fua: false });
      if (backend.trim) {
        // TRIM is advisory: contents are unspecified afterwards, but extents must stay consistent.
        const ext = await backend.extents!(0, 1024 * 1024);
        expect(ext.reduce((s, x) => s + x.length, 0)).toBe(1024 * 1024);
      }
      if (backend.zero) {
        await backend.zero(2 * 1024 * 1024, 1024 * 1024, { fua: false, mayTrim: true, fast: false });
        expect((await backend.pread(1024 * 1024, 2 * 1024 * 1024)).every((b) => b === 0)).toBe(true);
      }
    });

    it('fast zero either succeeds quickly or refuses with NotSupportedError', async () => {
      if (!backend.zero) return;
      await backend.pwrite!(Buffer.alloc(4096, 1), 0, { fua: false });
      try {
        await backend.zero(0, 4096, { fua: false, mayTrim: false, fast: true });
        expect((await backend.pread(4096, 0)).every((b) => b === 0)).toBe(true);
      } catch (err) {
        expect(err).toBeInstanceOf(NotSupportedError);
      }
    });

    it('extents are consecutive, start at the offset and flag holes as zero', async () => {
      if (!backend.extents) return;
      if (backend.pwrite) await backend.pwrite(Buffer.alloc(65_536, 7), 1024 * 1024, { fua: false });
      const ext = await backend.extents(0, CONFORMANCE_SIZE);
      expect(ext[0]!.offset).toBe(0);
      let pos = 0;
      for (const x of ext) {
        expect(x.offset).toBe(pos);
        expect(x.length).toBeGreaterThan(0);
        if (x.hole) expect(x.zero).toBe(true);
        pos += x.length;
      }
      expect(pos).toBe(CONFORMANCE_SIZE);
      if (backend.pwrite) {
        const at = ext.find((x) => x.offset <= 1024 * 1024 && x.offset + x.length > 1024 * 1024)!;
        expect(at.hole).toBe(false);
        expect(ext.some((x) => x.hole)).toBe(true);
      }
    });

    it('flush and cache succeed when offered', async () => {
      await backend.flush?.();
      await backend.cache?.(0, 65_536);
    });
  });
}
