/**
 * attach/loop.ts attachFile with `fill`: the loop device is configured on the empty file and the
 * content written afterwards, so a staged copy's dirty pages are not written to disk by the
 * configure. What must hold: whatever read the device during the fill (udev's probe; here the
 * test itself) leaves nothing stale in the device's cache, and a failed fill leaves no device.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachFile, attachLoop, detachLoop } from '../../attach/loop.js';
import { loopsUnder } from '../../attach/host-state.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';

const MiB = 1024 * 1024;

/** `length` bytes at `offset` of a block device, read through its page cache. */
function readDevice(device: string, offset: number, length: number): Buffer {
  const fd = openSync(device, 'r');
  try {
    const out = Buffer.alloc(length);
    expect(readSync(fd, out, 0, length, offset)).toBe(length);
    return out;
  } finally {
    closeSync(fd);
  }
}

describe('a loop device attached before its file is filled', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;

  beforeAll(async () => {
    requireRoot();
    await requireTools('losetup', 'blockdev');
    dir = await tempDir('slacker-loop-fill-');
  });
  afterAll(async () => {
    for (const l of dir ? await loopsUnder(dir.path) : []) await detachLoop(l.device);
    await dir?.cleanup();
  });

  async function emptyFile(name: string): Promise<string> {
    const file = join(dir.path, name);
    await writeFile(file, '');
    await truncate(file, 64 * MiB);
    return file;
  }

  it('shows what the fill wrote, even where the device was read (and cached) during the fill', async () => {
    const file = await emptyFile('staged.img');
    const content = randomBytes(MiB, 7);
    // A reader that keeps the device open across the fill (a probe still running): the device's
    // pages it read stay cached until something drops them (the last close would).
    let prober: number | undefined;
    const seenDuringFill = Buffer.alloc(MiB, 1);
    try {
      const device = await attachFile(file, {
        readOnly: false,
        fill: async () => {
          const [loop] = await loopsUnder(dir.path);
          prober = openSync(loop!.device, 'r');
          expect(readSync(prober, seenDuringFill, 0, MiB, 0)).toBe(MiB);
          const fd = openSync(file, 'r+');
          try {
            expect(writeSync(fd, content, 0, MiB, 0)).toBe(MiB);
          } finally {
            closeSync(fd);
          }
        },
      });
      try {
        expect(seenDuringFill.equals(Buffer.alloc(MiB))).toBe(true); // read while the file was empty
        expect(readDevice(device.path, 0, MiB).equals(content)).toBe(true);
      } finally {
        if (prober !== undefined) closeSync(prober);
        prober = undefined;
        await device.detach();
      }
    } finally {
      if (prober !== undefined) closeSync(prober);
    }
    expect(await loopsUnder(dir.path)).toEqual([]);
  });

  it('a fill that fails detaches the device and rejects with its error', async () => {
    const file = await emptyFile('failing.img');
    await expect(
      attachFile(file, {
        readOnly: false,
        fill: async () => {
          expect(await loopsUnder(dir.path)).toHaveLength(1); // configured before the fill
          throw new Error('the fill failed');
        },
      }),
    ).rejects.toThrow('the fill failed');
    expect(await loopsUnder(dir.path)).toEqual([]);
  });
});

/** Writes 512 bytes at the start of a block device, closing it whatever happens. */
function writeToDevice(device: string): void {
  const fd = openSync(device, 'r+');
  try {
    writeSync(fd, Buffer.alloc(512, 7), 0, 512, 0);
  } finally {
    closeSync(fd);
  }
}

describe('loop devices bound and unbound by ioctl (no losetup process)', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;

  beforeAll(async () => {
    requireRoot();
    await requireTools('losetup');
    dir = await tempDir('slacker-loop-ioctl-');
  });
  afterAll(async () => {
    for (const l of dir ? await loopsUnder(dir.path) : []) await detachLoop(l.device);
    await dir?.cleanup();
  });

  it('binds read-only and read-write as losetup shows them, serves the file, and a second detach is no error', async () => {
    const file = join(dir.path, 'rw.img');
    const content = randomBytes(MiB);
    await writeFile(file, content);
    const rw = await attachLoop(file, false);
    const ro = await attachLoop(file, true);
    try {
      expect(rw).not.toBe(ro);
      expect((await loopsUnder(dir.path)).map((l) => l.device).sort()).toEqual([rw, ro].sort());
      expect(readDevice(ro, 4096, 4096).equals(content.subarray(4096, 8192))).toBe(true);
      expect(() => writeToDevice(ro)).toThrow(/EROFS|EPERM|EACCES/);
      writeToDevice(rw);
    } finally {
      await detachLoop(rw);
      await detachLoop(ro);
    }
    await detachLoop(rw); // nothing bound any more: not an error
    expect(await loopsUnder(dir.path)).toEqual([]);
  });

  it('a file that cannot be opened is an IoError naming it, and leaves no device', async () => {
    const missing = join(dir.path, 'missing.img');
    await expect(attachLoop(missing, false)).rejects.toMatchObject({
      name: 'IoError',
      message: expect.stringContaining(missing),
    });
    expect(await loopsUnder(dir.path)).toEqual([]);
  });
});
