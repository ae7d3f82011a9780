/**
 * What one container costs, on each engine and storage driver: `docker run --rm` of a busybox
 * image (already local) that exits at once, one after another. The lazy path plays no part
 * (nothing is fetched); what is left is each driver's fixed work per container: making the
 * init and the container layer, attaching and mounting them, and undoing it all.
 *
 *   npm run bench:containers -- [--runs 20] [--json FILE] [--out DIR]
 *
 * Anchors, measured in the same run: overlay2 on Docker 20.10 for the graphdriver, containerd's
 * overlayfs snapshotter on Docker 26 for the containerd snapshotter. Writes
 * docs/results/container-cost.md.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startContainerd, startDockerd26, startSlackerContainerd } from '../harness/containerd.js';
import { startDockerd, type Dockerd } from '../harness/dockerd.js';
import { busyboxRootfs, importRootfs } from '../harness/images.js';
import { onInterrupt } from '../harness/interrupt.js';
import { startSlackerHost } from '../harness/plugin.js';
import { median, RESULTS_DIR, spread } from './hellobench/report.js';
import { benchArgs } from './options.js';

const { values: opts } = benchArgs(
  'npm run bench:containers --',
  'docker run --rm cost per container, both engines, slacker against overlay.',
  {
    runs: { type: 'string', default: '20' },
    json: { type: 'string' },
    out: { type: 'string' },
  },
);
const runs = Number(opts.runs);
const now = (): number => Number(process.hrtime.bigint()) / 1e9;

interface Setup {
  name: string;
  engine: string;
  driver: string;
  start(dir: string): Promise<{ dockerd: Dockerd; stop(): Promise<unknown> }>;
}

const SETUPS: Setup[] = [
  {
    name: 'graphdriver/overlay2',
    engine: 'Docker 20.10',
    driver: 'overlay2',
    start: async (dir) => {
      const dockerd = await startDockerd(join(dir, 'docker'), { storageDriver: 'overlay2' });
      return { dockerd, stop: () => dockerd.stop() };
    },
  },
  {
    name: 'graphdriver/slacker',
    engine: 'Docker 20.10',
    driver: 'slacker graphdriver plugin',
    start: async (dir) => {
      const h = await startSlackerHost(dir, { size: '1G' });
      return { dockerd: h.dockerd, stop: () => h.stop() };
    },
  },
  {
    name: 'containerd/overlayfs',
    engine: 'Docker 26.1, containerd 1.7',
    driver: 'overlayfs snapshotter',
    start: async (dir) => {
      const containerd = await startContainerd(join(dir, 'containerd'));
      const dockerd = await startDockerd26(join(dir, 'docker'), { containerd, snapshotter: 'overlayfs' });
      return {
        dockerd,
        stop: async () => {
          await dockerd.stop();
          await containerd.stop();
        },
      };
    },
  },
  {
    name: 'containerd/slacker',
    engine: 'Docker 26.1, containerd 1.7',
    driver: 'slacker snapshotter + differ',
    start: async (dir) => {
      const h = await startSlackerContainerd(dir, { name: 'slacker', size: '1G' });
      const dockerd = await startDockerd26(join(dir, 'docker'), { containerd: h.containerd, snapshotter: 'slacker' });
      return {
        dockerd,
        stop: async () => {
          await dockerd.stop();
          await h.stop();
        },
      };
    },
  },
];

async function measure(setup: Setup, dir: string): Promise<number[]> {
  const host = await setup.start(dir);
  const stop = onInterrupt(() => host.stop());
  try {
    await importRootfs(host.dockerd, await busyboxRootfs(join(dir, 'rootfs')), 'cost:1');
    const once = async (): Promise<number> => {
      const t = now();
      await host.dockerd.docker(['run', '--rm', '--network', 'none', 'cost:1', 'true']);
      return now() - t;
    };
    for (let i = 0; i < 2; i++) await once(); // warm-up: templates, page cache
    const times: number[] = [];
    for (let i = 0; i < runs; i++) times.push(await once());
    return times;
  } finally {
    await stop();
  }
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'slacker-container-cost-'));
  const results: { setup: Setup; times: number[] }[] = [];
  try {
    for (const setup of SETUPS) {
      const times = await measure(setup, join(dir, setup.name.replace('/', '-')));
      results.push({ setup, times });
      process.stderr.write(`${setup.name}: median ${(median(times) * 1000).toFixed(0)} ms (${spread(times)} s)\n`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const med = (name: string): number => median(results.find((r) => r.setup.name === name)!.times);
  const lines = [
    '# What one container costs',
    '',
    `Command: \`npm run bench:containers -- ${process.argv.slice(2).join(' ')}\``.replace(' -- `', '`'),
    '',
    `\`docker run --rm --network none\` of a local busybox image that exits at once, ${runs} times one after another after 2 warm-up runs, on each engine and driver, all in one run. Nothing is fetched: this is each driver's fixed work per container (init and container layers made, attached, mounted, and removed). 2-core VM.`,
    '',
    "| setup | engine | driver | median (ms) | range (s) | against the same engine's overlay |",
    '| --- | --- | --- | ---: | --- | ---: |',
  ];
  for (const r of results) {
    const anchor = r.setup.name.startsWith('graphdriver') ? 'graphdriver/overlay2' : 'containerd/overlayfs';
    lines.push(
      `| ${r.setup.name} | ${r.setup.engine} | ${r.setup.driver} | ${(median(r.times) * 1000).toFixed(0)} | ${spread(r.times)} | ${(median(r.times) / med(anchor)).toFixed(2)}× |`,
    );
  }
  const extra = (m: number, a: number): string => `${((m - a) * 1000).toFixed(0)} ms`;
  lines.push(
    '',
    `Per container, slacker adds ${extra(med('graphdriver/slacker'), med('graphdriver/overlay2'))} to overlay2 on the graphdriver and ${extra(med('containerd/slacker'), med('containerd/overlayfs'))} to overlayfs on containerd; the containerd path costs ${(med('containerd/slacker') / med('graphdriver/slacker')).toFixed(2)}× the graphdriver path (${extra(med('containerd/slacker'), med('graphdriver/slacker'))}).`,
    '',
  );
  const out = opts.out ?? RESULTS_DIR;
  await mkdir(out, { recursive: true });
  await writeFile(join(out, 'container-cost.md'), lines.join('\n'));
  process.stderr.write(lines.slice(-2).join('\n'));
  if (opts.json) {
    await writeFile(
      opts.json,
      JSON.stringify(
        results.map((r) => ({ setup: r.setup.name, times: r.times })),
        null,
        2,
      ),
    );
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
