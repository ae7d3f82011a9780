/**
 * The file system a layer's block device holds, as the layer mounts use it: made once on a
 * blank device, mounted and unmounted, frozen for a consistent snapshot while mounted. ext4
 * (ext4.ts) is the one slacker serves; tests also run the layer core over a fake one.
 */
export interface LayerFilesystem {
  readonly name: string;
  /** Makes an empty file system on a blank device (one that reads as zeros: a new volume). */
  mkfs(device: string): Promise<void>;
  /**
   * `scratch`: a mount whose device is thrown away if the host crashes meanwhile (a staged
   * copy), so the file system need not order or flush its writes to the device.
   */
  mount(device: string, dir: string, options: { readOnly: boolean; scratch?: boolean }): Promise<void>;
  /** Unmounts; the device then holds everything written through the mount. */
  unmount(dir: string): Promise<void>;
  /**
   * Unmounts once if nothing uses the mount (true), or leaves it as it is (false: busy), without
   * waiting. Optional: without it, a snapshot of a mounted layer always freezes it.
   */
  unmountIfIdle?(dir: string): Promise<boolean>;
  /** Makes the device hold a consistent image of the mounted file system until `unfreeze`. */
  freeze(dir: string): Promise<void>;
  unfreeze(dir: string): Promise<void>;
  /**
   * Writes what the mount holds dirty to the device, writers not blocked, so that a freeze or
   * unmount soon after has little left to write. Optional: without it, they write it then.
   */
  sync?(dir: string): Promise<void>;
  /**
   * The names in directory `path` of the file system on an unmounted device, read without
   * mounting it; undefined if there is no such directory.
   */
  list?(device: string, path: string): Promise<string[] | undefined>;
  /** Like Attacher.warm: the mount and unmount programs, run once ahead of the first mount. */
  warm?(): Promise<void>;
}
