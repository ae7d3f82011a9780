/**
 * MultiMake, Slacker-style: the development cycle of 16 builds of one C program with different
 * settings (4 optimisation levels x 4 feature combinations). Each variant is compiled in a
 * container on the builder, committed as an image, pushed to the registry (behind the
 * rate-limited link), pulled by a worker and run: build + push + pull + run = one cycle,
 * overlay2 against slacker (whose commits are marker layers and whose pulls move metadata).
 *
 *   npm run multimake -- [--quick] [--fresh-worker] [--link 1gbit] [--json FILE] [--out DIR] [--engine graphdriver|containerd] [--logs DIR]
 *                         [--gap-fill KIB] (the slacker plugin's --gap-fill; 0: off)
 *
 * --fresh-worker: every cycle deploys on a new worker (its own dockerd and data root, as a
 * cluster or CI picks any node), so the compiler image is pulled again each time; by default
 * one worker per driver keeps what it pulled, as a developer's machine would. --logs DIR: the
 * slacker daemons' debug logs are copied there (each step's timings: `layer published`, ...).
 *
 * Writes docs/results/multimake.md and .svg (multimake-containerd.* for --engine containerd: Docker
 * 26 on the containerd image store, containerd's overlayfs snapshotter against slacker's). The compiler image is HelloBench's gcc image.
 */
import { writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { requireTools } from '../harness/tools.js';
import { IMAGES } from './hellobench/images.js';
import { median, RESULTS_DIR, svgChart, type Row } from './hellobench/report.js';
import { rootfsTarball } from './hellobench/rootfs.js';
import { startTopology, type Driver, type Engine, type Host } from './hellobench/topology.js';
import { onInterrupt } from '../harness/interrupt.js';
import { benchArgs } from './options.js';

const { values: opts } = benchArgs(
  'npm run multimake --',
  '16 build, push, pull and run development cycles, overlay2 against slacker.',
  {
    quick: { type: 'boolean', default: false },
    link: { type: 'string', default: '1gbit' },
    json: { type: 'string' },
    out: { type: 'string' },
    engine: { type: 'string', default: 'graphdriver' },
    'fresh-worker': { type: 'boolean', default: false },
    'gap-fill': { type: 'string' },
    logs: { type: 'string' },
  },
);
const FRESH = opts['fresh-worker'];
const engine = opts.engine as Engine;

const PROGRAM = `#include <stdio.h>
#include <math.h>
/* A little work, so that optimisation levels differ. */
static double series(int n) { double s = 0; for (int i = 1; i <= n; i++) s += 1.0 / ((double)i * i); return s; }
int main(void) {
#ifdef FEATURE_FAST
  int n = 1000;
#else
  int n = 100000;
#endif
#ifdef FEATURE_VERBOSE
  printf("terms: %d\\n", n);
#endif
  printf("pi ~ %.6f\\n", sqrt(6 * series(n)));
  return 0;
}
`;

interface Variant {
  name: string;
  flags: string;
}

function variants(quick: boolean): Variant[] {
  const out: Variant[] = [];
  for (const o of ['-O0', '-O1', '-O2', '-O3']) {
    for (const f of [[], ['FEATURE_FAST'], ['FEATURE_VERBOSE'], ['FEATURE_FAST', 'FEATURE_VERBOSE']]) {
      if (quick && f.length > 0) continue;
      out.push({
        name: `${o.slice(1)}${f.map((x) => `-${x.slice(8).toLowerCase()}`).join('')}`,
        flags: [o, ...f.map((x) => `-D${x}`)].join(' '),
      });
    }
  }
  return out;
}

const now = (): number => Number(process.hrtime.bigint()) / 1e9;
const t0 = Date.now();
const progress = (s: string): void =>
  void process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${s}\n`);

interface Cycle {
  variant: string;
  driver: Driver;
  build: number;
  /** The build's parts: `docker run` of the compile, `docker commit`, `docker rm`. */
  buildParts: { run: number; commit: number; rm: number };
  push: number;
  pull: number;
  run: number;
  cycle: number;
  linkBytes: number;
}

async function main(): Promise<void> {
  await requireTools('dockerd', 'docker-registry', 'debootstrap', 'nbdfuse', 'ip', 'tc', 'busybox-static');
  const gcc = IMAGES.find((i) => i.name === 'gcc')!;
  const tarball = await rootfsTarball(gcc, progress);
  const topo = await startTopology(opts.link!, 'slacker-multimake-', {
    engine,
    logsDir: opts.logs,
    pluginArgs: opts['gap-fill'] ? ['--gap-fill', opts['gap-fill']] : [],
  });
  const stopTopology = onInterrupt(() => topo.close());
  const cycles: Cycle[] = [];
  try {
    // The compiler image on each builder: overlay2 as imported; slacker converted (one marker layer).
    const base: Record<Driver, string> = {
      overlay2: `${topo.registryAddress}/mm/gcc:overlay2`,
      slacker: `${topo.registryAddress}/mm/gcc:slacker`,
    };
    const o = topo.builders.overlay2.dockerd;
    await o.docker(['import', tarball, base.overlay2], { timeoutMs: 900_000 });
    await o.docker(['push', base.overlay2], { timeoutMs: 1_800_000 });
    const s = topo.builders.slacker;
    await s.dockerd.docker(['import', tarball, 'mm/gcc:src'], { timeoutMs: 900_000 });
    await s.convert('mm/gcc:src', base.slacker);
    progress('compiler images pushed (overlay2 as is, slacker converted)');

    for (const driver of ['overlay2', 'slacker'] as const) {
      const builder: Host = topo.builders[driver];
      // One worker for every variant, or (--fresh-worker) a new one for each.
      let worker = FRESH ? undefined : await topo.worker(driver);
      const stopWorker = onInterrupt(async () => worker?.close());
      try {
        for (const v of variants(opts.quick)) {
          if (FRESH) {
            const old = worker;
            worker = undefined;
            await old?.close();
            worker = await topo.worker(driver);
          }
          const w = worker!;
          const image = `${topo.registryAddress}/mm/prog:${v.name}-${driver}`;
          const ctr = `build-${v.name}-${driver}`;
          let t = now();
          const script = `mkdir -p /src /out && cat > /src/multi.c <<'EOF'\n${PROGRAM}EOF\ngcc ${v.flags} -o /out/prog /src/multi.c -lm`;
          await builder.dockerd.docker(['run', '--name', ctr, '--network', 'none', base[driver], 'sh', '-c', script]);
          const tCommit = now();
          await builder.dockerd.docker(['commit', '--change', 'CMD ["/out/prog"]', ctr, image]);
          const tRm = now();
          await builder.dockerd.docker(['rm', ctr]);
          const build = now() - t;
          const buildParts = { run: tCommit - t, commit: tRm - tCommit, rm: t + build - tRm };
          t = now();
          await builder.dockerd.docker(['push', image], { timeoutMs: 1_800_000 });
          const push = now() - t;
          const rx0 = await topo.link.receivedBytes();
          t = now();
          await w.dockerd.docker(['pull', '-q', image], { timeoutMs: 1_800_000 });
          const pull = now() - t;
          t = now();
          const out = await w.dockerd.docker(['run', '--rm', '--network', 'none', image]);
          const runS = now() - t;
          if (!out.stdout.includes('pi ~ 3.14')) throw new Error(`${image} printed ${JSON.stringify(out.stdout)}`);
          const linkBytes = (await topo.link.receivedBytes()) - rx0;
          const c = {
            variant: v.name,
            driver,
            build,
            buildParts,
            push,
            pull,
            run: runS,
            cycle: build + push + pull + runS,
            linkBytes,
          };
          cycles.push(c);
          progress(
            `${driver} ${v.name}: build ${build.toFixed(2)} (run ${buildParts.run.toFixed(2)}, commit ${buildParts.commit.toFixed(2)}, rm ${buildParts.rm.toFixed(2)}) + push ${push.toFixed(2)} + pull ${pull.toFixed(2)} + run ${runS.toFixed(2)} = ${c.cycle.toFixed(2)} s, ${(linkBytes / 1e6).toFixed(1)} MB over the link`,
          );
        }
      } finally {
        await stopWorker();
      }
    }
  } finally {
    await stopTopology();
  }
  const total = (d: Driver) => cycles.filter((c) => c.driver === d).reduce((n, c) => n + c.cycle, 0);
  const med = (d: Driver, k: keyof Cycle) => median(cycles.filter((c) => c.driver === d).map((c) => c[k] as number));
  const speedup = total('overlay2') / total('slacker');
  progress(
    `total cycle: overlay2 ${total('overlay2').toFixed(1)} s, slacker ${total('slacker').toFixed(1)} s: ${speedup.toFixed(2)}×`,
  );

  const command = `npm run multimake -- ${process.argv.slice(2).join(' ')}`.trim();
  const lines = [
    engine === 'containerd' ? '# MultiMake (Docker 26, containerd image store)' : '# MultiMake',
    '',
    `Command: \`${command}\``,
    '',
    `Link ${opts.link} (tbf, its own network namespace); one builder per driver; ` +
      (FRESH
        ? 'a new worker for every cycle (--fresh-worker: each pull starts from nothing, as on a cluster or in CI). '
        : "one fresh worker per driver that keeps what it pulled between variants, as a developer's machine would. ") +
      '2-core VM. ' +
      (engine === 'containerd'
        ? "Engine: Docker 26.1 on the containerd image store (containerd 1.7); 'overlay2' is containerd's overlayfs snapshotter, 'slacker' the slacker-ts snapshotter and differ (its commits publish and write a marker)."
        : 'Engine: Docker 20.10 (graphdriver).'),
    '',
    '| variant | overlay2: build / push / pull / run = cycle (s) | slacker: build / push / pull / run = cycle (s) | over the link MB (overlay2 / slacker) |',
    '| --- | --- | --- | --- |',
  ];
  for (const v of [...new Set(cycles.map((c) => c.variant))]) {
    const cell = (d: Driver) => {
      const c = cycles.find((x) => x.variant === v && x.driver === d)!;
      return `${c.build.toFixed(2)} / ${c.push.toFixed(2)} / ${c.pull.toFixed(2)} / ${c.run.toFixed(2)} = **${c.cycle.toFixed(2)}**`;
    };
    const mb = (d: Driver) => (cycles.find((x) => x.variant === v && x.driver === d)!.linkBytes / 1e6).toFixed(1);
    lines.push(`| ${v} | ${cell('overlay2')} | ${cell('slacker')} | ${mb('overlay2')} / ${mb('slacker')} |`);
  }
  const parts = (d: Driver) => {
    const of = (k: keyof Cycle['buildParts']) =>
      median(cycles.filter((c) => c.driver === d).map((c) => c.buildParts[k])).toFixed(2);
    return `${d} run ${of('run')} / commit ${of('commit')} / rm ${of('rm')} s`;
  };
  lines.push(
    '',
    `Build, median of its parts (\`docker run\` of the compile / \`docker commit\` / \`docker rm\`): ${parts('overlay2')}; ${parts('slacker')}.`,
    '',
    `**Total development cycle: overlay2 ${total('overlay2').toFixed(1)} s, slacker ${total('slacker').toFixed(1)} s: speedup ${speedup.toFixed(2)}×${speedup < 1 ? ' (slacker is slower)' : ''}.** Median cycle: overlay2 ${med('overlay2', 'cycle').toFixed(2)} s, slacker ${med('slacker', 'cycle').toFixed(2)} s.`,
    '',
  );
  const dir = opts.out ?? RESULTS_DIR;
  await mkdir(dir, { recursive: true });
  const name = `multimake${engine === 'containerd' ? '-containerd' : ''}${FRESH ? '-fresh' : ''}${opts.quick ? '-quick' : ''}`;
  await writeFile(join(dir, `${name}.md`), lines.join('\n'));
  const rows: Row[] = cycles.map((c) => ({
    item: c.variant,
    category: 'build',
    driver: c.driver,
    rep: 0,
    push: c.push,
    pull: c.pull,
    create: c.build,
    run: c.run,
    deploy: c.cycle,
    linkBytes: c.linkBytes,
    bytesFetched: 0,
    imageBytes: 1,
  }));
  await writeFile(join(dir, `${name}.svg`), svgChart('MultiMake (development cycle)', rows));
  if (opts.json)
    await writeFile(
      opts.json,
      JSON.stringify({ cycles, total: { overlay2: total('overlay2'), slacker: total('slacker') }, speedup }, null, 2),
    );
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
