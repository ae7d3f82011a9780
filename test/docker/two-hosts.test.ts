/**
 * Two slacker hosts (two dockerds, two plugins, separate state) sharing one backing store and a
 * real registry: an image converted on host A and pushed is pulled by host B moving only a
 * marker layer, runs there, and reads only a small part of the image. A store that is down
 * during a Get gives dockerd a clear error, and everything works again once it is back.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, stat, utimes, writeFile } from 'node:fs/promises';
import { run } from '../../common/exec.js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busyboxRootfs, imageArchive, importRootfs, layerTar } from '../../harness/images.js';
import { markerTar } from '../../layers/layer-tar/marker.js';
import type { Digest } from '../../common/digests.js';
import { mountsUnder } from '../../attach/host-state.js';
import { callPlugin, convertImage, startSlackerHost, type SlackerHost } from '../../harness/plugin.js';
import { sample, scrape } from '../helpers/metrics.js';
import { retryUntil } from '../../common/retry.js';
import { DEFAULT_CHUNK_SIZE as CHUNK_SIZE } from '../../volumes/types.js';
import { startRegistry, type TestRegistry } from '../../harness/registry.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

const BIG = 32 * 2 ** 20;

describe('two slacker hosts sharing a store and a registry', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let registry: TestRegistry;
  const hosts: SlackerHost[] = [];
  let image: string;

  const startHost = async (label: string): Promise<SlackerHost> => {
    const host = await startSlackerHost(join(dir.path, label), {
      store: `dir://${join(dir.path, 'shared-store')}`,
      size: '1G',
      pluginArgs: ['--fetch-deadline', '2000', '--metrics', `unix://${join(dir.path, `${label}-metrics.sock`)}`],
    });
    hosts.push(host);
    return host;
  };

  beforeAll(async () => {
    requireRoot();
    await requireTools('dockerd', 'docker-registry', 'nbdfuse', 'busybox-static', 'findmnt');
    dir = await tempDir('slacker-2hosts-');
    registry = await startRegistry();
    image = `127.0.0.1:${registry.port}/slacker/big:1`;
    const a = await startHost('a');
    await startHost('b');
    const rootfs = await busyboxRootfs(join(dir.path, 'rootfs'));
    await importRootfs(a.dockerd, rootfs, 'bb:1');
    await a.dockerd.docker([
      'run',
      '--name',
      'fill',
      '--network',
      'none',
      'bb:1',
      'sh',
      '-c',
      `head -c ${BIG} /dev/urandom > /big.bin; mkdir -p /srv; echo hello from A > /srv/hello.txt`,
    ]);
    await a.dockerd.docker([
      'commit',
      '--change',
      'ENV FOO=bar',
      '--change',
      'WORKDIR /srv',
      '--change',
      'LABEL org.example.kind=test',
      '--change',
      'EXPOSE 8080',
      '--change',
      'CMD ["cat", "hello.txt"]',
      'fill',
      'bb:big',
    ]);
  }, 180_000);

  afterAll(async () => {
    for (const h of hosts) await h.stop();
    await registry?.close();
    const mounts = dir ? await mountsUnder(dir.path) : [];
    await dir?.cleanup();
    expect(mounts).toEqual([]);
  }, 120_000);

  it('convert keeps the config and pushes one marker layer of a few KiB', async () => {
    const a = hosts[0]!;
    const converted = await convertImage(a, 'bb:big', image);
    expect(converted.snapshotRef).toMatch(/^sha256:/);
    const [cfg] = JSON.parse((await a.dockerd.docker(['image', 'inspect', image])).stdout);
    expect(cfg.Config.Env).toContain('FOO=bar');
    expect(cfg.Config.WorkingDir).toBe('/srv');
    expect(cfg.Config.Labels).toEqual({ 'org.example.kind': 'test' });
    expect(Object.keys(cfg.Config.ExposedPorts)).toEqual(['8080/tcp']);
    expect(cfg.Config.Cmd).toEqual(['cat', 'hello.txt']);
    expect(cfg.RootFS.Layers).toHaveLength(1);

    const res = await fetch(`http://127.0.0.1:${registry.port}/v2/slacker/big/manifests/1`, {
      headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' },
    });
    const manifest = (await res.json()) as { layers: { size: number }[] };
    expect(manifest.layers).toHaveLength(1);
    console.info(`converted image in the registry: one layer of ${manifest.layers[0]!.size} bytes`);
    expect(manifest.layers[0]!.size).toBeLessThan(16 * 1024);
  });

  it('host B pulls metadata only, runs the image, and fetches a small part of it', async () => {
    const b = hosts[1]!;
    await b.dockerd.docker(['pull', image]);
    const out = await b.dockerd.docker(['run', '--name', 'reader', '--network', 'none', image]);
    expect(out.stdout.trim()).toBe('hello from A');
    const [c] = JSON.parse((await b.dockerd.docker(['inspect', 'reader'])).stdout);
    const fetched = Number(c.GraphDriver.Data.BytesFetched);
    console.info(`host B: pull + run fetched ${fetched} bytes of a ${BIG + 2 ** 21}-byte image`);
    expect(fetched).toBeGreaterThan(0); // the lazy path really ran
    expect(fetched).toBeLessThan(BIG / 4); // ... and read a small part of a 34 MB image
    const sum = await b.dockerd.docker(['run', '--rm', '--network', 'none', image, 'sh', '-c', 'wc -c < /big.bin']);
    expect(Number(sum.stdout.trim())).toBe(BIG);
    await b.dockerd.docker(['rm', 'reader']);
    // The metrics prove it too, as an operator would check it.
    const m = await scrape(join(dir.path, 'b-metrics.sock'));
    expect(sample(m, 'slacker_chunk_fetched_bytes_total')).toBeGreaterThanOrEqual(fetched);
    expect(sample(m, 'slacker_chunk_fetch_duration_seconds_count')).toBe(sample(m, 'slacker_chunk_fetches_total'));
    expect(sample(m, 'slacker_layer_attaches_total')).toBeGreaterThan(0);
    expect(
      sample(m, 'slacker_requests_total{front_end="graphdriver",method="ApplyDiff",outcome="ok"}'),
    ).toBeGreaterThan(0);
  });

  it('an ordinary layer on a lazily opened one is applied through its NBD export: the base is not copied out', async () => {
    const [a, b] = [hosts[0]!, hosts[1]!];
    // A snapshot B has never read: B opens it lazily, then applies an ordinary layer on top.
    await a.dockerd.docker([
      'run',
      '--name',
      'fill3',
      '--network',
      'none',
      'bb:big',
      'sh',
      '-c',
      'echo three > /three',
    ]);
    await a.dockerd.docker(['commit', 'fill3', 'bb:three']);
    const { snapshotRef } = await convertImage(a, 'bb:three', 'bb:three-converted', { push: false });
    await a.dockerd.docker(['rm', 'fill3']);
    const archive = join(dir.path, 'on-top.tar');
    const onTop = await layerTar([
      { name: 'srv/', type: 'directory' },
      { name: 'srv/extra.txt', data: 'an ordinary layer\n' },
    ]);
    await writeFile(archive, await imageArchive([await markerTar(snapshotRef as Digest), onTop], 'ontop:1'));
    const fetched0 = sample(await scrape(join(dir.path, 'b-metrics.sock')), 'slacker_chunk_fetched_bytes_total');
    await b.dockerd.docker(['load', '-i', archive]);
    const out = await b.dockerd.docker([
      'run',
      '--rm',
      '--network',
      'none',
      'ontop:1',
      'cat',
      '/three',
      '/srv/extra.txt',
    ]);
    expect(out.stdout).toBe('three\nan ordinary layer\n');
    const applied = (await readFile(b.plugin.logFile, 'utf8'))
      .split('\n')
      .filter((l) => l.includes('"msg":"layer tar applied"'))
      .map((l) => JSON.parse(l) as { staged: boolean; bytes: number });
    expect(applied.at(-1)).toMatchObject({ staged: false, bytes: 'an ordinary layer\n'.length });
    const fetched =
      sample(await scrape(join(dir.path, 'b-metrics.sock')), 'slacker_chunk_fetched_bytes_total') - fetched0;
    console.info(
      `ordinary layer on a lazy base: load + run fetched ${fetched} bytes of a base of ${BIG + 2 ** 21} bytes`,
    );
    expect(fetched).toBeLessThan(BIG / 4); // the base stayed lazy: not copied out to stage the apply
    await b.dockerd.docker(['rmi', 'ontop:1']);
  });

  it('convert --profile: a third host fetches what the image reads at start during the pull, before it runs', async () => {
    const a = hosts[0]!;
    const profiled = `127.0.0.1:${registry.port}/slacker/big:profiled`;
    const id = (await a.dockerd.docker(['create', '--network', 'none', 'bb:big'])).stdout.trim();
    await a.dockerd.docker(['start', '-a', id]); // runs until ready: here, until it exits
    const converted = await convertImage(a, 'bb:big', profiled, { profile: id });
    await a.dockerd.docker(['rm', id]);
    expect(converted.prefetchChunks).toBeGreaterThan(0);
    await expect(convertImage(a, 'bb:big', profiled, { profile: 'no-such-container' })).rejects.toThrow(
      /no-such-container/,
    );

    const c = await startHost('c'); // has read nothing of this image yet
    const fetched = async (): Promise<number> => {
      const s = await callPlugin(c.plugin.socket, 'GraphDriver.Status', {});
      return Number(new Map(s.body.Status as [string, string][]).get('Bytes fetched'));
    };
    await c.dockerd.docker(['pull', profiled]);
    // The profile is fetched in the background after the pull: wait until that settles.
    let atPull = -1;
    await retryUntil(
      'the startup profile to be fetched',
      async () => {
        const now = await fetched();
        if (now === 0 || now !== atPull) {
          atPull = now;
          throw new Error('still fetching');
        }
      },
      { delayMs: 200 },
    );
    expect(atPull).toBeGreaterThanOrEqual(CHUNK_SIZE);
    const out = await c.dockerd.docker(['run', '--name', 'profiled', '--network', 'none', profiled]);
    expect(out.stdout.trim()).toBe('hello from A');
    const [ctr] = JSON.parse((await c.dockerd.docker(['inspect', 'profiled'])).stdout);
    const byRun = Number(ctr.GraphDriver.Data.BytesFetched);
    console.info(
      `profile of ${converted.prefetchChunks} chunks: host C fetched ${atPull} bytes at pull, then ${byRun} while running`,
    );
    expect(byRun).toBeLessThan(atPull / 4); // what it read at start was there already
    await c.dockerd.docker(['rm', 'profiled']);
  });

  it('a store that is down during Get is a clear error; it works again once the store is back', async () => {
    const b = hosts[1]!;
    // A new snapshot B has never read, with nothing listed to fetch at its pull: one layer of its
    // own (a commit's snapshot lists its first container's reads, which hold what a mount reads),
    // so that B's Get must fetch on demand.
    const a = hosts[0]!;
    const second = `127.0.0.1:${registry.port}/slacker/second:1`;
    await a.dockerd.docker([
      'run',
      '--name',
      'fill2',
      '--network',
      'none',
      'bb:1',
      'sh',
      '-c',
      'echo two > /two.txt && head -c 10000000 /dev/urandom > /noise',
    ]);
    const flat = join(dir.path, 'fill2.tar');
    await a.dockerd.docker(['export', '-o', flat, 'fill2']);
    await a.dockerd.docker(['import', flat, 'bb:two']);
    await convertImage(a, 'bb:two', second);
    await b.dockerd.docker(['pull', second]);
    const store = join(dir.path, 'shared-store');
    await rename(store, `${store}.away`);
    let err: string | undefined;
    let down: { store: { reachable: boolean; error?: string } } | undefined;
    try {
      err = await b.dockerd
        .docker(['run', '--rm', '--network', 'none', second, 'cat', '/two.txt'])
        .then(() => undefined)
        .catch((e: Error) => e.message);
      const cli = join(import.meta.dirname, '../../dist/cli/main.js');
      down = JSON.parse((await run(process.execPath, [cli, 'status', '--socket', b.plugin.socket, '--json'])).stdout);
    } finally {
      await rename(`${store}.away`, store);
    }
    console.info(`store down during Get: ${err?.split('\n').find((l) => l.includes('Error response'))}`);
    expect(err).toBeDefined();
    expect(err).toContain('chunk fetch(es) from the backing store');
    expect(down?.store).toMatchObject({ reachable: false, error: expect.stringContaining('not reachable') });
    const ok = await b.dockerd.docker(['run', '--rm', '--network', 'none', second, 'cat', '/two.txt']);
    expect(ok.stdout.trim()).toBe('two');
  });

  it('slacker-ts gc removes what no snapshot references, and every image still pulls and runs on a fresh host', async () => {
    const store = join(dir.path, 'shared-store');
    const cli = join(import.meta.dirname, '../../dist/cli/main.js');
    // A chunk left by a publish that never finished (written two hours ago), and a fresh one.
    const plant = async (seed: string, ageMs: number): Promise<string> => {
      const data = Buffer.from(`orphan chunk ${seed}`.repeat(1000));
      const hex = createHash('sha256').update(data).digest('hex');
      const path = join(store, 'chunks', hex.slice(0, 2), hex.slice(2));
      await mkdir(join(path, '..'), { recursive: true });
      await writeFile(path, data);
      const t = new Date(Date.now() - ageMs);
      await utimes(path, t, t);
      return path;
    };
    const old = await plant('old', 2 * 3600_000);
    const young = await plant('young', 0);
    const gc = async (...args: string[]) =>
      JSON.parse((await run(process.execPath, [cli, 'gc', '--store', `dir://${store}`, '--json', ...args])).stdout) as {
        snapshots: number;
        removed: { chunks: number };
        young: { chunks: number };
      };
    const dry = await gc('--dry-run');
    expect(dry.snapshots).toBeGreaterThan(0);
    expect(dry.removed.chunks).toBe(1);
    expect(await stat(old).then(() => true)).toBe(true);
    const real = await gc();
    expect(real.removed.chunks).toBe(1);
    expect(real.young.chunks).toBeGreaterThanOrEqual(1);
    await expect(stat(old)).rejects.toThrow();
    expect((await stat(young)).isFile()).toBe(true);
    const text = (await run(process.execPath, [cli, 'gc', '--store', `dir://${store}`, '--dry-run'])).stdout;
    expect(text).toMatch(/snapshots reference \d+ chunks .* would remove 0 unreferenced chunks/);

    // Every image converted so far still pulls and runs where nothing of it is local.
    const d = await startHost('d');
    await d.dockerd.docker(['pull', image]);
    const out = await d.dockerd.docker([
      'run',
      '--rm',
      '--network',
      'none',
      image,
      'sh',
      '-c',
      'cat /srv/hello.txt; wc -c < /big.bin',
    ]);
    expect(out.stdout.split('\n').slice(0, 2)).toEqual(['hello from A', String(BIG)]);
  });
});
