/**
 * Which chunk size, and whether to compress chunks: measured on a real Debian root file system.
 *
 *   npm run bench:chunks -- [--rootfs DIR]   (default /var/cache/slacker-ts/rootfs-bookworm,
 *                                             made with debootstrap --variant=minbase)
 *
 * For each chunk size, host A puts the rootfs on ext4 in a 1 GiB volume, freezes and publishes
 * it to a dir:// store; host B opens the reference, mounts it read-only through NBD, nbdfuse
 * and loop, and runs a container-start-like workload (`chroot MNT /bin/bash -c 'echo hello'`
 * plus reading /etc/os-release). Reported: chunks and bytes fetched, the workload's time.
 * Then, over the published 256 KiB chunks: compressed size and (de)compression speed with
 * deflate level 1 and brotli quality 1 (what Node ships; zstd needs Node 22.15).
 * Needs root, FUSE, nbdfuse, losetup, mkfs.ext4.
 */
import { readdir, readFile } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { brotliCompressSync, brotliDecompressSync, constants, deflateRawSync, inflateRawSync } from 'node:zlib';
import { run } from '../common/exec.js';
import { withMountedVolume } from '../harness/mounted-volume.js';
import { requireTools } from '../harness/tools.js';
import { NbdServer } from '../nbd-server/server.js';
import { DirStore } from '../stores/dir-store.js';
import { VolumeManager } from '../volumes/manager.js';
import { onInterrupt } from '../harness/interrupt.js';
import { benchArgs } from './options.js';

const { values: opts } = benchArgs(
  'npm run bench:chunks --',
  'Bytes and fetches of a container-start workload per chunk size, and compression over the chunks.',
  { rootfs: { type: 'string', default: '/var/cache/slacker-ts/rootfs-bookworm' } },
);
const SIZES = [64 * 1024, 128 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024];
const MiB = 2 ** 20;

async function main(): Promise<void> {
  await requireTools('nbdfuse', 'losetup', 'mkfs.ext4', 'fusermount3');
  const rootfs = opts.rootfs!;
  await readdir(rootfs).catch(() => {
    throw new Error(
      `no rootfs at ${rootfs}: debootstrap --variant=minbase bookworm ${rootfs} http://deb.debian.org/debian`,
    );
  });
  const rootfsBytes = Number((await run('du', ['-sb', rootfs])).stdout.split('\t')[0]);
  const work = await mkdtemp(join(tmpdir(), 'slacker-chunks-'));
  const server = new NbdServer();
  const stop = onInterrupt(async () => {
    await server.close();
    await rm(work, { recursive: true, force: true });
  });
  await server.listen(`unix://${join(work, 'nbd.sock')}`);
  const mount = <T>(manager: VolumeManager, readOnly: boolean, fn: (mnt: string) => Promise<T>): Promise<T> =>
    withMountedVolume({ server, manager, id: 'img', workDir: work, readOnly, mkfs: !readOnly }, fn);
  try {
    console.log(`rootfs ${rootfs}: ${(rootfsBytes / MiB).toFixed(0)} MiB\n`);
    console.log(
      '| chunk size | chunks in image | image data | fetched for the workload | fetches | workload time (cold) |',
    );
    console.log('|---:|---:|---:|---:|---:|---:|');
    for (const chunkSize of SIZES) {
      const store = new DirStore(join(work, `store-${chunkSize}`));
      const a = await VolumeManager.open(join(work, `a-${chunkSize}`), { store });
      await a.create('img', 1024 * MiB, { chunkSize });
      await mount(a, false, async (mnt) => {
        await run('sh', ['-c', `tar -C '${rootfs}' -cf - . | tar -C '${mnt}' -xf -`], { timeoutMs: 600_000 });
      });
      await a.freeze('img');
      const ref = await a.publish('img');
      const stats = a.stats('img');
      await a.close();

      const b = await VolumeManager.open(join(work, `b-${chunkSize}`), { store, readahead: 0 });
      await b.openSnapshot(ref, 'img');
      const t0 = performance.now();
      await mount(b, true, async (mnt) => {
        const { stdout } = await run('chroot', [mnt, '/bin/bash', '-c', 'echo hello; cat /etc/os-release > /dev/null']);
        if (stdout.trim() !== 'hello') throw new Error(`workload printed ${stdout}`);
      });
      const ms = performance.now() - t0;
      const f = b.stats('img').fetch;
      await b.close();
      console.log(
        `| ${chunkSize / 1024} KiB | ${stats.chunks} | ${((stats.chunks * chunkSize) / MiB).toFixed(0)} MiB | ${(f.bytesFetched / MiB).toFixed(1)} MiB | ${f.chunksFetched} | ${ms.toFixed(0)} ms |`,
      );
    }

    // Compression over the 256 KiB chunks of the published image.
    const dir = join(work, `store-${256 * 1024}`, 'chunks');
    const files = (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile());
    const chunks = await Promise.all(files.map((e) => readFile(join(e.parentPath, e.name))));
    const total = chunks.reduce((s, c) => s + c.length, 0);
    console.log(`\ncompression over ${chunks.length} chunks of 256 KiB (${(total / MiB).toFixed(0)} MiB):\n`);
    console.log('| codec | compressed / original | compress MiB/s | decompress MiB/s |\n|---|---:|---:|---:|');
    const codecs: [string, (b: Buffer) => Buffer, (b: Buffer) => Buffer][] = [
      ['deflate level 1', (b) => deflateRawSync(b, { level: 1 }), inflateRawSync],
      [
        'brotli quality 1',
        (b) => brotliCompressSync(b, { params: { [constants.BROTLI_PARAM_QUALITY]: 1 } }),
        (b) => brotliDecompressSync(b),
      ],
    ];
    for (const [name, compress, decompress] of codecs) {
      let t = performance.now();
      const packed = chunks.map(compress);
      const cms = performance.now() - t;
      t = performance.now();
      for (const p of packed) decompress(p);
      const dms = performance.now() - t;
      const size = packed.reduce((s, c) => s + c.length, 0);
      console.log(
        `| ${name} | ${(size / total).toFixed(2)} | ${(total / MiB / (cms / 1000)).toFixed(0)} | ${(total / MiB / (dms / 1000)).toFixed(0)} |`,
      );
    }
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
