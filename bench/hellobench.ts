/**
 * HelloBench, Slacker-style: pull-to-ready of a set of images on a fresh overlay2 worker and a
 * fresh slacker worker, the registry (and slacker's chunk store) behind a rate-limited link.
 *
 *   npm run hellobench -- [--quick] [--link 1gbit|100mbit|unlimited] [--reps 3] [--images a,b] [--json FILE]
 *                         [--build-only]   (build and cache the images, measure nothing)
 *                         [--out DIR]      (where the markdown and SVG go; default docs/results)
 *                         [--readahead N]  (the slacker plugin's sequential readahead, in chunks)
 *                         [--gap-fill KIB] (the slacker plugin's --gap-fill; 0: off)
 *                         [--no-profile]   (convert without a startup profile)
 *                         [--logs DIR]     (keep every slacker plugin's debug log there)
 *                         [--engine graphdriver|containerd]
 *                                          (graphdriver: Docker 20.10, overlay2 against the slacker
 *                                          plugin; containerd: Docker 26 on the containerd image store,
 *                                          its overlayfs snapshotter against slacker's)
 *
 * Writes docs/results/hellobench.md and .svg (hellobench-containerd.* for --engine containerd). Images are built from Debian packages once and
 * cached (bench/hellobench/rootfs.ts).
 */
import { stat } from 'node:fs/promises';
import { requireTools } from '../harness/tools.js';
import type { Dockerd } from '../harness/dockerd.js';
import { deploy, startUntilReady } from './hellobench/deploy.js';
import { IMAGES, QUICK, type ImageSpec } from './hellobench/images.js';
import { median, summarise, writeResults, type Row } from './hellobench/report.js';
import { rootfsTarball } from './hellobench/rootfs.js';
import { startTopology, type Driver, type Engine } from './hellobench/topology.js';
import { onInterrupt } from '../harness/interrupt.js';
import { benchArgs } from './options.js';

const { values: opts } = benchArgs(
  'npm run hellobench --',
  'Pull-to-ready of 12 images, overlay2 against slacker, behind a 1 Gbit/s link (--quick: 3 images).',
  {
    quick: { type: 'boolean', default: false },
    link: { type: 'string', default: '1gbit' },
    reps: { type: 'string' },
    images: { type: 'string' },
    json: { type: 'string' },
    'build-only': { type: 'boolean', default: false },
    out: { type: 'string' },
    readahead: { type: 'string' },
    'gap-fill': { type: 'string' },
    'no-profile': { type: 'boolean', default: false },
    logs: { type: 'string' },
    engine: { type: 'string', default: 'graphdriver' },
  },
);
const engine = opts.engine as Engine;
const reps = Number(opts.reps ?? (opts.quick ? 1 : 3));
const names = opts.images ? opts.images.split(',') : opts.quick ? QUICK : IMAGES.map((i) => i.name);
const specs = names.map((n) => {
  const s = IMAGES.find((i) => i.name === n);
  if (!s) throw new Error(`unknown image ${n} (known: ${IMAGES.map((i) => i.name).join(', ')})`);
  return s;
});
const t0 = Date.now();
const progress = (s: string): void =>
  void process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${s}\n`);

/**
 * Converts with a startup profile: a container of the image runs on the builder until ready
 * (as `slacker-ts convert --profile` documents for users), then is removed.
 */
async function convertProfiled<T>(
  d: Dockerd,
  spec: ImageSpec,
  src: string,
  convert: (profile?: string) => Promise<T>,
): Promise<T> {
  if (opts['no-profile']) return convert();
  const net = spec.hostNetwork ? 'host' : 'none';
  const id = (await d.docker(['create', '--network', net, src])).stdout.trim();
  try {
    await startUntilReady(d, id, spec.ready);
    return await convert(id);
  } finally {
    await d.docker(['rm', '-f', id]).catch(() => undefined);
  }
}

async function main(): Promise<void> {
  await requireTools('dockerd', 'docker-registry', 'debootstrap', 'nbdfuse', 'ip', 'tc', 'busybox-static');
  const tarballs = new Map<string, string>();
  for (const s of specs) tarballs.set(s.name, await rootfsTarball(s, progress));
  if (opts['build-only']) return;

  progress(`starting the topology (link ${opts.link}, engine ${engine})`);
  const topo = await startTopology(opts.link!, 'slacker-hellobench-', {
    pluginArgs: [
      ...(opts.readahead ? ['--readahead', opts.readahead] : []),
      ...(opts['gap-fill'] ? ['--gap-fill', opts['gap-fill']] : []),
    ],
    logsDir: opts.logs,
    engine,
  });
  const stopTopology = onInterrupt(() => topo.close());
  const rows: Row[] = [];
  try {
    const refs = new Map<string, Record<Driver, string> & { push: Record<Driver, number>; bytes: number }>();
    for (const s of specs) {
      const change = ['--change', `CMD ${JSON.stringify(s.cmd)}`];
      const repo = `${topo.registryAddress}/hb/${s.name}`;
      const o = topo.builders.overlay2.dockerd;
      await o.docker(['import', ...change, tarballs.get(s.name)!, `${repo}:overlay2`], { timeoutMs: 900_000 });
      let t = Date.now();
      await o.docker(['push', `${repo}:overlay2`], { timeoutMs: 1_800_000 });
      const pushOverlay = (Date.now() - t) / 1000;
      // The image's size, what "fetched" is a fraction of: its uncompressed layer tar, the same
      // on both engines (Docker 26 on containerd reports the compressed size of the content).
      const bytes = (await stat(tarballs.get(s.name)!)).size;
      const b = topo.builders.slacker;
      await b.dockerd.docker(['import', ...change, tarballs.get(s.name)!, `hb/${s.name}:src`], { timeoutMs: 900_000 });
      t = Date.now();
      const converted = await convertProfiled(b.dockerd, s, `hb/${s.name}:src`, (profile) =>
        b.convert(`hb/${s.name}:src`, `${repo}:slacker`, { profile }),
      );
      const pushSlacker = (Date.now() - t) / 1000;
      refs.set(s.name, {
        overlay2: `${repo}:overlay2`,
        slacker: `${repo}:slacker`,
        push: { overlay2: pushOverlay, slacker: pushSlacker },
        bytes,
      });
      progress(
        `pushed ${s.name} (${(bytes / 1e6).toFixed(0)} MB): overlay2 ${pushOverlay.toFixed(1)} s, slacker ` +
          `${opts['no-profile'] ? '' : `profile (${converted.prefetchChunks} chunks) + `}convert + push ${pushSlacker.toFixed(1)} s`,
      );
    }

    for (let rep = 0; rep < reps; rep++) {
      for (const s of specs) {
        for (const driver of ['overlay2', 'slacker'] as const) {
          const ref = refs.get(s.name)!;
          const worker = await topo.worker(driver);
          const stopWorker = onInterrupt(() => worker.close());
          try {
            const rx0 = await topo.link.receivedBytes();
            const d = await deploy(worker, ref[driver], s.ready, { hostNetwork: s.hostNetwork });
            const linkBytes = (await topo.link.receivedBytes()) - rx0;
            const bytesFetched = await worker.bytesFetched();
            if (driver === 'slacker') {
              // The image is one snapshot: fetching all of it means nothing was lazy.
              const all = await worker.snapshotBytes(ref.slacker);
              if (bytesFetched >= all) {
                throw new Error(
                  `guard rail: slacker fetched all ${all} bytes of ${s.name}'s snapshot: the lazy path did not run`,
                );
              }
            }
            rows.push({
              item: s.name,
              category: s.category,
              driver,
              rep,
              push: ref.push[driver],
              ...d,
              deploy: d.pull + d.create + d.run,
              linkBytes,
              bytesFetched,
              imageBytes: ref.bytes,
            });
            progress(
              `rep ${rep + 1}/${reps} ${s.name} on ${driver}: pull ${d.pull.toFixed(2)} + create ${d.create.toFixed(2)} + run ${d.run.toFixed(2)} s` +
                `, ${(linkBytes / 1e6).toFixed(1)} MB over the link` +
                (driver === 'slacker' ? `, fetched ${(bytesFetched / 1e6).toFixed(1)} MB` : ''),
            );
          } finally {
            await stopWorker();
          }
        }
      }
    }
  } finally {
    await stopTopology();
  }
  const { items, medianSpeedup, medianFetched, medianOverhead, medianCycleSpeedup } = summarise(rows);
  for (const i of items) {
    progress(
      `${i.item.padEnd(10)} overlay2 ${i.deploy.overlay2.toFixed(2)} s, slacker ${i.deploy.slacker.toFixed(2)} s: ${i.speedup.toFixed(2)}×, fetched ${(100 * i.fetchedFraction).toFixed(1)}%, lazy overhead ${i.lazyOverhead.toFixed(2)}, cycle ${i.cycleSpeedup.toFixed(2)}×`,
    );
  }
  progress(
    `median speedup ${medianSpeedup.toFixed(2)}×, median fetched ${(100 * medianFetched).toFixed(1)}%, median lazy overhead ${medianOverhead.toFixed(2)}, median cycle speedup ${medianCycleSpeedup.toFixed(2)}× (deploy medians: ${median(rows.map((r) => r.deploy)).toFixed(2)} s)`,
  );
  const command = `npm run hellobench -- ${process.argv.slice(2).join(' ')}`.trim();
  await writeResults(
    `hellobench${engine === 'containerd' ? '-containerd' : ''}${opts.quick ? '-quick' : ''}`,
    engine === 'containerd' ? 'HelloBench (Docker 26, containerd image store)' : 'HelloBench',
    command,
    `Link ${opts.link} (tbf, its own network namespace), ${reps} repetition(s), fresh worker dockerd per deployment (new data root, page cache dropped). 2-core VM. ` +
      (engine === 'containerd'
        ? "Engine: Docker 26.1 on the containerd image store (containerd 1.7, each host its own); 'overlay2' is containerd's overlayfs snapshotter, 'slacker' the slacker-ts snapshotter and differ. "
        : 'Engine: Docker 20.10 (graphdriver). ') +
      (opts['no-profile']
        ? 'Slacker images converted without a startup profile.'
        : 'Slacker images converted with a startup profile (`slacker-ts convert --profile`: a container of the image run to ready on the builder; its time is part of the slacker push).'),
    rows,
    opts.json,
    opts.out,
  );
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
