/**
 * Loop devices: a file as a block device. nbdfuse.ts puts one on its FUSE file; attachFile puts
 * one straight on a local file, for the layer core's own work on a layer that no NBD client
 * needs to see (applying a layer tar to a staged copy: layers/layer-store.ts). The kernel then
 * writes the file through its page cache, with no FUSE, no NBD and no user-space hop.
 */
import { CommandError, ConflictError } from '../common/errors.js';
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
      const busy = err instanceof CommandError && /Device or resource busy/.test(err.stderr);
      if (!busy || attempt >= LOOP_ATTEMPTS) throw err;
      await new Promise((r) => setTimeout(r, 20 * attempt));
    }
  }
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

/** A local file as a block device. No record: it serves the work of the process that made it only. */
export async function attachFile(file: string, options: { readOnly: boolean }): Promise<BlockDevice> {
  const loop = await attachLoop(file, options.readOnly);
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
