/**
 * Tiny images without a registry to pull from: a busybox rootfs (Debian's static busybox), and
 * `docker load` tarballs made from hand-written layer tars (for layers dockerd would never
 * make, such as malicious ones).
 */
import { createHash } from 'node:crypto';
import { copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pack } from 'tar-stream';

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

export interface TarEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  data?: string | Buffer;
  linkname?: string;
  mode?: number;
}

export async function layerTar(entries: TarEntry[]): Promise<Buffer> {
  const p = pack();
  for (const e of entries) {
    const data = e.data === undefined ? undefined : Buffer.from(e.data);
    p.entry(
      {
        name: e.name,
        type: e.type ?? 'file',
        linkname: e.linkname,
        mode: e.mode ?? (e.type === 'directory' ? 0o755 : 0o644),
        mtime: new Date(0),
      },
      data ?? Buffer.alloc(0),
    );
  }
  p.finalize();
  const parts: Buffer[] = [];
  for await (const b of p) parts.push(b as Buffer);
  return Buffer.concat(parts);
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A `docker load` tarball of an image made of the given layer tars, tagged `tag`. */
export async function imageTarball(
  layers: Buffer[],
  tag: string,
  config: Record<string, unknown> = { Cmd: ['/bin/sh'] },
): Promise<Buffer> {
  const cfg = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config,
      rootfs: { type: 'layers', diff_ids: layers.map((l) => `sha256:${sha256(l)}`) },
      history: layers.map(() => ({ created: '1970-01-01T00:00:00Z', created_by: 'slacker-ts harness' })),
    }),
  );
  const cfgName = `${sha256(cfg)}.json`;
  const layerNames = layers.map((l) => `${sha256(l)}/layer.tar`);
  const manifest = Buffer.from(JSON.stringify([{ Config: cfgName, RepoTags: [tag], Layers: layerNames }]));
  return layerTar([
    { name: 'manifest.json', data: manifest },
    { name: cfgName, data: cfg },
    ...layers.flatMap((l, i) => [
      { name: `${sha256(l)}/`, type: 'directory' as const },
      { name: layerNames[i]!, data: l },
    ]),
  ]);
}
