/**
 * nbdfuse + loop: nbdfuse exposes the export as a file in a FUSE mount, a loop device makes that
 * file a block device. Detach runs the steps in reverse, also those of a half-finished attach.
 * nbdfuse runs in a session of its own and outlives the daemon that started it (it talks to the
 * NBD relay, which outlives the daemon's NBD server too): a restarted daemon adopts the device
 * from its record (loop device, FUSE directory, nbdfuse's PID).
 */
import { existsSync } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError, IoError, NotFoundError } from '../common/errors.js';
import { startProcess } from '../common/exec.js';
import { retryUntil } from '../common/retry.js';
import type { Attacher, BlockDevice, DeviceRecord, NbdTarget } from './attacher.js';
import { loopDevices } from './host-state.js';
import { blockDevices, unmountRetrying } from './block-devices.js';
import { claimUnmounted } from './exclusive-claim.js';
import type { ByteRange } from '../block/ranges.js';
import { ATTACH_POLL, attachFile, attachLoop, detachLoop } from './loop.js';
import { DEFAULT_READAHEAD_KIB, setReadahead } from './read-ahead.js';
import { nbdUnixUri } from './uri.js';
import { warmPrograms } from './warm.js';

/**
 * Unmounting the FUSE file system (umount2, as root; what `fusermount3 -u` does, without its
 * process) fails with EBUSY while the loop device still holds the file: again every 20 ms, 5 s.
 */
const FUSE_UNMOUNT = { attempts: 250, delayMs: 20 };

export class NbdfuseAttacher implements Attacher {
  readonly method = 'nbdfuse';
  readonly attachFile = attachFile;

  /** `readaheadKib`: the loop device's readahead window (read-ahead.ts says why it is set). */
  constructor(private readonly options: { readaheadKib?: number } = {}) {}

  adopt(record: DeviceRecord): Promise<BlockDevice | undefined> {
    return adoptNbdfuse(record);
  }

  warm(): Promise<void> {
    return warmPrograms([['nbdfuse', '--version']]);
  }

  async attach(target: NbdTarget, workDir: string, options: { readOnly: boolean }): Promise<BlockDevice> {
    const fuseDir = join(workDir, 'fuse');
    await mkdir(fuseDir, { recursive: true });
    const undo: (() => Promise<unknown>)[] = [];
    const detach = async (): Promise<void> => {
      for (let step = undo.pop(); step; step = undo.pop()) await step();
    };
    try {
      const fuse = startProcess(
        'nbdfuse',
        [...(options.readOnly ? ['-r'] : []), join(fuseDir, 'disk'), nbdUnixUri(target)],
        { detached: true },
      );
      undo.push(async () => {
        await unmountRetrying(fuseDir, FUSE_UNMOUNT);
        await fuse.stop();
      });
      await retryUntil(
        'nbdfuse to expose the export',
        async () => {
          if (!existsSync(join(fuseDir, 'disk'))) throw new NotFoundError('the FUSE file is not there yet');
        },
        ATTACH_POLL,
      );
      const loop = await attachLoop(join(fuseDir, 'disk'), options.readOnly);
      undo.push(() => detachLoop(loop));
      await setReadahead(loop, this.options.readaheadKib ?? DEFAULT_READAHEAD_KIB);
      const record: DeviceRecord = { method: this.method, path: loop, fuseDir, pid: fuse.child.pid ?? 0 };
      return {
        path: loop,
        method: this.method,
        record,
        detach,
        readIntoCache: (r) => readIntoCache(fuseDir, r),
        claim: () => claimUnmounted(loop),
      };
    } catch (err) {
      await detach();
      throw err;
    }
  }
}

/** A device attached by an earlier process: whole if nbdfuse runs, its file answers and the loop is on it. */
export async function adoptNbdfuse(record: DeviceRecord): Promise<BlockDevice | undefined> {
  const { path: loop, fuseDir, pid } = record;
  if (typeof fuseDir !== 'string' || typeof pid !== 'number' || !alive(pid)) return undefined;
  if (
    !(await stat(join(fuseDir, 'disk')).then(
      () => true,
      () => false,
    ))
  )
    return undefined; // ENOTCONN: FUSE is gone
  if (!(await loopDevices()).some((l) => l.device === loop && l.backFile === join(fuseDir, 'disk'))) return undefined;
  let attached = true;
  return {
    path: loop,
    method: 'nbdfuse',
    record,
    claim: () => claimUnmounted(loop),
    detach: async () => {
      if (!attached) return;
      attached = false;
      await detachLoop(loop);
      await unmountRetrying(fuseDir, FUSE_UNMOUNT);
      // Not our child: wait for it by PID.
      await retryUntil(
        `nbdfuse ${pid} to exit`,
        async () => {
          if (alive(pid)) throw new ConflictError(`nbdfuse ${pid} still runs`);
        },
        ATTACH_POLL,
      );
    },
  };
}

/**
 * The loop device reads nbdfuse's file through that file's page cache, so ranges advised there
 * (WILLNEED: the kernel sends nbdfuse the reads, several at once, and returns) are found by the
 * loop's later reads without a round trip through FUSE, nbdfuse, the relay and the server. One
 * open per call: nbdfuse does not keep the cache across opens (FUSE drops a file's pages at an
 * open without FOPEN_KEEP_CACHE), which is harmless before a mount and costs a few re-reads after.
 */
async function readIntoCache(fuseDir: string, ranges: readonly ByteRange[]): Promise<void> {
  if (ranges.length === 0) return;
  const file = join(fuseDir, 'disk');
  try {
    await blockDevices.willNeed(
      file,
      ranges.flatMap((r) => [r.offset, r.length]),
    );
  } catch (err) {
    throw new IoError(`cannot read ahead in ${file}: ${(err as Error).message}`, { cause: err, context: { file } });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
