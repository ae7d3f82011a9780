/**
 * A layer volume mounted the way this machine can: exported by an NbdServer, attached through
 * nbdfuse + loop, ext4 mounted. `fn` runs on the mount point; everything is undone afterwards,
 * also when `fn` fails.
 */
import { join } from 'node:path';
import type { NbdServer } from '../nbd-server/server.js';
import type { VolumeManager } from '../volumes/manager.js';
import { attachExt4 } from './attach.js';

export interface MountOptions {
  /** A server with a unix listener; the volume is exported on it for the duration. */
  server: NbdServer;
  manager: VolumeManager;
  id: string;
  /** Where the attach path puts its FUSE and mount directories. */
  workDir: string;
  readOnly: boolean;
  /** Make a fresh ext4 first (a new, empty volume). */
  mkfs: boolean;
}

export async function withMountedVolume<T>(o: MountOptions, fn: (mountPoint: string) => Promise<T>): Promise<T> {
  const unix = o.server.addresses.find((a) => a.kind === 'unix');
  if (!unix) throw new Error('withMountedVolume needs a server listening on a unix socket');
  o.server.addExport({ name: o.id, backend: await o.manager.acquire(o.id) });
  try {
    const a = await attachExt4(
      { socket: unix.path, exportName: o.id },
      join(o.workDir, `attach-${o.id}-${Date.now()}`),
      {
        mkfs: o.mkfs,
        readOnly: o.readOnly,
      },
    );
    try {
      return await fn(a.mountPoint);
    } finally {
      await a.detach();
    }
  } finally {
    o.server.removeExport(o.id, { force: true });
    await o.manager.release(o.id);
  }
}
