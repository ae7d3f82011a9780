/**
 * The kernel's readahead window on an attached device: how much a page fault in a mapped file
 * reads around itself, and how far a sequential reader of a file reads ahead. Every byte the
 * kernel reads of an image layer is a byte its host fetches from the store, and a container's
 * startup profile is what the kernel read on the host that recorded it, so the window sets
 * both how much a lazy start fetches and how many requests it makes.
 *
 * The kernel gives a loop device 2560 KiB here. With 128 KiB (the kernel's default for most
 * disks) HelloBench's starts fetched a quarter less (median 17.4% -> 12.8% of the image) and
 * deployed as fast; 32 KiB saved little more, 512 KiB little at all (docs/BENCHMARKS.md, "How
 * much a lazy start fetches").
 */
import { InvalidArgumentError, IoError } from '../common/errors.js';
import { blockDevices } from './block-devices.js';

export const DEFAULT_READAHEAD_KIB = 128;
/** The largest window taken (1 GiB); native/block-devices.c refuses more too. */
export const MAX_READAHEAD_KIB = 2 ** 20;

/**
 * Sets `device`'s readahead window, before it is mounted: the BLKRASET ioctl, as `blockdev
 * --setra` does, not sysfs's `queue/read_ahead_kb`, which a managed plugin sees read-only.
 */
export async function setReadahead(device: string, kib: number): Promise<void> {
  if (!Number.isSafeInteger(kib) || kib < 0 || kib > MAX_READAHEAD_KIB) {
    throw new InvalidArgumentError(`a readahead window is 0 to 1 GiB in KiB, got ${kib}`, { context: { device, kib } });
  }
  try {
    await blockDevices.setReadahead(device, kib);
  } catch (err) {
    throw new IoError(`cannot set the readahead of ${device}: ${(err as Error).message}`, {
      cause: err,
      context: { device, kib },
    });
  }
}
