/**
 * Issue 18: `slacker-ts convert SRC DST --store URL` from a registry to a registry, no dockerd
 * involved. A three-layer image (busybox, 24 MiB of data, whiteouts and an opaque directory)
 * is pushed to Debian's docker-registry by the test, converted, and pulled and run lazily by a
 * slacker host that fetches a small part of it. Bad input (a corrupt or truncated blob, a diff
 * ID that does not match, a registry that drops the connection mid-layer, an image for another
 * platform, an unsafe tar entry) is a clear error, and leaves neither an image nor a snapshot.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readdir, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../common/exec.js';
import { hexOf, type Digest } from '../../common/digests.js';
import { mountsUnder } from '../../attach/host-state.js';
import { startCountingProxy } from '../../harness/counting-proxy.js';
import { busyboxRootfs, layerTar } from '../../harness/images.js';
import { cliPath, startSlackerHost, type SlackerHost } from '../../harness/plugin.js';
import { pushImage, pushManifestList } from '../../harness/push-image.js';
import { startRegistry, type TestRegistry } from '../../harness/registry.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

const BIG = 24 * 2 ** 20;

describe('convert from a registry to a registry, without dockerd', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let registry: TestRegistry;
  let host: SlackerHost;
  let reg: string;
  let store: string;
  let layers: Buffer[];

  /** The CLI as a user runs it; exit code, stdout, stderr. */
  const convert = async (args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => {
    try {
      const r = await run(process.execPath, [cliPath(), 'convert', ...args, '--store', store], { timeoutMs: 300_000 });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string };
      return { code: 1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
    }
  };
  const snapshotsInStore = async (): Promise<number> =>
    (await readdir(join(dir.path, 'store', 'snapshots'), { recursive: true }).catch(() => [])).filter((n) =>
      n.endsWith('.json'),
    ).length;
  const chunksInStore = async (): Promise<number> =>
    (await readdir(join(dir.path, 'store'), { recursive: true, withFileTypes: true })).filter(
      (e) => e.isFile() && !e.parentPath.includes('snapshots'),
    ).length;
  const tagExists = async (repo: string, tag: string): Promise<boolean> =>
    (
      await fetch(`http://${reg}/v2/${repo}/manifests/${tag}`, {
        method: 'HEAD',
        headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' },
      })
    ).status === 200;
  const blobFile = (digest: Digest): string =>
    join(registry.storage, 'docker/registry/v2/blobs/sha256', hexOf(digest).slice(0, 2), hexOf(digest), 'data');

  /** A failing convert: a clear message, and nothing published or pushed. */
  const refused = async (src: string, dstTag: string, message: RegExp): Promise<string> => {
    const before = await snapshotsInStore();
    const r = await convert([src, `${reg}/bad/out:${dstTag}`]);
    expect(r.code, r.stdout).toBe(1);
    // The CLI's own error line (a crash would print a stack instead), and nothing left behind.
    const line = r.stderr.split('\n').find((l) => l.startsWith('slacker-ts: ') && message.test(l));
    expect(line, r.stderr).toBeDefined();
    expect(await tagExists('bad/out', dstTag)).toBe(false);
    expect(await snapshotsInStore()).toBe(before);
    expect(await mountsUnder(tmpdir()).then((m) => m.filter((t) => t.includes('slacker-convert-')))).toEqual([]);
    expect((await readdir(tmpdir())).filter((n) => n.startsWith('slacker-convert-'))).toEqual([]);
    return line!;
  };

  beforeAll(async () => {
    requireRoot();
    await requireTools('dockerd', 'docker-registry', 'nbdfuse', 'busybox-static', 'mkfs.ext4');
    dir = await tempDir('slacker-regconv-');
    registry = await startRegistry();
    reg = `127.0.0.1:${registry.port}`;
    store = `dir://${join(dir.path, 'store')}`;
    await run('mkdir', ['-p', join(dir.path, 'store')]);
    const rootfs = await busyboxRootfs(join(dir.path, 'rootfs'));
    layers = [
      await tarOfDir(rootfs),
      await layerTar([
        { name: 'data/', type: 'directory' },
        { name: 'data/big.bin', data: randomBytes(BIG) },
        { name: 'data/old.txt', data: 'to be deleted\n' },
        { name: 'keep/', type: 'directory' },
        { name: 'keep/x', data: 'hidden by an opaque directory\n' },
      ]),
      await layerTar([
        { name: 'data/', type: 'directory' },
        { name: 'data/.wh.old.txt' },
        { name: 'keep/', type: 'directory' },
        { name: 'keep/.wh..wh..opq' },
        { name: 'keep/y', data: 'y\n' },
        { name: 'app/', type: 'directory' },
        { name: 'app/hello', data: 'hello from a converted image\n' },
      ]),
    ];
    await pushImage(reg, 'src/app', '1', layers, { config: { Cmd: ['cat', '/app/hello'], Env: ['FOO=bar'] } });
    host = await startSlackerHost(join(dir.path, 'host'), { store, size: '1G' });
  }, 180_000);

  afterAll(async () => {
    await host?.stop();
    await registry?.close();
    await dir?.cleanup();
  }, 120_000);

  it('converts a three-layer image; a slacker host pulls it and runs it lazily', async () => {
    const r = await convert([`${reg}/src/app:1`, `${reg}/slacker/app:1`, '--size', '1G', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as {
      layers: number;
      chunks: number;
      snapshotRef: string;
      tarBytes: number;
      uploaded: number;
      skipped: number;
    };
    console.info(`convert from the registry: ${r.stdout.trim()}`);
    expect(result).toMatchObject({ layers: 3, snapshotRef: expect.stringMatching(/^sha256:/), skipped: 0 });
    expect(result.uploaded).toBe(await chunksInStore()); // an empty store took every chunk
    expect(result.tarBytes).toBe(layers.reduce((n, l) => n + l.length, 0));
    expect(await snapshotsInStore()).toBe(1);

    const manifest = (await (
      await fetch(`http://${reg}/v2/slacker/app/manifests/1`, {
        headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' },
      })
    ).json()) as { layers: { size: number }[] };
    expect(manifest.layers).toHaveLength(1);
    expect(manifest.layers[0]!.size).toBeLessThan(4096);

    const image = `${reg}/slacker/app:1`;
    await host.dockerd.docker(['pull', image]);
    const out = await host.dockerd.docker(['run', '--name', 'conv', '--network', 'none', image]);
    expect(out.stdout).toBe('hello from a converted image\n');
    const [c] = JSON.parse((await host.dockerd.docker(['inspect', 'conv'])).stdout);
    const fetched = Number(c.GraphDriver.Data.BytesFetched);
    console.info(`slacker host: pull + run fetched ${fetched} bytes of an image of ${result.tarBytes} bytes`);
    expect(fetched).toBeGreaterThan(0);
    expect(fetched).toBeLessThan(result.tarBytes / 4);
    // Whiteouts and the opaque directory were applied; the environment is the source's.
    const check = await host.dockerd.docker([
      'run',
      '--rm',
      '--network',
      'none',
      image,
      'sh',
      '-c',
      '[ ! -e /data/old.txt ] && ls /keep && echo $FOO && wc -c < /data/big.bin',
    ]);
    expect(check.stdout.split('\n')).toEqual(['y', 'bar', String(BIG), '']);
    await host.dockerd.docker(['rm', 'conv']);
  }, 300_000);

  it('a summary line by default; converting again stores only what differs', async () => {
    const chunks0 = await chunksInStore();
    const r = await convert([`${reg}/src/app:1`, `${reg}/slacker/app:2`, '--size', '1G']);
    expect(r.code, r.stderr).toBe(0);
    const summary =
      /slacker\/app:2: 3 layers of .* as snapshot sha256:[0-9a-f]{64} \(\d+ chunks in the store: (\d+) uploaded, (\d+) already there\)/.exec(
        r.stdout,
      );
    expect(summary, r.stdout).not.toBeNull();
    expect(r.stderr).toMatch(/layer 3\/3: .* applied/);
    expect(r.stderr).toMatch(/published \d+ chunks: \d+ uploaded, \d+ already in the store/);
    // A new snapshot (inode times differ), whose data chunks the store has already.
    expect(await snapshotsInStore()).toBe(2);
    const added = (await chunksInStore()) - chunks0;
    console.info(`converting again added ${added} chunks to the ${chunks0} in the store: ${summary![0]}`);
    expect(added).toBeLessThan(chunks0 / 4);
    // What convert says it uploaded and skipped is what the store got.
    expect(Number(summary![1])).toBe(added);
    expect(Number(summary![2])).toBeGreaterThan(added);
  }, 300_000);

  it('refuses an image for another platform, naming the ones it has', async () => {
    const src = await pushImage(reg, 'bad/arm', 'one', [layers[0]!], { architecture: 'arm64' });
    const size = (
      await stat(
        join(
          registry.storage,
          'docker/registry/v2/blobs/sha256',
          hexOf(src.manifest).slice(0, 2),
          hexOf(src.manifest),
          'data',
        ),
      )
    ).size;
    await pushManifestList(reg, 'bad/arm', 'list', { digest: src.manifest, size }, [
      { os: 'linux', architecture: 'arm64' },
    ]);
    await refused(`${reg}/bad/arm:list`, 'platform', /has no image for linux\/amd64 \(it has: linux\/arm64\)/);
    await refused(`${reg}/bad/arm:one`, 'platform2', /is an image for linux\/arm64, not linux\/amd64/);
  }, 120_000);

  it('refuses a corrupt, a truncated and a mislabelled layer, and a registry that drops the connection', async () => {
    const corrupt = await pushImage(reg, 'bad/corrupt', '1', [layers[0]!, layers[1]!]);
    const f = await open(blobFile(corrupt.layers[1]!), 'r+');
    await f.write(Buffer.from('garbage!'), 0, 8, 4096);
    await f.close();
    await refused(`${reg}/bad/corrupt:1`, 'corrupt', /not a valid gzip stream|is corrupt|unpacks to a tar/);

    const cut = await pushImage(reg, 'bad/truncated', '1', [
      layers[0]!,
      await layerTar([{ name: 'z', data: randomBytes(2 ** 20) }]),
    ]);
    await truncate(blobFile(cut.layers[1]!), 1000);
    await refused(
      `${reg}/bad/truncated:1`,
      'truncated',
      /layer sha256:[0-9a-f]+ (at byte|is corrupt|is not a valid gzip)/,
    );

    const wrong = `sha256:${'1'.repeat(64)}`;
    await pushImage(reg, 'bad/diffid', '1', [layers[0]!], { diffIds: [wrong] });
    await refused(
      `${reg}/bad/diffid:1`,
      'diffid',
      /unpacks to a tar with digest sha256:[0-9a-f]+, but the image config says/,
    );

    await pushImage(reg, 'bad/drop', '1', [layers[0]!, layers[1]!]);
    const proxy = await startCountingProxy(registry.port, '127.0.0.1', { cutAfter: 4 * 2 ** 20 });
    try {
      const line = await refused(
        `127.0.0.1:${proxy.port}/bad/drop:1`,
        'drop',
        /reading layer sha256:[0-9a-f]+ at byte \d+/,
      );
      console.info(`registry gone mid-layer: ${line}`);
    } finally {
      await proxy.close();
    }
  }, 300_000);

  it('refuses a layer with an unsafe entry, naming it; nothing outside the layer is touched', async () => {
    const evil = await layerTar([
      { name: 'etc/', type: 'directory' },
      { name: 'etc/link', type: 'symlink', linkname: '../../../../tmp' },
    ]);
    await pushImage(reg, 'bad/unsafe', '1', [layers[0]!, evil]);
    await refused(`${reg}/bad/unsafe:1`, 'unsafe', /etc\/link/);
  }, 120_000);

  it('says clearly that a startup profile needs dockerd', async () => {
    const r = await convert([`${reg}/src/app:1`, `${reg}/slacker/app:3`, '--profile-cmd', 'true']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/startup profile cannot be recorded without dockerd/);
  });
});

/** `tar -C DIR -cf - .` as a buffer (a base layer as Docker would push it). */
async function tarOfDir(dir: string): Promise<Buffer> {
  const p = spawn('tar', ['-C', dir, '-cf', '-', '.']);
  const parts: Buffer[] = [];
  for await (const b of p.stdout) parts.push(b as Buffer);
  return Buffer.concat(parts);
}
