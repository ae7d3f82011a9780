/**
 * Running the real tools the tests talk to. Everything is asynchronous: the server under test
 * often runs in this same process and must keep serving while a client tool runs.
 */
import { run } from '../../common/exec.js';

export { CommandError, exitCode, run, startProcess, type RunResult } from '../../common/exec.js';

/** Debian package that provides each tool (what .ci/run installs). */
const PACKAGES: Record<string, string> = {
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
};

/**
 * Fails loudly (never skips) when a tool is missing: CI installs them all, and a test that
 * silently does not run proves nothing.
 */
export async function requireTools(...tools: string[]): Promise<void> {
  const missing: string[] = [];
  for (const t of tools) {
    try {
      await run('sh', ['-c', `command -v ${t}`]);
    } catch {
      missing.push(`${t} (Debian package ${PACKAGES[t] ?? '?'})`);
    }
  }
  if (missing.length > 0) {
    throw new Error(`MISSING TOOLS, this test cannot run: ${missing.join(', ')}. Run .ci/run or apt-get install them.`);
  }
}

export function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new Error('this test needs root (loop devices, mounts): run it as root');
}
