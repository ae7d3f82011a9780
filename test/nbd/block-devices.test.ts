/**
 * The attach path's system calls without their programs (attach/block-devices.ts,
 * native/block-devices.c): loop devices bound and unbound by ioctl, ext4 mounted and unmounted by
 * mount(2)/umount2(2), frozen and written out by ioctl and syncfs(2). What must hold: what
 * losetup, mount and fsfreeze would have done, failures named and final at once, a busy unmount
 * retried until it can go, and nothing left attached.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { execFile as execFileCb, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdir, open, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ext4, mountExt4, mkfsExt4, unmount } from '../../attach/ext4.js';
import { attachLoop, detachLoop } from '../../attach/loop.js';
import { setReadahead } from '../../attach/read-ahead.js';
import { blockDevices } from '../../attach/block-devices.js';
import { loopsUnder, mountsUnder } from '../../attach/host-state.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { readDevice } from '../helpers/devices.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
const execFile = promisify(execFileCb);

/** Writes 512 bytes at the start of a block device, closing it whatever happens. */
function writeToDevice(device: string): void {
  const fd = openSync(device, 'r+');
  try {
    writeSync(fd, Buffer.alloc(512, 7), 0, 512, 0);
  } finally {
    closeSync(fd);
  }
}

describe('loop devices and mounts without losetup, mount or umount', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;

  beforeAll(async () => {
    requireRoot();
    await requireTools('losetup', 'mkfs.ext4', 'findmnt', 'fincore', 'dd');
    dir = await tempDir('slacker-block-devices-');
  });
  afterAll(async () => {
    for (const m of dir ? await mountsUnder(dir.path) : []) await unmount(m).catch(() => undefined);
    for (const l of dir ? await loopsUnder(dir.path) : []) await detachLoop(l.device);
    await dir?.cleanup();
  });

  it('binds read-only and read-write as losetup shows them, serves the file, and a second detach is no error', async () => {
    const file = join(dir.path, 'rw.img');
    const content = randomBytes(MiB, 3);
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
    expect((await readFile(file)).subarray(0, 512).every((b) => b === 7)).toBe(true);
  });

  it('48 attaches at once each get a device of their own (none runs out of attempts)', async () => {
    const files = await Promise.all(
      Array.from({ length: 48 }, async (_, i) => {
        const f = join(dir.path, `many-${i}.img`);
        await writeFile(f, Buffer.alloc(64 * 1024, i));
        return f;
      }),
    );
    const results = await Promise.allSettled(files.map((f) => attachLoop(f, true)));
    const loops = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    try {
      expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
      expect(new Set(loops).size).toBe(48);
    } finally {
      for (const l of loops) await detachLoop(l);
    }
  });

  it('a file that cannot be opened is an IoError naming it, and leaves no device', async () => {
    const missing = join(dir.path, 'missing.img');
    await expect(attachLoop(missing, false)).rejects.toMatchObject({
      name: 'IoError',
      message: expect.stringContaining(missing),
    });
    expect(await loopsUnder(dir.path)).toEqual([]);
  });

  it('sets a readahead window by ioctl, as blockdev --setra does; a non-device is an IoError naming it', async () => {
    const file = join(dir.path, 'ra.img');
    await writeFile(file, Buffer.alloc(MiB));
    const loop = await attachLoop(file, true);
    try {
      await setReadahead(loop, 96);
      expect(execFileSync('blockdev', ['--getra', loop], { encoding: 'utf8' }).trim()).toBe('192'); // sectors
      expect((await readFile(`/sys/block/${loop.slice(5)}/queue/read_ahead_kb`, 'utf8')).trim()).toBe('96');
    } finally {
      await detachLoop(loop);
    }
    await expect(setReadahead(file, 128)).rejects.toMatchObject({
      name: 'IoError',
      message: expect.stringContaining(file),
    });
    await expect(setReadahead(loop, -1)).rejects.toMatchObject({ name: 'InvalidArgumentError' });
  });

  it('mounts ext4 read-write with noatime and read-only, and a busy unmount waits until it can go', async () => {
    const file = join(dir.path, 'fs.img');
    await writeFile(file, '');
    await truncate(file, 64 * MiB);
    const loop = await attachLoop(file, false);
    const mnt = join(dir.path, 'mnt');
    try {
      await mkfsExt4(loop);
      await mountExt4(loop, mnt, { readOnly: false });
      const options = execFileSync('findmnt', ['-rn', '-o', 'OPTIONS', mnt]);
      expect(String(options)).toMatch(/(^|,)rw(,|$)/);
      expect(String(options)).toMatch(/noatime/);
      await writeFile(join(mnt, 'kept'), 'written through the mount');
      // A file held open keeps the mount busy (EBUSY): the unmount tries again until it is closed.
      const held = await open(join(mnt, 'kept'), 'r');
      const unmounted = unmount(mnt);
      await new Promise((r) => setTimeout(r, 300));
      expect(await mountsUnder(dir.path)).toEqual([mnt]);
      await held.close();
      await unmounted;
      expect(await mountsUnder(dir.path)).toEqual([]);
      await mountExt4(loop, mnt, { readOnly: true });
      expect(await readFile(join(mnt, 'kept'), 'utf8')).toBe('written through the mount');
      await expect(writeFile(join(mnt, 'other'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
      await unmount(mnt);
    } finally {
      for (const m of await mountsUnder(dir.path)) await unmount(m).catch(() => undefined);
      await detachLoop(loop);
    }
  });

  it('freezes, thaws and writes out ext4 by ioctl and syncfs, as fsfreeze and sync -f do; a bad path is an IoError naming it', async () => {
    const file = join(dir.path, 'freeze.img');
    await writeFile(file, '');
    await truncate(file, 64 * MiB);
    const loop = await attachLoop(file, false);
    const mnt = join(dir.path, 'mnt-freeze');
    const mark = (n: number) => Buffer.alloc(64 * 1024, `slacker-freeze-test-${n}-${process.pid};`);
    const onDevice = async (n: number) => (await readFile(file)).includes(mark(n).subarray(0, 4096));
    try {
      await mkfsExt4(loop);
      await mountExt4(loop, mnt, { readOnly: false });
      // Written through the mount: in ext4's page cache only (delayed allocation) until written out.
      await writeFile(join(mnt, 'one'), mark(1));
      expect(await onDevice(1)).toBe(false);
      await ext4.sync!(mnt);
      expect(await onDevice(1)).toBe(true);
      // A frozen file system holds everything written before, and a writer waits for the thaw.
      await writeFile(join(mnt, 'two'), mark(2));
      await ext4.freeze(mnt);
      expect(await onDevice(2)).toBe(true);
      let written = false;
      const writer = execFile('sh', ['-c', `echo late > ${join(mnt, 'late')}`]).then(() => (written = true));
      await new Promise((r) => setTimeout(r, 300));
      expect(written).toBe(false);
      await ext4.unfreeze(mnt);
      await writer;
      expect(await readFile(join(mnt, 'late'), 'utf8')).toBe('late\n');
      await unmount(mnt);
      const nowhere = join(dir.path, 'no-such-dir');
      for (const call of [ext4.freeze, ext4.unfreeze, ext4.sync!]) {
        await expect(call(nowhere)).rejects.toMatchObject({
          name: 'IoError',
          message: expect.stringContaining(nowhere),
        });
      }
    } finally {
      await ext4.unfreeze(mnt).catch(() => undefined);
      for (const m of await mountsUnder(dir.path)) await unmount(m).catch(() => undefined);
      await detachLoop(loop);
    }
  });

  it('willNeed reads the ranges it is given into the page cache, and refuses bad ranges and files', async () => {
    const file = join(dir.path, 'willneed.bin');
    await writeFile(file, randomBytes(8 * MiB, 5));
    // Dropped from the page cache (coreutils' idiom), so that what is resident after is what was asked.
    execFileSync('dd', [`of=${file}`, 'oflag=nocache', 'conv=notrunc,fdatasync', 'count=0', 'status=none']);
    const resident = (): number =>
      Number(
        execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], { encoding: 'utf8' }).trim(),
      );
    expect(resident()).toBe(0);
    await blockDevices.willNeed(file, [MiB, 3 * MiB, 6 * MiB, 128 * 1024]); // 3 MiB at 1 MiB, 128 KiB at 6 MiB
    const deadline = Date.now() + 5_000;
    while (resident() < 3 * MiB + 128 * 1024 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(resident()).toBe(3 * MiB + 128 * 1024);
    await blockDevices.willNeed(file, []); // nothing asked: nothing to do
    for (const bad of [[1], [-1, 5], [0.5, 1], 'x', [0, 2 ** 60]]) {
      await expect(Promise.resolve().then(() => blockDevices.willNeed(file, bad as number[]))).rejects.toMatchObject({
        code: 'EINVAL',
      });
    }
    await expect(blockDevices.willNeed(join(dir.path, 'none'), [0, 1])).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a mount or unmount that cannot be done fails at once with an IoError naming its path', async () => {
    const notMounted = join(dir.path, 'not-mounted');
    await mkdir(notMounted, { recursive: true });
    const t0 = Date.now();
    await expect(unmount(notMounted)).rejects.toMatchObject({
      name: 'IoError',
      message: expect.stringContaining(notMounted),
    });
    expect(Date.now() - t0).toBeLessThan(1000); // not retried as if it were busy
    const noDevice = join(dir.path, 'no-such-device');
    await expect(mountExt4(noDevice, join(dir.path, 'mnt2'), { readOnly: true })).rejects.toMatchObject({
      name: 'IoError',
      message: expect.stringContaining(noDevice),
    });
    expect(await mountsUnder(dir.path)).toEqual([]);
  });
});
