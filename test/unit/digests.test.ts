/**
 * The native batch hash that verifies fetched chunks off the event loop: it must agree with
 * node:crypto on every buffer, views into a larger buffer included, and refuse what is not one.
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { digestOf, digestsOf, digestsUnlessSame, hexOf, isDigest } from '../../common/digests.js';
import { tempDir } from '../helpers/tmp.js';

const reference = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('digestsOf (the batch on the threadpool)', () => {
  it('hashes each buffer of a batch as node:crypto does, in order', async () => {
    const slab = randomBytes(3 * 128 * 1024 + 17);
    const buffers = [
      slab.subarray(0, 128 * 1024), // views into one slab, as a fetched batch is
      slab.subarray(128 * 1024, 256 * 1024),
      slab.subarray(256 * 1024 + 5), // odd offset and length
      Buffer.alloc(0),
      Buffer.from('abc'),
    ];
    const got = await digestsOf(buffers);
    expect(got).toEqual(buffers.map(reference));
    expect(got[4]).toBe('sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'); // FIPS 180-2 "abc"
    expect(await digestsOf([])).toEqual([]);
  });

  it('tells a changed byte apart', async () => {
    const a = randomBytes(64 * 1024);
    const b = Buffer.from(a);
    b[0] = b[0]! ^ 1;
    const [ha, hb] = await digestsOf([a, b]);
    expect(ha).toBe(reference(a));
    expect(hb).not.toBe(ha);
  });

  it('refuses anything but an array of Buffers', async () => {
    await expect(digestsOf('x' as unknown as Buffer[])).rejects.toThrow(/expected \(Buffer\[\]\)/);
    await expect(digestsOf([Buffer.alloc(1), 'x' as unknown as Buffer])).rejects.toThrow(/expected \(Buffer\[\]\)/);
  });
});

describe('digestOf, isDigest, hexOf', () => {
  it('agree with the batch and with each other', async () => {
    const b = randomBytes(1000);
    const d = digestOf(b);
    expect(d).toBe(reference(b));
    expect((await digestsOf([b]))[0]).toBe(d);
    expect(isDigest(d)).toBe(true);
    expect(hexOf(d)).toBe(d.slice('sha256:'.length));
  });

  it.each(['sha256:' + 'A'.repeat(64), 'sha256:' + 'a'.repeat(63), 'sha512:' + 'a'.repeat(64), ''])(
    'isDigest refuses %j',
    (s) => expect(isDigest(s)).toBe(false),
  );
});

describe('digestsUnlessSame (a staged freeze compares chunks with their originals)', () => {
  it('leaves out the buffers equal to their original bytes, hashes the rest, and needs the descriptors only at the call', async () => {
    const dir = await tempDir('slacker-digests-');
    try {
      const file = join(dir.path, 'originals');
      const original = randomBytes(3 * 64 * 1024);
      writeFileSync(file, original); // in the page cache
      const same = Buffer.from(original.subarray(64 * 1024, 128 * 1024));
      const changed = Buffer.from(original.subarray(0, 64 * 1024));
      changed[100] = changed[100]! ^ 1;
      const none = randomBytes(1000);
      const short = Buffer.from(original.subarray(128 * 1024)); // its original ends early
      const fd = openSync(file, 'r');
      const pending = digestsUnlessSame(
        [same, changed, none, short, Buffer.from(same)],
        [
          { fd, position: 64 * 1024 },
          { fd, position: 0 },
          undefined,
          { fd, position: 128 * 1024 + 10 },
          { fd: 123456, position: 0 }, // not a descriptor: hashed
        ],
      );
      closeSync(fd); // the addon holds its own copies
      const got = await pending;
      expect(got).toEqual([undefined, reference(changed), reference(none), reference(short), reference(same)]);
    } finally {
      await dir.cleanup();
    }
  });

  it('refuses originals that do not pair with the buffers', async () => {
    const { loadAddon } = await import('../../common/native-addon.js');
    const addon = loadAddon<{ sha256Batch(b: Buffer[], o?: number[]): Promise<Buffer> }>('digests');
    expect(() => addon.sha256Batch([Buffer.from('a')], [3])).toThrow(/expected/);
  });
});
