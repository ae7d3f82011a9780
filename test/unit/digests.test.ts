/**
 * The native batch hash that verifies fetched chunks off the event loop: it must agree with
 * node:crypto on every buffer, views into a larger buffer included, and refuse what is not one.
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { sha256Hex } from '../../common/digests.js';

const reference = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('sha256Hex', () => {
  it('hashes each buffer of a batch as node:crypto does, in order', async () => {
    const slab = randomBytes(3 * 128 * 1024 + 17);
    const buffers = [
      slab.subarray(0, 128 * 1024), // views into one slab, as a fetched batch is
      slab.subarray(128 * 1024, 256 * 1024),
      slab.subarray(256 * 1024 + 5), // odd offset and length
      Buffer.alloc(0),
      Buffer.from('abc'),
    ];
    const got = await sha256Hex(buffers);
    expect(got).toEqual(buffers.map(reference));
    expect(got[4]).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'); // FIPS 180-2 "abc"
    expect(await sha256Hex([])).toEqual([]);
  });

  it('tells a changed byte apart', async () => {
    const a = randomBytes(64 * 1024);
    const b = Buffer.from(a);
    b[0] = b[0]! ^ 1;
    const [ha, hb] = await sha256Hex([a, b]);
    expect(ha).toBe(reference(a));
    expect(hb).not.toBe(ha);
  });

  it('refuses anything but an array of Buffers', async () => {
    await expect(sha256Hex('x' as unknown as Buffer[])).rejects.toThrow(/expected \(Buffer\[\]\)/);
    await expect(sha256Hex([Buffer.alloc(1), 'x' as unknown as Buffer])).rejects.toThrow(/expected \(Buffer\[\]\)/);
  });
});
