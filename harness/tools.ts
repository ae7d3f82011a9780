/**
 * Real-part fixtures shared by tests and benchmarks (harness/): checking that the system tools
 * they drive are installed, with the Debian package that provides each.
 */
import { run } from '../common/exec.js';

/** Debian package that provides each tool (what scripts/install-deps.sh installs). */
export const PACKAGES: Record<string, string> = {
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdfuse: 'libnbd-bin',
  'qemu-io': 'qemu-utils',
  'qemu-img': 'qemu-utils',
  nbdkit: 'nbdkit',
  'mkfs.ext4': 'e2fsprogs',
  fusermount3: 'fuse3',
  losetup: 'mount',
  fio: 'fio',
  'docker-registry': 'docker-registry',
  htpasswd: 'apache2-utils',
  openssl: 'openssl',
  ip: 'iproute2',
  tc: 'iproute2',
  dockerd: 'docker.io',
  debootstrap: 'debootstrap',
  fsfreeze: 'util-linux',
  findmnt: 'util-linux',
  'busybox-static': 'busybox-static',
};

/**
 * Fails loudly (never skips) when a tool is missing: CI installs them all, and a test that
 * silently does not run proves nothing.
 */
export async function requireTools(...tools: string[]): Promise<void> {
  const missing: string[] = [];
  for (const t of tools) {
    try {
      // Packages whose command alone does not tell (a dynamic busybox is no use in an image).
      if (t === 'busybox-static') await run('dpkg', ['-s', t]);
      else await run('sh', ['-c', `command -v ${t}`]);
    } catch {
      missing.push(`${t} (Debian package ${PACKAGES[t] ?? '?'})`);
    }
  }
  if (missing.length > 0) {
    throw new Error(`MISSING TOOLS, this cannot run: ${missing.join(', ')}. Run scripts/install-deps.sh.`);
  }
}
