/**
 * Loop devices: a file as a block device. nbdfuse.ts puts one on its FUSE file; attachFile puts
 * one straight on a local file, for the layer core's own work on a layer that no NBD client
 * needs to see (applying a layer tar to a staged copy: layers/layer-store.ts). The kernel then
 * writes the file through its page cache, with no FUSE, no NBD and no user-space hop.
 *
 * The devices are found, bound and unbound with the ioctls losetup makes (native/block-devices.c),
 * not by running losetup: a process per call cost 5-7 ms, and each Get and Put of a layer makes one.
 */
import { closeSync, existsSync, openSync } from 'node:fs';
import { basename } from 'node:path';
import { ConflictError, IoError, systemErrorCode } from '../common/errors.js';
import { fileOps } from '../common/fileops.js';
import { KeyedLock } from '../common/keyed-lock.js';
import { run } from '../common/exec.js';
import { retryUntil } from '../common/retry.js';
import type { BlockDevice } from './attacher.js';
import { blockDevices } from './block-devices.js';

/** A free loop device's path: another process may still take it before it is configured. */
function freeLoopDevice(): string {
  return `/dev/loop${blockDevices.freeLoop()}`;
}

/** Binds `file` to `loop`; a failure other than a lost race is an IoError naming both. */
async function configure(loop: string, file: string, readOnly: boolean): Promise<void> {
  try {
    await blockDevices.configureLoop(loop, file, readOnly);
  } catch (err) {
    if (lostTheRace(err)) throw err;
    throw new IoError(`cannot attach ${file} to ${loop}: ${(err as Error).message}`, {
      cause: err,
      context: { loop, file },
    });
  }
}

/**
 * Polling for what another program or the kernel brings about on the attach path (a loop device
 * let go, nbdfuse's file served ~8-11 ms after it starts): usually a few milliseconds, and every
 * Get and Put of a layer waits so once, so every 2 ms, up to 5 s. At 10 ms an attach waited ~20 ms
 * for a file ready at ~11.
 */
export const ATTACH_POLL = { attempts: 2500, delayMs: 2 };

/** Attempts at finding a free loop device under contention. */
const LOOP_ATTEMPTS = 20;

/**
 * This process's attaches take loop devices one at a time. LOOP_CTL_GET_FREE names the same
 * device to every caller until one of them binds it, so attaches made at once raced each other
 * in rounds that one of them won: 64 containers starting together ran out of the 20 attempts
 * (CI, 2026-12-07). Binding takes a few milliseconds. Another program's losetup can still take a
 * device in between; that EBUSY is retried below.
 */
const allocating = new KeyedLock<'loop'>();

/**
 * `losetup -f --show FILE`, again when it lost a race: a free loop device is picked and then
 * configured, and a concurrent attach (64 containers starting at once, or another program's
 * losetup) can take the same device in between: EBUSY. Any other failure is final.
 */
export async function attachLoop(file: string, readOnly: boolean): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await allocating.run('loop', async () => {
        const loop = freeLoopDevice();
        await configure(loop, file, readOnly);
        return loop;
      });
    } catch (err) {
      if (!lostTheRace(err)) throw err;
      if (attempt >= LOOP_ATTEMPTS) throw new ConflictError(`no free loop device for ${file}: all were taken`);
      await new Promise((r) => setTimeout(r, 20 * attempt));
    }
  }
}

/** Whether configuring failed because another took the device first (EBUSY). */
function lostTheRace(err: unknown): boolean {
  return systemErrorCode(err) === 'EBUSY';
}

/**
 * Detaches a loop device and waits until it no longer holds its file (`losetup -d` only marks it
 * while the device is open). The device is bound while sysfs shows its `loop` directory: reading
 * that costs a stat where listing the devices (`losetup -l`) costs a process.
 */
export async function detachLoop(loop: string): Promise<void> {
  try {
    await blockDevices.clearLoop(loop);
  } catch (err) {
    // ENXIO: nothing bound (a detach that ran before); anything else is a real failure.
    if (systemErrorCode(err) !== 'ENXIO')
      throw new IoError(`cannot detach ${loop}: ${(err as Error).message}`, { cause: err, context: { loop } });
  }
  await retryUntil(
    `${loop} to detach`,
    async () => {
      if (loopBound(loop)) throw new ConflictError(`${loop} is still attached`);
    },
    ATTACH_POLL,
  );
}

/** Whether a loop device has a backing file (sysfs keeps /sys/block/loopN/loop while it does). */
function loopBound(loop: string): boolean {
  return existsSync(`/sys/block/${basename(loop)}/loop`);
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
    let fd: number | undefined;
    const unlock = (): void => {
      if (fd !== undefined) closeSync(fd);
      fd = undefined;
    };
    try {
      const { loop, busy } = await allocating.run('loop', async () => {
        const loop = freeLoopDevice();
        fd = openSync(loop, 'r');
        // Another process holds it: udev probing the device's previous use, or another attach.
        let busy = !fileOps.lockExclusive(fd);
        if (!busy) {
          try {
            await configure(loop, file, readOnly);
          } catch (err) {
            busy = lostTheRace(err);
            if (!busy) throw err;
          }
        }
        return { loop, busy };
      });
      if (!busy) {
        try {
          await fill();
          await run('blockdev', ['--flushbufs', loop]);
        } catch (err) {
          // Unlocked first: the kernel unbinds a device only once nobody has it open.
          unlock();
          await detachLoop(loop).catch(() => undefined);
          throw err;
        }
        return loop;
      }
      if (attempt >= LOOP_ATTEMPTS) throw new ConflictError(`no free loop device for ${file}: all were busy`);
    } finally {
      unlock();
    }
    await new Promise((r) => setTimeout(r, 20 * attempt));
  }
}
