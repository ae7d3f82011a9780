/**
 * Loop devices: a file as a block device. nbdfuse.ts puts one on its FUSE file; attachFile puts
 * one straight on a local file, for the layer core's own work on a layer that no NBD client
 * needs to see (applying a layer tar to a staged copy: layers/layer-store.ts). The kernel then
 * writes the file through its page cache, with no FUSE, no NBD and no user-space hop.
 */
import { closeSync, openSync } from 'node:fs';
import { CommandError, ConflictError } from '../common/errors.js';
import { fileOps } from '../common/fileops.js';
import { run } from '../common/exec.js';
import { retryUntil } from '../common/retry.js';
import type { BlockDevice } from './attacher.js';
import { loopDevices } from './host-state.js';

/** Both waits are usually a few milliseconds: poll often. */
const POLL = { attempts: 500, delayMs: 10 };

/** Attempts at finding a free loop device under contention. */
const LOOP_ATTEMPTS = 20;

/**
 * `losetup -f --show FILE`, again when it lost a race: `-f` picks a free loop device and then
 * configures it, and a concurrent losetup (64 containers starting at once) can take the same
 * device in between: EBUSY, "Device or resource busy". Any other failure is final.
 */
export async function attachLoop(file: string, readOnly: boolean): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    try {
      return (await run('losetup', ['-f', '--show', ...(readOnly ? ['-r'] : []), file])).stdout.trim();
    } catch (err) {
      const busy = lostTheRace(err);
      if (!busy || attempt >= LOOP_ATTEMPTS) throw err;
      await new Promise((r) => setTimeout(r, 20 * attempt));
    }
  }
}

/** Whether losetup failed because another took the device it picked (EBUSY). */
function lostTheRace(err: unknown): boolean {
  return err instanceof CommandError && /Device or resource busy/.test(err.stderr);
}

/** Detaches a loop device and waits until it no longer holds its file (`losetup -d` only marks it). */
export async function detachLoop(loop: string): Promise<void> {
  await run('losetup', ['-d', loop]);
  await retryUntil(
    `${loop} to detach`,
    async () => {
      if ((await loopDevices()).some((l) => l.device === loop)) throw new ConflictError(`${loop} is still attached`);
    },
    POLL,
  );
}

/**
 * A local file as a block device. No record: it serves the work of the process that made it only.
 *
 * With `fill`, the device is configured on the file while it is still empty and the content is
 * written afterwards. Linux 6.x writes a backing file's dirty pages back when a loop device is
 * configured on it (LOOP_CONFIGURE took 1.1 s on a file with 3.8 GB of dirty pages, 3 ms once
 * they were clean), and a staged copy is hundreds of megabytes of pages never meant to reach the
 * disk. Nothing may read the device before its content is complete, or the device's page cache
 * would keep what it read: the device node's flock (LOCK_EX) is held from before the configure
 * until after the fill and a flush of the device's buffers (BLKFLSBUF), which is how udev is kept
 * from probing a device being written (systemd's block device locking); the flush drops anything
 * read anyway.
 */
export async function attachFile(
  file: string,
  options: { readOnly: boolean; fill?: () => Promise<void> },
): Promise<BlockDevice> {
  const loop = options.fill
    ? await attachThenFill(file, options.readOnly, options.fill)
    : await attachLoop(file, options.readOnly);
  let attached = true;
  return {
    path: loop,
    method: 'loop',
    detach: async () => {
      if (!attached) return;
      attached = false;
      await detachLoop(loop);
    },
  };
}

/** attachFile with `fill`: a free device, locked, configured, filled, flushed, unlocked. */
async function attachThenFill(file: string, readOnly: boolean, fill: () => Promise<void>): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    const loop = (await run('losetup', ['-f'])).stdout.trim();
    const fd = openSync(loop, 'r');
    try {
      // Another process holds it: udev probing the device's previous use, or another attach.
      let busy = !fileOps.lockExclusive(fd);
      if (!busy) {
        try {
          await run('losetup', [...(readOnly ? ['-r'] : []), loop, file]);
        } catch (err) {
          busy = lostTheRace(err);
          if (!busy || attempt >= LOOP_ATTEMPTS) throw err;
        }
      }
      if (!busy) {
        try {
          await fill();
          await run('blockdev', ['--flushbufs', loop]);
        } catch (err) {
          await detachLoop(loop).catch(() => undefined);
          throw err;
        }
        return loop;
      }
      if (attempt >= LOOP_ATTEMPTS) throw new ConflictError(`no free loop device for ${file}: all were busy`);
    } finally {
      closeSync(fd);
    }
    await new Promise((r) => setTimeout(r, 20 * attempt));
  }
}
