/**
 * Tiny images without a registry to pull from: a busybox rootfs (Debian's static busybox), and
 * `docker load` archives made from hand-written layer tars (for layers dockerd would never
 * make, such as malicious ones).
 */
import { copyFile, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../common/exec.js';

const BUSYBOX = '/bin/busybox';
const APPLETS = ['sh', 'echo', 'cat', 'ls', 'sleep', 'rm', 'mkdir', 'wc', 'sha256sum', 'head', 'true', 'sync'];

/** A rootfs with a static busybox and a few applet links, in `dir`. */
export async function busyboxRootfs(dir: string): Promise<string> {
  await mkdir(join(dir, 'bin'), { recursive: true });
  await mkdir(join(dir, 'etc'), { recursive: true });
  await mkdir(join(dir, 'tmp'), { recursive: true });
  await copyFile(BUSYBOX, join(dir, 'bin', 'busybox'));
  for (const a of APPLETS) await symlink('busybox', join(dir, 'bin', a));
  await writeFile(join(dir, 'etc', 'motd'), 'slacker-ts test image\n');
  return dir;
}

/** `docker import` of a root file system directory as image `tag` on a dockerd. */
export async function importRootfs(
  dockerd: { docker(args: string[], options?: { timeoutMs?: number }): Promise<unknown> },
  rootfs: string,
  tag: string,
  options: { cmd?: string[] } = {},
): Promise<void> {
  const tarball = `${rootfs}.tar`;
  await run('tar', ['-C', rootfs, '-cf', tarball, '.']);
  try {
    await dockerd.docker([
      'import',
      ...(options.cmd ? ['--change', `CMD ${JSON.stringify(options.cmd)}`] : []),
      tarball,
      tag,
    ]);
  } finally {
    await rm(tarball, { force: true });
  }
}

/** Layer tars and load archives for tests: the same builders `convert` uses. */
export { imageArchive, tarOf as layerTar, type TarEntry } from '../plugin/image-archive.js';
