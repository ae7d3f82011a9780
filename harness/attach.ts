/**
 * This machine's way to turn an NBD export into a mounted ext4 file system: nbdfuse exposes the
 * export as a file, losetup makes it a block device, mount puts ext4 on it. Every step is undone
 * in reverse by `detach`, which also runs the undo steps of a half-finished attach.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { run, startProcess } from '../common/exec.js';

export interface Attached {
  loopDevice: string;
  mountPoint: string;
  detach(): Promise<void>;
}

async function retry<T>(what: string, fn: () => Promise<T>, attempts = 50, delayMs = 100): Promise<T> {
  let last: unknown;
  for (let i = 0; i < attempts; i++) {
    try {
      return await fn();
    } catch (err) {
      last = err;
      await new Promise((r) => setTimeout(r, delayMs));
    }
  }
  throw new Error(`${what} did not succeed`, { cause: last });
}

export async function attachExt4(
  uri: string,
  workDir: string,
  options: { mkfs?: boolean; readOnly?: boolean } = {},
): Promise<Attached> {
  const fuseDir = join(workDir, 'fuse');
  const mountPoint = join(workDir, 'mnt');
  await mkdir(fuseDir, { recursive: true });
  await mkdir(mountPoint, { recursive: true });
  const undo: (() => Promise<unknown>)[] = [];
  const detach = async (): Promise<void> => {
    for (const step of undo.reverse()) await step();
    undo.length = 0;
  };
  try {
    const fuse = startProcess('nbdfuse', [...(options.readOnly ? ['-r'] : []), join(fuseDir, 'disk'), uri]);
    undo.push(async () => {
      await retry('fusermount3 -u', () => run('fusermount3', ['-u', fuseDir]));
      await fuse.stop();
    });
    await retry('nbdfuse to expose the export', async () => {
      if (!existsSync(join(fuseDir, 'disk'))) throw new Error('not yet');
    });
    const loop = (
      await run('losetup', ['-f', '--show', ...(options.readOnly ? ['-r'] : []), join(fuseDir, 'disk')])
    ).stdout.trim();
    undo.push(() => run('losetup', ['-d', loop]).then(() => waitLoopGone(loop)));
    if (options.mkfs) await run('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', loop]);
    await run('mount', [...(options.readOnly ? ['-o', 'ro'] : []), loop, mountPoint]);
    undo.push(() => run('umount', [mountPoint]));
    return { loopDevice: loop, mountPoint, detach };
  } catch (err) {
    await detach();
    throw err;
  }
}

/** losetup -d only marks the device for release; wait until it no longer holds the file. */
async function waitLoopGone(loop: string): Promise<void> {
  await retry(`${loop} to detach`, async () => {
    const { stdout } = await run('losetup', ['-l', '-n', '-O', 'NAME']);
    if (stdout.split('\n').some((l) => l.trim() === loop)) throw new Error('still attached');
  });
}
