/**
 * The main job, end to end on embedded defaults: two slacker hosts (each a throwaway dockerd
 * with its own slacker plugin and state) share a local dir:// store and a local registry.
 *   1. Host A imports a small image, runs a container that writes 64 MiB, commits it: the new
 *      layer is a snapshot published to the store, handed to dockerd as a marker layer.
 *   2. `slacker-ts convert` turns the image into one marker layer and pushes it: the registry
 *      receives a few hundred bytes.
 *   3. Host B pulls it (metadata only) and starts a container that reads one small file; the
 *      chunks it touches are fetched, verified, from the store. The numbers are printed.
 * Everything it starts is stopped and removed, also on failure.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatSize } from '../common/units.js';
import { busyboxRootfs, importRootfs } from '../harness/images.js';
import { onInterrupt } from '../harness/interrupt.js';
import { convertImage, startSlackerHost, type SlackerHost } from '../harness/plugin.js';
import { startRegistry, type TestRegistry } from '../harness/registry.js';
import { requireTools } from '../harness/tools.js';

const DATA = 64 * 2 ** 20;

async function main(): Promise<void> {
  await requireTools('dockerd', 'docker-registry', 'nbdfuse', 'losetup', 'mkfs.ext4', 'busybox-static');
  const dir = await mkdtemp(join(tmpdir(), 'slacker-demo-'));
  const started: (SlackerHost | TestRegistry)[] = [];
  const say = (s: string): void => void process.stdout.write(`${s}\n`);
  const stop = onInterrupt(async () => {
    for (const s of started.reverse()) await ('close' in s ? s.close() : s.stop()).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });
  try {
    const registry = await startRegistry();
    started.push(registry);
    const host = async (label: string): Promise<SlackerHost> => {
      const h = await startSlackerHost(join(dir, label), { store: `dir://${join(dir, 'store')}`, size: '2G' });
      started.push(h);
      say(`host ${label}: dockerd with storage driver ${h.plugin.name} (state in ${join(dir, label)})`);
      return h;
    };
    const a = await host('A');
    const b = await host('B');

    const rootfs = await busyboxRootfs(join(dir, 'rootfs'));
    await importRootfs(a.dockerd, rootfs, 'demo:base');
    await a.dockerd.docker([
      'run',
      '--name',
      'writer',
      '--network',
      'none',
      'demo:base',
      'sh',
      '-c',
      `head -c ${DATA} /dev/urandom > /data.bin; echo 'hello from host A' > /hello.txt`,
    ]);
    await a.dockerd.docker(['commit', '--change', 'CMD ["cat", "/hello.txt"]', 'writer', 'demo:app']);
    await a.dockerd.docker(['rm', 'writer']);
    say(`host A: committed demo:app (busybox + ${formatSize(DATA)} of data) as a marker layer`);

    const image = `127.0.0.1:${registry.port}/demo/app:lazy`;
    const converted = await convertImage(a, 'demo:app', image);
    const { snapshotRef } = converted;
    const manifest = (await (
      await fetch(`http://127.0.0.1:${registry.port}/v2/demo/app/manifests/lazy`, {
        headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' },
      })
    ).json()) as { layers: { size: number }[] };
    say(`host A: converted and pushed ${image}: one layer of ${manifest.layers[0]!.size} bytes (${snapshotRef})`);

    const t0 = Date.now();
    await b.dockerd.docker(['pull', image]);
    const pulled = Date.now() - t0;
    const out = await b.dockerd.docker(['run', '--name', 'reader', '--network', 'none', image]);
    const ready = Date.now() - t0;
    const [c] = JSON.parse((await b.dockerd.docker(['inspect', 'reader'])).stdout) as {
      GraphDriver: { Data: Record<string, string> };
    }[];
    const fetched = Number(c!.GraphDriver.Data.BytesFetched);
    say(`host B: pulled in ${pulled} ms; container printed "${out.stdout.trim()}" ${ready} ms after the pull began`);
    say(
      `host B: fetched ${formatSize(fetched)} from the store for an image of ${formatSize(DATA + 2 ** 21)} ` +
        `(${((100 * fetched) / (DATA + 2 ** 21)).toFixed(1)}%)`,
    );
    await b.dockerd.docker(['rm', 'reader']);
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
