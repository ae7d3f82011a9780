/**
 * Two Docker 26 hosts on the containerd image store, slacker as their snapshotter and differ,
 * sharing a backing store in a real registry (oci://) and pushing images to it. What the
 * registry serves and receives is counted by a proxy in front of it, not by our own counters:
 *   - `docker commit` of a container that wrote 16 MiB, pushed: the commit's layer is a marker
 *     of a few hundred bytes; host B pulls it and reads the 16 MiB back intact.
 *   - an image of ~100 MiB converted on host A (`slacker-ts convert --containerd-socket`):
 *     host B's pull and run make the registry serve a small fraction of it.
 *   - `ctr images pull` + `ctr run --snapshotter` of the converted image on host B.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../common/exec.js';
import { startCountingProxy, type CountingProxy } from '../../harness/counting-proxy.js';
import { startDockerd26, startSlackerContainerd, type SlackerContainerd } from '../../harness/containerd.js';
import type { Dockerd } from '../../harness/dockerd.js';
import { busyboxRootfs, importRootfs } from '../../harness/images.js';
import { cliPath } from '../../harness/plugin.js';
import { startRegistry, type TestRegistry } from '../../harness/registry.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

const NAME = 'slk';
const MiB = 2 ** 20;
const BIG = 96 * MiB;

interface Host {
  slacker: SlackerContainerd;
  docker: Dockerd;
}

describe('two Docker 26 hosts with the slacker snapshotter, one registry', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let registry: TestRegistry;
  let proxy: CountingProxy;
  const hosts: Host[] = [];
  /** An image name on the registry, through the counting proxy. */
  const at = (repo: string): string => `127.0.0.1:${proxy.port}/${repo}`;

  const startHost = async (label: string): Promise<Host> => {
    const slacker = await startSlackerContainerd(join(dir.path, label), {
      name: NAME,
      size: '1G',
      // Chunks through the proxy too: all the host fetches is counted.
      store: `oci://127.0.0.1:${proxy.port}/slacker/store`,
    });
    const docker = await startDockerd26(join(dir.path, label, 'docker'), {
      containerd: slacker.containerd,
      snapshotter: NAME,
    });
    const host = { slacker, docker };
    hosts.push(host);
    return host;
  };

  beforeAll(async () => {
    requireRoot();
    await requireTools('docker-registry', 'nbdfuse', 'losetup', 'mkfs.ext4', 'runc', 'busybox-static');
    dir = await tempDir('slacker-2hosts26-');
    registry = await startRegistry();
    proxy = await startCountingProxy(registry.port);
    const a = await startHost('a');
    await startHost('b');
    const rootfs = await busyboxRootfs(join(dir.path, 'rootfs'));
    await importRootfs(a.docker, rootfs, at('slacker/bb:1'));
    await a.docker.docker(['push', at('slacker/bb:1')]);
  }, 300_000);

  afterAll(async () => {
    const left: string[] = [];
    for (const h of hosts) {
      await h.docker.stop();
      left.push(...(await h.slacker.stop()));
    }
    await proxy?.close();
    await registry?.close();
    if (dir) await run('rm', ['-rf', dir.path]);
    expect(left).toEqual([]);
  }, 180_000);

  it('commit of a container that wrote 16 MiB pushes a marker of a few hundred bytes; B reads it all back', async () => {
    const [a, b] = hosts as [Host, Host];
    await a.docker.docker([
      'run',
      '--name',
      'w16',
      '--network',
      'none',
      at('slacker/bb:1'),
      'sh',
      '-c',
      'head -c 16777216 /dev/urandom > /data; sha256sum /data > /data.sum',
    ]);
    await a.docker.docker(['commit', 'w16', at('slacker/committed:1')]);
    proxy.reset();
    await a.docker.docker(['push', at('slacker/committed:1')]);
    const pushed = proxy.sent;
    console.info(`push of the commit of a container that wrote 16 MiB: ${pushed} bytes sent to the registry`);
    expect(pushed).toBeLessThan(64 * 1024);

    proxy.reset();
    const check = await b.docker.docker([
      'run',
      '--rm',
      '--network',
      'none',
      at('slacker/committed:1'),
      'sh',
      '-c',
      'sha256sum -c /data.sum',
    ]);
    expect(check.stdout).toContain('/data: OK');
    console.info(`host B: pull + run + read of the 16 MiB: the registry served ${proxy.served} bytes`);
    expect(proxy.served).toBeGreaterThan(16 * MiB); // every byte came from the shared store
  });

  it('an image of ~100 MiB converted on A: pull and run on B make the registry serve under 20 MiB', async () => {
    const [a, b] = hosts as [Host, Host];
    await a.docker.docker([
      'run',
      '--name',
      'fill',
      '--network',
      'none',
      at('slacker/bb:1'),
      'sh',
      '-c',
      `head -c ${BIG} /dev/urandom > /big.bin; mkdir -p /srv; echo hello from A > /srv/hello.txt`,
    ]);
    await a.docker.docker(['commit', '--change', 'CMD ["cat", "/srv/hello.txt"]', 'fill', 'big-src:1']);
    const { stdout } = await run(process.execPath, [
      cliPath(),
      'convert',
      'big-src:1',
      at('slacker/big:1'),
      '--push',
      '--containerd-socket',
      a.slacker.snap.socket,
      '--host',
      `unix://${a.docker.socket}`,
      '--docker-bin',
      '/usr/bin/docker',
    ]);
    const converted = JSON.parse(stdout) as { snapshotRef: string; layerBytes: number };
    expect(converted.snapshotRef).toMatch(/^sha256:[0-9a-f]{64}$/);
    const [inspect] = JSON.parse((await a.docker.docker(['image', 'inspect', at('slacker/big:1')])).stdout);
    expect(inspect.RootFS.Layers).toHaveLength(1);
    expect(inspect.Config.Cmd).toEqual(['cat', '/srv/hello.txt']);

    proxy.reset();
    await b.docker.docker(['pull', at('slacker/big:1')]);
    const out = await b.docker.docker(['run', '--rm', '--network', 'none', at('slacker/big:1')]);
    expect(out.stdout.trim()).toBe('hello from A');
    const size = await b.docker.docker([
      'run',
      '--rm',
      '--network',
      'none',
      at('slacker/big:1'),
      'ls',
      '-ln',
      '/big.bin',
    ]);
    expect(Number(size.stdout.trim().split(/\s+/)[4])).toBe(BIG);
    console.info(
      `host B: pull + 2 runs of a ${(BIG / MiB).toFixed(0)} MiB converted image: the registry served ` +
        `${(proxy.served / MiB).toFixed(2)} MiB`,
    );
    expect(proxy.served).toBeLessThan(20 * MiB);

    // The daemon's own report agrees it was lazy (status over the control API).
    const status = await run(process.execPath, [
      cliPath(),
      'status',
      '--containerd-socket',
      b.slacker.snap.socket,
      '--json',
    ]);
    const report = JSON.parse(status.stdout) as { fetch: { bytes: number }; store: { reachable: boolean } };
    expect(report.store).toEqual({ url: expect.stringMatching(/^oci:/), reachable: true });
    expect(report.fetch.bytes).toBeGreaterThan(0);
    expect(report.fetch.bytes).toBeLessThan(20 * MiB);
  });

  it('ctr images pull and ctr run --snapshotter on host B: the same lazy image, without Docker', async () => {
    const b = hosts[1]!;
    const image = at('slacker/big:1');
    proxy.reset();
    await b.slacker.containerd.ctr(['images', 'pull', '--plain-http', '--snapshotter', NAME, image], {
      namespace: 'ctr',
    });
    const out = await b.slacker.containerd.ctr(
      ['run', '--rm', '--snapshotter', NAME, image, `ctr-${Date.now()}`, 'cat', '/srv/hello.txt'],
      { namespace: 'ctr' },
    );
    expect(out.stdout.trim()).toBe('hello from A');
    console.info(`host B: ctr pull + run of the converted image: the registry served ${proxy.served} bytes`);
    expect(proxy.served).toBeLessThan(20 * MiB);
    await b.slacker.containerd.ctr(['images', 'rm', '--sync', image], { namespace: 'ctr' });
  });
});
