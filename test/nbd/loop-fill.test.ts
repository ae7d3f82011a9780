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
import { attachFile, detachLoop } from '../../attach/loop.js';
import { loopsUnder } from '../../attach/host-state.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { readDevice } from '../helpers/devices.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';

const MiB = 1024 * 1024;

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
