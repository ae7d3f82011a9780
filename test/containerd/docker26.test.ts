/**
 * Docker 26 on the containerd image store with slacker as its storage driver (a containerd
 * proxy snapshotter): import, run, a container's writes, commit, save, rmi, and containerd's
 * garbage collection removing the layers nobody uses any more.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../common/exec.js';
import { startDockerd26, startSlackerContainerd, type SlackerContainerd } from '../../harness/containerd.js';
import type { Dockerd } from '../../harness/dockerd.js';
import { busyboxRootfs, imageArchive, importRootfs } from '../../harness/images.js';
import { markerTar } from '../../layers/layer-tar/marker.js';
import type { Digest } from '../../common/digests.js';
import { writeFile } from 'node:fs/promises';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';
import { dropCaches, logLines, WORKLOAD, workloadHealthy, writesGoOn } from '../helpers/restart-workload.js';

const NAME = 'slk26';

/** The top layer of a `docker save` archive: its size, and the names in it (gzip'ed or not). */
async function savedTopLayer(archive: string): Promise<{ size: number; names: string[] }> {
  const manifest = JSON.parse((await run('tar', ['-xOf', archive, 'manifest.json'])).stdout) as { Layers: string[] }[];
  const layer = manifest[0]!.Layers.at(-1)!;
  const listing = (await run('tar', ['-tvf', archive, layer])).stdout.trim().split(/\s+/);
  const names = (
    await run('sh', [
      '-c',
      `tar -xOf '${archive}' '${layer}' | tar -tzf - 2>/dev/null || tar -xOf '${archive}' '${layer}' | tar -tf -`,
    ])
  ).stdout
    .split('\n')
    .map((n) => n.replace(/^\.\//, ''))
    .filter(Boolean);
  return { size: Number(listing[2]), names };
}

describe('Docker 26 with the slacker snapshotter (containerd image store)', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let docker: Dockerd;
  let host: SlackerContainerd;

  /** Layers the snapshotter holds now (its volumes, the ext4 template aside). */
  const layers = async (): Promise<string[]> => {
    const out = await run(process.execPath, [
      join(import.meta.dirname, '../../dist/cli/main.js'),
      'volume',
      'ls',
      '--root',
      join(host.snap.root, 'volumes'),
    ]);
    return out.stdout
      .split('\n')
      .map((l) => l.split('\t')[0]!)
      .filter((id) => id.startsWith('ctrd-'));
  };

  beforeAll(async () => {
    requireRoot();
    await requireTools('nbdfuse', 'losetup', 'mkfs.ext4', 'runc', 'busybox-static');
    dir = await tempDir('slacker-docker26-');
    host = await startSlackerContainerd(dir.path, { name: NAME, size: '256M' });
    docker = await startDockerd26(join(dir.path, 'docker'), { containerd: host.containerd, snapshotter: NAME });
  }, 180_000);

  afterAll(async () => {
    await docker?.stop();
    const left = (await host?.stop()) ?? [];
    if (dir) await run('rm', ['-rf', dir.path]);
    expect(left).toEqual([]);
  }, 180_000);

  it('reports slacker as its storage driver, a containerd snapshotter', async () => {
    const info = (await docker.docker(['info'])).stdout;
    expect(info).toContain(`Storage Driver: ${NAME}`);
    expect(info).toContain('driver-type: io.containerd.snapshotter.v1');
  });

  it('imports, runs, commits a container that wrote 16 MiB, saves, and removes: GC leaves no layer', async () => {
    const rootfs = await busyboxRootfs(join(dir.path, 'rootfs'));
    await importRootfs(docker, rootfs, 'bb:1');
    const hello = await docker.docker(['run', '--rm', '--network', 'none', 'bb:1', 'sh', '-c', 'cat /etc/motd']);
    expect(hello.stdout).toBe('slacker-ts test image\n');
    await docker.docker([
      'run',
      '--name',
      'c1',
      '--network',
      'none',
      'bb:1',
      'sh',
      '-c',
      'test -f /.dockerenv && head -c 16777216 /dev/urandom > /data; sha256sum /data > /data.sum',
    ]);
    // The init files the engine wrote (into a directory: containerd/snapshotter.ts) are the
    // container's, and `docker diff` counts them as its init snapshot's, as on overlayfs.
    const diff = (await docker.docker(['diff', 'c1'])).stdout.trim().split('\n');
    expect(diff.filter((l) => l.startsWith('A ')).sort()).toEqual(['A /data', 'A /data.sum']);
    await docker.docker(['commit', 'c1', 'bb:2']);
    const check = await docker.docker([
      'run',
      '--rm',
      '--network',
      'none',
      'bb:2',
      'sh',
      '-c',
      'sha256sum -c /data.sum',
    ]);
    expect(check.stdout).toContain('/data: OK');
    await docker.docker(['save', '-o', join(dir.path, 'bb2.tar'), 'bb:2']);
    // The commit's layer is a marker (our differ published the container's layer), whatever the
    // container wrote: a few hundred bytes in the image, the 16 MiB in the backing store.
    const top = await savedTopLayer(join(dir.path, 'bb2.tar'));
    console.info(`docker commit of a container that wrote 16 MiB: a layer of ${top.size} bytes`);
    expect(top.size).toBeLessThan(64 * 1024);
    expect(top.names.some((n) => n.startsWith('.slacker/sha256:'))).toBe(true);
    expect((await layers()).length).toBeGreaterThan(0);

    await docker.docker(['rm', 'c1']);
    await docker.docker(['rmi', 'bb:2', 'bb:1']);
    // containerd's garbage collector removes the backend snapshots it no longer references.
    await expect.poll(layers, { timeout: 30_000, interval: 500 }).toEqual([]);
  });

  it.each(['SIGTERM', 'SIGKILL'] as const)(
    'the slacker daemon ended by %s and started again while containerd and dockerd run: images, stopped containers and new ones work',
    async (signal) => {
      const rootfs = await busyboxRootfs(join(dir.path, `rootfs-${signal}`));
      await importRootfs(docker, rootfs, `r:${signal}`);
      await docker.docker([
        'run',
        '--name',
        `kept-${signal}`,
        '--network',
        'none',
        `r:${signal}`,
        'sh',
        '-c',
        'echo kept > /k',
      ]);
      await host.restartSnapshotter(signal);
      // A stopped container's snapshot is attached again when containerd asks for its mounts.
      await docker.docker(['start', '-a', `kept-${signal}`]);
      const again = await docker.docker(['run', '--rm', '--network', 'none', `r:${signal}`, 'cat', '/etc/motd']);
      expect(again.stdout).toBe('slacker-ts test image\n');
      await docker.docker(['commit', `kept-${signal}`, `r2:${signal}`]);
      const kept = await docker.docker(['run', '--rm', '--network', 'none', `r2:${signal}`, 'cat', '/k']);
      expect(kept.stdout).toBe('kept\n');
      await docker.docker(['rm', `kept-${signal}`]);
      await docker.docker(['rmi', `r2:${signal}`, `r:${signal}`]);
      await expect.poll(layers, { timeout: 30_000, interval: 500 }).toEqual([]);
    },
    120_000,
  );

  it('restarts under a running container (SIGKILL, SIGTERM): its I/O goes on intact, Docker needs no restart', async () => {
    const rootfs = await busyboxRootfs(join(dir.path, 'rootfs-busy'));
    await importRootfs(docker, rootfs, 'busy:1');
    await docker.docker(['run', '-d', '--name', 'busy', '--network', 'none', 'busy:1', 'sh', '-c', WORKLOAD]);
    let lines = await writesGoOn(docker, 'busy', 0);
    for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
      await host.restartSnapshotter(signal);
      await dropCaches();
      expect(await logLines(docker, 'busy')).toBeGreaterThanOrEqual(lines);
      lines = await writesGoOn(docker, 'busy', lines);
      await workloadHealthy(docker, 'busy');
      const hello = await docker.docker(['run', '--rm', '--network', 'none', 'busy:1', 'cat', '/etc/motd']);
      expect(hello.stdout).toBe('slacker-ts test image\n');
      console.info(`containerd, after ${signal}: the container wrote ${lines} lines so far, every one in place`);
    }
    await docker.docker(['exec', 'busy', 'busybox', 'touch', '/stop']);
    expect((await docker.docker(['wait', 'busy'])).stdout.trim()).toBe('0');
    await docker.docker(['rm', 'busy']);
    await docker.docker(['rmi', 'busy:1']);
    await expect.poll(layers, { timeout: 30_000, interval: 500 }).toEqual([]);
  }, 180_000);

  it('a marker naming a snapshot the store lacks: docker load fails saying so, and leaves no layer', async () => {
    const missing = `sha256:${'7'.repeat(64)}` as Digest;
    const archive = join(dir.path, 'missing.tar');
    await writeFile(archive, await imageArchive([await markerTar(missing)], 'missing:1'));
    const err = await docker.docker(['load', '-i', archive]).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).toContain(`cannot fetch snapshot ${missing}`);
    await expect.poll(layers, { timeout: 30_000, interval: 500 }).toEqual([]);
    // And the next load works.
    const rootfs = await busyboxRootfs(join(dir.path, 'rootfs-after'));
    await importRootfs(docker, rootfs, 'after:1');
    await docker.docker(['rmi', 'after:1']);
  });
});
