/**
 * Turning an NBD export into a local block device: the interface. Two implementations:
 *   - nbd-client.ts: the kernel NBD driver (/dev/nbdN), where the kernel has it;
 *   - nbdfuse.ts: libnbd's FUSE file plus a loop device, which works wherever FUSE does.
 * choose-attacher.ts picks one. Both also put a loop device straight on a local file (loop.ts).
 * Knows nothing of volumes or Docker: an attacher is given a unix socket and an export name.
 */
import type { ByteRange } from '../block/ranges.js';

export type AttachMethod = 'nbd-client' | 'nbdfuse';
export const ATTACH_METHODS: readonly AttachMethod[] = ['nbd-client', 'nbdfuse'];

/** Where the export is served: a unix socket of this host's NBD server. */
export interface NbdTarget {
  socket: string;
  exportName: string;
}

/**
 * What identifies an attachment after the process that made it is gone (JSON): enough for the
 * next daemon to adopt it, or to take it down.
 */
export interface DeviceRecord {
  method: string;
  path: string;
  [detail: string]: string | number | boolean;
}

export interface BlockDevice {
  /** The device node to mount (/dev/nbdN or /dev/loopN). */
  readonly path: string;
  /** How it was attached (an AttachMethod, or a test fake's name). */
  readonly method: string;
  /** For adoption by a later process; absent for devices that cannot outlive their maker. */
  readonly record?: DeviceRecord;
  /** Undoes the attach; idempotent. */
  detach(): Promise<void>;
  /**
   * Starts reading these ranges of the export into the page cache the device's reads go
   * through, in order, and resolves once they are asked for (not when they are in), so that a
   * file system mounted on the device finds them there. Absent where no such cache is under the
   * device (the kernel NBD client: its block device's cache holds a file system's metadata, not
   * its files' data).
   */
  readIntoCache?(ranges: readonly ByteRange[]): Promise<void>;
  /**
   * Opens the device exclusively (exclusive-claim.ts) if no file system is mounted on it, in any
   * mount namespace: it then holds a consistent image, and no mount can start until the returned
   * release runs. Undefined if one is mounted. Absent where that cannot be told (test fakes).
   */
  claim?(): Promise<ReleaseClaim | undefined>;
}

/** Ends an exclusive claim of a block device (BlockDevice.claim). */
export type ReleaseClaim = () => Promise<void>;

export interface Attacher {
  readonly method: string;
  /** `workDir` is this attachment's own scratch directory (nbdfuse puts its file there). */
  attach(target: NbdTarget, workDir: string, options: { readOnly: boolean }): Promise<BlockDevice>;
  /**
   * The device a previous process attached (its record), if it is still whole: its NBD client
   * still runs and the device node still stands for it. Undefined otherwise.
   */
  adopt?(record: DeviceRecord): Promise<BlockDevice | undefined>;
  /**
   * A local file as a block device, with no NBD in the way (loop.ts), for the layer core's own
   * work on a staged copy of a layer. `fill`, if given, writes the file's content once the
   * device is configured on it and before anything may read the device (loop.ts says why).
   * Absent: the core works through NBD exports only.
   */
  attachFile?(path: string, options: { readOnly: boolean; fill?: () => Promise<void> }): Promise<BlockDevice>;
  /**
   * Runs the programs an attach runs once, harmlessly (`--version`), so that a host that just
   * booted does not read them and their libraries from disk during its first container's
   * create. Never fails.
   */
  warm?(): Promise<void>;
}
