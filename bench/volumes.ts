/**
 * Layer volume benchmarks, each against an anchor measured in the same run.
 *
 *   npm run bench:volumes -- [--size-mib 256] [--reps 3] [--warmup 2] [--link RATE] [--json FILE]
 *
 * --link puts the registry in its own network namespace behind a tbf-limited veth pair
 * (e.g. 1gbit): a realistic link, where bandwidth rather than this machine's two cores bounds
 * the cold read. Without it the registry is on loopback.
 *
 * 1. Clone time of a 1 GiB and a 100 GiB frozen volume (must not grow with size).
 * 2. Cold sequential read of a published volume over NBD (nbdcopy, 4 connections) from the
 *    oci:// store on a local registry, on a "second host" with an empty cache, against a plain
 *    download of the same bytes from the same registry: curl fetching every pack blob, 4 at a
 *    time, each into a local file (the bytes land on this host, as the cold read's chunks do).
 *    curl is the anchor, not Node's own HTTP clients, so the anchor is what a good downloader
 *    gets from this registry. The same download to /dev/null is printed too, for reference.
 * 3. Warm read of the same volume (its chunks now local) against `nbdkit file` serving a raw
 *    image of the same bytes.
 */
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { run, startProcess } from '../common/exec.js';
import { createLink, type Link } from '../harness/link.js';
import { onInterrupt } from '../harness/interrupt.js';
import { processCpuSeconds } from '../harness/process-cpu.js';
import { startRegistry, type TestRegistry } from '../harness/registry.js';
import { requireTools } from '../harness/tools.js';
import { nbdUri } from '../nbd-server/listen-address.js';
import { NbdServer } from '../nbd-server/server.js';
import { OciStore } from '../stores/oci-store.js';
import { VolumeManager } from '../volumes/manager.js';
import { benchArgs } from './options.js';

const { values: opts } = benchArgs(
  'npm run bench:volumes --',
  'Clone time, cold read from a registry against curl, warm read against nbdkit.',
  {
    'size-mib': { type: 'string', default: '256' },
    reps: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '2' },
    link: { type: 'string' },
    json: { type: 'string' },
  },
);
const SIZE = Number(opts['size-mib']) * 2 ** 20;
const REPS = Number(opts.reps);
/**
 * Repetitions run first and not counted: the plugin is a long-lived daemon, and a fresh Node
 * process's first cold reads also pay for V8 compiling their path (~50 functions optimized
 * during the first, ~16-20 from the third on) and for growing its heap. The first one is
 * printed on a row of its own.
 */
const WARMUP = Number(opts.warmup);
const GiB = 2 ** 30;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Runs a command to completion; returns the CPU seconds it used (bash's `times`). */
async function runCounted(cmd: string, args: string[]): Promise<number> {
  const { stdout } = await run('bash', ['-c', '"$@" || exit $?; times', 'bash', cmd, ...args], { timeoutMs: 600_000 });
  const m = /(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/.exec(stdout.trim());
  if (!m) throw new Error(`no CPU times from bash for ${cmd}: ${JSON.stringify(stdout.slice(-200))}`);
  return Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4]);
}

/** CPU seconds used by this process (every thread: the NBD server and the fetches run here). */
function selfCpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

interface Row {
  name: string;
  value: string;
  anchor: string;
  ratio: number;
  target: string;
  /** Every repetition's value and anchor, where they are numbers. */
  samples?: { value: number[]; anchor: number[] };
}

async function main(): Promise<void> {
  await requireTools('docker-registry', 'nbdcopy', 'nbdkit', 'curl');
  const dir = await mkdtemp(join(tmpdir(), 'slacker-benchvol-'));
  let link: Link | undefined;
  let registry: TestRegistry | undefined;
  const stop = onInterrupt(async () => {
    await registry?.close();
    await link?.close();
    await rm(dir, { recursive: true, force: true });
  });
  const rows: Row[] = [];
  try {
    link = opts.link ? await createLink(opts.link) : undefined;
    const reg = (registry = await startRegistry(link ? { netns: { name: link.netns, address: link.nsAddress } } : {}));
    // 1. clone time vs size
    const a = await VolumeManager.open(join(dir, 'a'));
    const cloneTimes: number[] = [];
    for (const [id, size] of [
      ['one', GiB],
      ['hundred', 100 * GiB],
    ] as const) {
      await a.create(id, size);
      const v = await a.acquire(id);
      for (let i = 0; i < 64; i++) await v.pwrite!(Buffer.alloc(4096, i + 1), i * (size / 64), { fua: false });
      await a.release(id);
      await a.freeze(id);
      const t: number[] = [];
      for (let r = 0; r < 20; r++) t.push(await timed(() => a.clone(id, `${id}-c${r}`)));
      cloneTimes.push(median(t) * 1000);
    }
    await a.close();
    rows.push({
      name: 'clone of a frozen volume: 100 GiB vs 1 GiB',
      value: `${cloneTimes[1]!.toFixed(2)} ms`,
      anchor: `${cloneTimes[0]!.toFixed(2)} ms`,
      ratio: cloneTimes[1]! / cloneTimes[0]!,
      target: '≈ 1 (independent of size)',
    });

    // 2. cold read over NBD from the registry vs a plain download
    const url = reg.url('bench/volume');
    const host = await VolumeManager.open(join(dir, 'host'), { store: new OciStore(url) });
    await host.create('img', SIZE);
    const data = Buffer.alloc(SIZE);
    for (let i = 0; i < SIZE; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i); // incompressible-ish, no zero chunks
    const w = await host.acquire('img');
    for (let off = 0; off < SIZE; off += 16 * 2 ** 20)
      await w.pwrite!(data.subarray(off, off + 16 * 2 ** 20), off, { fua: false });
    await host.release('img');
    await host.freeze('img');
    const ref = await host.publish('img');
    await host.close();
    const raw = join(dir, 'raw.img');
    await writeFile(raw, data);

    const packs = (await (
      await fetch(`http://${reg.host}:${reg.port}/v2/bench/volume/manifests/${ref.replace(':', '-')}`, {
        headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
      })
    ).json()) as { layers: { digest: string; size: number }[] };
    const blobUrl = (digest: string) => `http://${reg.host}:${reg.port}/v2/bench/volume/blobs/${digest}`;
    /** curl, 4 transfers at a time, each pack into `to(i)`; returns curl's CPU seconds. */
    const download = (to: (i: number) => string): Promise<number> => {
      const args = ['--silent', '--show-error', '--fail', '--parallel', '--parallel-max', '4'];
      packs.layers.forEach((l, i) => args.push('-o', to(i), blobUrl(l.digest)));
      return runCounted('curl', args);
    };
    /** The registry's CPU seconds so far (NaN if it is not running). */
    const registryCpu = (): number => (reg.pid === undefined ? NaN : processCpuSeconds(reg.pid));
    /** CPU seconds each side of a cold read or a download used (one entry per repetition). */
    const cpu = {
      cold: { self: [] as number[], registry: [] as number[], client: [] as number[] },
      plain: { registry: [] as number[], client: [] as number[] },
    };
    const downloadsDir = join(dir, 'downloads');

    const cold: number[] = [];
    const warm: number[] = [];
    const plain: number[] = [];
    const plainNull: number[] = [];
    const nbdkit: number[] = [];
    // Each side starts right after the other's bytes, just used, were removed, so both write
    // into memory just freed. Here memory left idle for a few seconds is reclaimed (DAMON
    // pageout) and free memory is handed back to the VM's host (virtio-balloon free page
    // reporting); each page of it then faults again on first use, ~2.6 us. The download's files
    // stay until the next cold read for that; this untimed download is the first one's.
    await mkdir(downloadsDir, { recursive: true });
    await download((i) => join(downloadsDir, `pack-${i}`));
    for (let r = 0; r < WARMUP + REPS; r++) {
      await rm(downloadsDir, { recursive: true });
      const b = await VolumeManager.open(join(dir, `b${r}`), { store: new OciStore(url) });
      await b.openSnapshot(ref, 'img');
      const server = new NbdServer();
      server.addExport({ name: 'img', backend: await b.acquire('img') });
      const bound = await server.listen(`unix://${join(dir, `b${r}.sock`)}`);
      const copy = () => runCounted('nbdcopy', ['--connections=4', nbdUri(bound, 'img'), 'null:']);
      await run('sync', []); // no writeback competing for the two cores (same for every side)
      const [self0, registry0] = [selfCpu(), registryCpu()];
      let nbdcopyCpu = 0;
      cold.push(SIZE / 2 ** 20 / (await timed(async () => (nbdcopyCpu = await copy()))));
      cpu.cold.self.push(selfCpu() - self0);
      cpu.cold.registry.push(registryCpu() - registry0);
      cpu.cold.client.push(nbdcopyCpu);
      if (b.stats('img').fetch.bytesFetched < SIZE)
        throw new Error('cold read did not fetch the volume: not a cold read');
      // Let the kernel write back what the cold read cached, so it does not compete with the warm read.
      await run('sync', []);
      warm.push(SIZE / 2 ** 20 / (await timed(copy)));
      await server.close();
      await b.release('img');
      await b.close();
      // This host's state goes before the download, as the download's files go before the next
      // cold read: kept, the cold read measured ~20% slower here (see above), whatever the code.
      await rm(join(dir, `b${r}`), { recursive: true, force: true });
      await run('sync', []); // no writeback competing for the two cores (same for every side)
      await mkdir(downloadsDir, { recursive: true });
      const registry1 = registryCpu();
      let curlCpu = 0;
      plain.push(
        SIZE / 2 ** 20 / (await timed(async () => (curlCpu = await download((i) => join(downloadsDir, `pack-${i}`))))),
      );
      cpu.plain.registry.push(registryCpu() - registry1);
      cpu.plain.client.push(curlCpu);
      const got = await Promise.all(packs.layers.map((_, i) => stat(join(downloadsDir, `pack-${i}`))));
      if (got.some((st, i) => st.size !== packs.layers[i]!.size))
        throw new Error('the plain download is incomplete: a pack file differs in size from its manifest entry');
      await run('sync', []);
    }
    // The references, apart: run between a side's writes and their removal, they left those
    // pages idle long enough to be reclaimed and handed back (see above).
    for (let r = 0; r < WARMUP + REPS; r++) {
      await run('sync', []);
      plainNull.push(SIZE / 2 ** 20 / (await timed(() => download(() => '/dev/null'))));
      const sock = join(dir, `k${r}.sock`);
      const k = startProcess('nbdkit', ['-f', '-U', sock, 'file', raw]);
      const stopNbdkit = onInterrupt(() => k.stop());
      for (let i = 0; i < 100; i++) {
        if (
          await run('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`]).then(
            () => true,
            () => false,
          )
        )
          break;
        await new Promise((res) => setTimeout(res, 50));
      }
      await run('sync', []); // no writeback competing for the two cores (same for every side)
      nbdkit.push(
        SIZE /
          2 ** 20 /
          (await timed(() => run('nbdcopy', ['--connections=4', `nbd+unix:///?socket=${sock}`, 'null:']))),
      );
      await stopNbdkit();
    }
    // The warm-up repetitions' samples go (each side's, CPU too); the very first is kept apart.
    const firstCold = cold[0]!;
    const firstPlain = plain[0]!;
    for (const samples of [
      cold,
      warm,
      plain,
      plainNull,
      nbdkit,
      ...Object.values(cpu.cold),
      ...Object.values(cpu.plain),
    ])
      samples.splice(0, WARMUP);
    rows.push({
      name: `cold sequential read over NBD from oci:// (${SIZE / 2 ** 20} MiB, nbdcopy 4 conns) vs plain download of its packs to local files (curl, 4 at a time)`,
      value: `${median(cold).toFixed(0)} MiB/s`,
      anchor: `${median(plain).toFixed(0)} MiB/s`,
      ratio: median(cold) / median(plain),
      target: '≥ 0.5',
      samples: { value: cold, anchor: plain },
    });
    if (WARMUP > 0)
      rows.push({
        name: 'the same, the first cold read in this process (not counted above: V8 still compiling its path)',
        value: `${firstCold.toFixed(0)} MiB/s`,
        anchor: `${firstPlain.toFixed(0)} MiB/s`,
        ratio: firstCold / firstPlain,
        target: '(none)',
      });
    rows.push({
      name: 'the same cold read vs the same download to /dev/null (reference: nothing stored)',
      value: `${median(cold).toFixed(0)} MiB/s`,
      anchor: `${median(plainNull).toFixed(0)} MiB/s`,
      ratio: median(cold) / median(plainNull),
      target: '(none)',
      samples: { value: cold, anchor: plainNull },
    });
    // Where the time goes: on loopback every process shares the same cores, so CPU per byte decides.
    const sum = (...sides: number[][]) => sides[0]!.map((_, r) => sides.reduce((k, side) => k + side[r]!, 0));
    const coldCpu = sum(cpu.cold.self, cpu.cold.registry, cpu.cold.client);
    const plainCpu = sum(cpu.plain.registry, cpu.plain.client);
    const s = (xs: number[]) => median(xs).toFixed(2);
    rows.push({
      name: 'CPU seconds of the cold read (this process: NBD server and fetches + registry + nbdcopy) vs of the download to files (registry + curl)',
      value: `${s(coldCpu)} s (${s(cpu.cold.self)} + ${s(cpu.cold.registry)} + ${s(cpu.cold.client)})`,
      anchor: `${s(plainCpu)} s (${s(cpu.plain.registry)} + ${s(cpu.plain.client)})`,
      ratio: median(coldCpu) / median(plainCpu),
      target: '(none: the ratio is CPU, lower is cheaper)',
      samples: { value: coldCpu, anchor: plainCpu },
    });
    rows.push({
      name: 'warm read of the same volume vs nbdkit file on a raw image',
      value: `${median(warm).toFixed(0)} MiB/s`,
      anchor: `${median(nbdkit).toFixed(0)} MiB/s`,
      ratio: median(warm) / median(nbdkit),
      target: '≥ 0.5',
      samples: { value: warm, anchor: nbdkit },
    });

    const machine = `${cpus().length} × ${cpus()[0]?.model.trim()}, ${(totalmem() / GiB).toFixed(0)} GiB, Node ${process.version}`;
    const where = link ? `in a network namespace behind a ${link.rate} tbf link` : 'on loopback';
    console.log(
      `Machine: ${machine}. Registry: Debian docker-registry ${where}. Median of ${REPS}, after ${WARMUP} not counted.\n`,
    );
    console.log('| measurement | slacker-ts | anchor | ratio | target |\n|---|---:|---:|---:|---|');
    for (const r of rows) console.log(`| ${r.name} | ${r.value} | ${r.anchor} | ${r.ratio.toFixed(2)} | ${r.target} |`);
    if (opts.json)
      await writeFile(
        opts.json,
        JSON.stringify({ machine, sizeBytes: SIZE, reps: REPS, warmup: WARMUP, rows }, null, 2),
      );
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
