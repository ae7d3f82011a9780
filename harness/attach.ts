/**
 * For tests and benchmarks: an NBD export on a unix socket attached the way this machine can
 * (attach/: nbdfuse + loop here) with ext4 mounted on it. `detach` undoes every step.
 */
import { join } from 'node:path';
import { chooseAttacher } from '../attach/choose-attacher.js';
import { mkfsExt4, mountExt4, unmount } from '../attach/ext4.js';

export interface Attached {
  loopDevice: string;
  mountPoint: string;
  detach(): Promise<void>;
}

export async function attachExt4(
  target: { socket: string; exportName: string },
  workDir: string,
  options: { mkfs?: boolean; readOnly?: boolean } = {},
): Promise<Attached> {
  const readOnly = options.readOnly ?? false;
  const device = await chooseAttacher('auto').attach(target, workDir, { readOnly });
  const mountPoint = join(workDir, 'mnt');
  try {
    if (options.mkfs) await mkfsExt4(device.path);
    await mountExt4(device.path, mountPoint, { readOnly });
  } catch (err) {
    await device.detach();
    throw err;
  }
  let mounted = true;
  return {
    loopDevice: device.path,
    mountPoint,
    detach: async () => {
      if (mounted) await unmount(mountPoint);
      mounted = false;
      await device.detach();
    },
  };
}
