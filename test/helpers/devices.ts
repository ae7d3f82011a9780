/** Reading a block device directly, for tests that check what a device shows. */
import { closeSync, openSync, readSync } from 'node:fs';
import { expect } from 'vitest';

/** `length` bytes at `offset` of a block device, read through its page cache. */
export function readDevice(device: string, offset: number, length: number): Buffer {
  const fd = openSync(device, 'r');
  try {
    const out = Buffer.alloc(length);
    expect(readSync(fd, out, 0, length, offset)).toBe(length);
    return out;
  } finally {
    closeSync(fd);
  }
}
