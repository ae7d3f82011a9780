/**
 * Root file systems of the HelloBench images, built once and cached as tarballs under
 * /var/cache/slacker-ts/hellobench (keyed by a hash of the image spec, so a changed spec is
 * rebuilt and an unchanged one never is). Debian images are a debootstrap minbase plus
 * `apt-get install` in a chroot; busybox is Debian's static busybox alone.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { run } from '../../common/exec.js';
import { busyboxRootfs } from '../../harness/images.js';
import type { ImageSpec } from './images.js';

export const CACHE = '/var/cache/slacker-ts/hellobench';
const MIRROR = 'http://deb.debian.org/debian';

function key(spec: ImageSpec): string {
  const { name, base, packages, files } = spec;
  return createHash('sha256').update(JSON.stringify({ name, base, packages, files })).digest('hex').slice(0, 12);
}

/** The debootstrap minbase every Debian image starts from (made once). */
async function debianBase(log: (s: string) => void): Promise<string> {
  const dir = join(CACHE, 'debian-minbase');
  if (existsSync(join(dir, 'usr/bin/apt-get'))) return dir;
  log('debootstrap --variant=minbase bookworm (once, about a minute)');
  await rm(`${dir}.tmp`, { recursive: true, force: true });
  await mkdir(CACHE, { recursive: true });
  await run('debootstrap', ['--variant=minbase', 'bookworm', `${dir}.tmp`, MIRROR], { timeoutMs: 900_000 });
  await rename(`${dir}.tmp`, dir);
  return dir;
}

/** Path of the image's rootfs tarball, building it if it is not cached. */
export async function rootfsTarball(spec: ImageSpec, log: (s: string) => void): Promise<string> {
  const tarball = join(CACHE, `${spec.name}-${key(spec)}.tar`);
  if (existsSync(tarball)) return tarball;
  await mkdir(CACHE, { recursive: true });
  const work = await mkdtemp(join(CACHE, `build-${spec.name}-`));
  const root = join(work, 'rootfs');
  const mounted: string[] = [];
  try {
    log(`building ${spec.name} (cached afterwards)`);
    if (spec.base === 'busybox') {
      await busyboxRootfs(root);
    } else {
      await run('cp', ['-a', await debianBase(log), root]);
      if (spec.packages?.length) {
        // Daemons must not start inside the chroot; /proc and /dev for postinst scripts.
        await writeFile(join(root, 'usr/sbin/policy-rc.d'), '#!/bin/sh\nexit 101\n');
        await chmod(join(root, 'usr/sbin/policy-rc.d'), 0o755);
        for (const fs of ['proc', 'dev']) {
          await run('mount', ['--bind', `/${fs}`, join(root, fs)]);
          mounted.push(join(root, fs));
        }
        const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
        await run('chroot', [root, 'apt-get', 'update', '-qq'], { env, timeoutMs: 600_000 });
        await run('chroot', [root, 'apt-get', 'install', '-y', '-qq', '--no-install-recommends', ...spec.packages], {
          env,
          timeoutMs: 1_800_000,
        });
        await run('chroot', [root, 'apt-get', 'clean'], { env });
        await rm(join(root, 'usr/sbin/policy-rc.d'));
        await rm(join(root, 'var/lib/apt/lists'), { recursive: true, force: true });
      }
    }
    for (const [path, content] of Object.entries(spec.files ?? {})) {
      await mkdir(dirname(join(root, path)), { recursive: true });
      // Replace, never write through: a packaged symlink here points into the host's /etc.
      await rm(join(root, path), { force: true });
      await writeFile(join(root, path), content);
    }
    for (const m of mounted.splice(0).reverse()) await run('umount', [m]);
    await run('tar', ['-C', root, '-cf', `${tarball}.tmp`, '.']);
    await rename(`${tarball}.tmp`, tarball);
    return tarball;
  } finally {
    for (const m of mounted.reverse()) await run('umount', ['-l', m]).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}
