/**
 * ApplyDiff cost on the same dockerd, slacker against overlay2 (the anchor), in one run:
 *   - `docker import` of HelloBench's postgres root file system (one ~480 MB layer tar);
 *   - `docker pull` of an ordinary four-layer image (~450 MB: a Debian base, a root file system
 *     ADDed on top, deletions with whiteouts, 64 MiB of random data) from a local registry, and
 *     `slacker-ts convert` of it from that registry to that registry (no dockerd) against the pull;
 *   - `docker import` of layer tars that stress the per-entry path (many small files, a deep
 *     tree), the cases of issue 22.
 * The page cache is dropped before each timed run (the tar, the registry's blobs and earlier
 * layers come from disk, as on a host that has not just made them). Each case runs --reps
 * times per driver, alternating drivers; the image is removed between runs. Prints medians,
 * ranges and the ratio slacker / overlay2.
 *
 *   npm run bench:apply -- [--reps 3] [--files 100000] [--depth 1500] [--only large] [--json FILE]
 *                          [--engine graphdriver|containerd] [--differ slacker|walking]
 *
 * `--engine containerd` runs Docker 26 on the containerd image store: containerd's overlayfs
 * snapshotter is the anchor; slacker's snapshotter gets its layers from containerd's walking
 * differ, through NBD (`--differ walking` leaves slacker's differ out of containerd's config).
 *
 * The deep tree stays at a depth overlay2 can apply (its mkdir fails past PATH_MAX, about
 * 2,000 one-letter levels under its data root); a row for slacker alone at 10,000 levels follows.
 */
import { copyFile, mkdir, stat, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { run } from '../common/exec.js';
import { startDockerd, type Dockerd } from '../harness/dockerd.js';
import { onInterrupt } from '../harness/interrupt.js';
import { cliPath, startPlugin } from '../harness/plugin.js';
import { startContainerd, startDockerd26, startSlackerContainerd } from '../harness/containerd.js';
import { nestedDirs, rawTar, type RawEntry } from '../harness/raw-tar.js';
import { requireTools } from '../harness/tools.js';
import { median, spread } from './hellobench/report.js';
import { IMAGES, type ImageSpec } from './hellobench/images.js';
import { rootfsTarball } from './hellobench/rootfs.js';
import { startRegistry, type TestRegistry } from '../harness/registry.js';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { benchArgs } from './options.js';

const { values: opts } = benchArgs(
  'npm run bench:apply --',
  'ApplyDiff against overlay2 on the same dockerd: a 483 MB import, a four-layer pull, 100,000 small files, a deep tree.',
  {
    reps: { type: 'string', default: '3' },
    files: { type: 'string', default: '100000' },
    depth: { type: 'string', default: '1500' },
    json: { type: 'string' },
    /** `large`: only the postgres import and the multi-layer pull. */
    only: { type: 'string' },
    /** Keep a copy of the plugin's (or snapshotter's) log here (removed with the run's directory otherwise). */
    'plugin-log': { type: 'string' },
    /** `graphdriver` (Docker 20.10) or `containerd` (Docker 26, containerd image store). */
    engine: { type: 'string', default: 'graphdriver' },
    /** With --engine containerd: `walking` leaves slacker's differ out of containerd's config. */
    differ: { type: 'string', default: 'slacker' },
  },
);
const REPS = Number(opts.reps);

function manyFiles(n: number): RawEntry[] {
  const entries: RawEntry[] = [];
  for (let d = 0; d * 1000 < n; d++) {
    entries.push({ name: `many/d${d}/`, type: 'directory' });
    for (let i = d * 1000; i < Math.min(n, (d + 1) * 1000); i++) entries.push({ name: `many/d${d}/f${i}` });
  }
  return entries;
}

async function dropCaches(): Promise<void> {
  await run('sh', ['-c', 'sync && echo 3 > /proc/sys/vm/drop_caches']);
}

async function timedImport(d: Dockerd, file: string, tag: string): Promise<number> {
  await dropCaches();
  const t0 = process.hrtime.bigint();
  await d.docker(['import', file, tag], { timeoutMs: 1_800_000 });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  await d.docker(['rmi', tag]);
  return s;
}

async function timedPull(d: Dockerd, image: string): Promise<number> {
  await dropCaches();
  const t0 = process.hrtime.bigint();
  await d.docker(['pull', '-q', image], { timeoutMs: 1_800_000 });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  await d.docker(['rmi', image]);
  return s;
}

/**
 * An ordinary multi-layer image built on `d` and pushed to `registry`: the Debian root file
 * system, python3's ADDed under /opt/py (167 MB), a layer that deletes (whiteouts, and an
 * opaque directory from a removed-then-recreated one) and 64 MiB of random bytes.
 */
async function multiLayerImage(d: Dockerd, dir: string, registry: TestRegistry): Promise<string> {
  const log = (m: string): void => console.error(m);
  const byName = (n: string): ImageSpec => IMAGES.find((i) => i.name === n)!;
  const ctx = join(dir, 'build');
  await mkdir(ctx, { recursive: true });
  await copyFile(await rootfsTarball(byName('python3'), log), join(ctx, 'py.tar'));
  await d.docker(['import', await rootfsTarball(byName('debian'), log), 'bench-base:1'], { timeoutMs: 600_000 });
  await writeFile(
    join(ctx, 'Dockerfile'),
    [
      'FROM bench-base:1',
      'ADD py.tar /opt/py/',
      'RUN rm -rf /usr/share/doc /opt/py/usr/share/locale && rm -rf /etc/apt && mkdir /etc/apt && echo x > /etc/apt/new',
      'RUN head -c 67108864 /dev/urandom > /random.bin',
    ].join('\n'),
  );
  const image = `127.0.0.1:${registry.port}/bench/multi:1`;
  await d.docker(['build', '--network', 'none', '-q', '-t', image, ctx], { timeoutMs: 900_000 });
  await d.docker(['push', image], { timeoutMs: 900_000 });
  await d.docker(['rmi', image, 'bench-base:1']);
  // On the containerd image store, content and snapshots outlive rmi while anything (the build
  // cache) references them: without this, the builder host would "pull" from its own cache.
  await d.docker(['system', 'prune', '-af']);
  return image;
}

/** The two hosts of a run, each driver on the same engine, and how to stop them. */
interface Hosts {
  hosts: Record<'overlay2' | 'slacker', Dockerd>;
  /** The slacker side's log (the plugin's or the snapshotter's). */
  logFile: string;
  stop(): Promise<void>;
}

/** Docker 20.10: overlay2 against the slacker graphdriver plugin. */
async function graphdriverHosts(dir: string): Promise<Hosts> {
  const plugin = await startPlugin({ root: join(dir, 'state'), logFile: join(dir, 'plugin.log') });
  const overlay2 = await startDockerd(join(dir, 'overlay'), { storageDriver: 'overlay2' });
  const slacker = await startDockerd(join(dir, 'slacker'), { storageDriver: plugin.name });
  return {
    hosts: { overlay2, slacker },
    logFile: plugin.logFile,
    stop: async () => {
      await slacker.stop();
      await overlay2.stop();
      await plugin.stop();
    },
  };
}

/**
 * Docker 26 on the containerd image store: containerd's overlayfs snapshotter against slacker's
 * snapshotter, with slacker's differ configured (markers, metadata-only commits) or not
 * (`--differ walking`). Ordinary layers are applied by containerd's walking differ either way,
 * through the snapshot's NBD device.
 */
async function containerdHosts(dir: string, differ: boolean): Promise<Hosts> {
  const containerd = await startContainerd(join(dir, 'overlay', 'containerd'));
  const overlay2 = await startDockerd26(join(dir, 'overlay', 'docker'), { containerd, snapshotter: 'overlayfs' });
  const slacker = await startSlackerContainerd(join(dir, 'slacker'), { name: 'slacker', size: '10G', differ });
  const dockerd = await startDockerd26(join(dir, 'slacker', 'docker'), {
    containerd: slacker.containerd,
    snapshotter: 'slacker',
  });
  return {
    hosts: { overlay2, slacker: dockerd },
    logFile: slacker.snap.logFile,
    stop: async () => {
      await dockerd.stop();
      await slacker.stop();
      await overlay2.stop();
      await containerd.stop();
    },
  };
}

async function main(): Promise<void> {
  await requireTools('dockerd', 'nbdfuse', 'losetup', 'mkfs.ext4', 'docker-registry');
  const engine = opts.engine;
  if (engine !== 'graphdriver' && engine !== 'containerd') throw new Error(`unknown --engine ${engine}`);
  const dir = await mkdtemp(join(tmpdir(), 'slacker-bench-apply-'));
  const {
    hosts,
    logFile,
    stop: stopHosts,
  } = engine === 'containerd' ? await containerdHosts(dir, opts.differ !== 'walking') : await graphdriverHosts(dir);
  const registry = await startRegistry();
  const stop = onInterrupt(async () => {
    await stopHosts();
    if (opts['plugin-log']) await copyFile(logFile, opts['plugin-log']);
    await registry.close();
    await run('rm', ['-rf', dir]); // GNU rm: the deep tree is deeper than node:fs removes
  });
  const rows: { case: string; overlay2: number[]; slacker: number[] }[] = [];
  try {
    // A first import on each, not counted: slacker makes its empty ext4 template then.
    const warm = join(dir, 'warm.tar');
    await writeFile(warm, rawTar([{ name: 'warm', data: 'x' }]));
    for (const d of Object.values(hosts)) await timedImport(d, warm, 'warm:1');
    const timed = async (name: string, once: (d: Dockerd) => Promise<number>): Promise<void> => {
      const row = { case: name, overlay2: [] as number[], slacker: [] as number[] };
      for (let rep = 0; rep < REPS; rep++) {
        for (const driver of ['overlay2', 'slacker'] as const) {
          row[driver].push(await once(hosts[driver]));
          console.error(`${name}: ${driver} rep ${rep + 1}: ${row[driver].at(-1)!.toFixed(2)} s`);
        }
      }
      rows.push(row);
    };
    const postgres = await rootfsTarball(
      IMAGES.find((i) => i.name === 'postgres')!,
      (m) => console.error(m),
    );
    const mb = ((await stat(postgres)).size / 1e6).toFixed(0);
    await timed(`postgres root fs, one ${mb} MB layer (import)`, (d) => timedImport(d, postgres, 'bench:1'));
    const multi = await multiLayerImage(hosts.overlay2, dir, registry);
    await timed('four-layer image, 450 MB (pull from a local registry)', (d) => timedPull(d, multi));
    // The same image converted registry to registry by slacker-ts alone (no dockerd), against
    // overlay2's pull of it: what making an ordinary image lazily pullable costs.
    const convertStore = join(dir, 'convert-store');
    await mkdir(convertStore, { recursive: true });
    const converts: number[] = [];
    for (let rep = 0; rep < REPS; rep++) {
      await dropCaches();
      const t0 = process.hrtime.bigint();
      const dst = `127.0.0.1:${registry.port}/bench/multi:lazy${rep}`;
      await run(process.execPath, [cliPath(), 'convert', multi, dst, '--store', `dir://${convertStore}`, '--json'], {
        timeoutMs: 1_800_000,
      });
      converts.push(Number(process.hrtime.bigint() - t0) / 1e9);
      console.error(`convert from the registry: rep ${rep + 1}: ${converts.at(-1)!.toFixed(2)} s`);
    }
    rows.push({
      case: 'the same, `slacker-ts convert` registry → registry (overlay2: its pull)',
      overlay2: rows.at(-1)!.overlay2,
      slacker: converts,
    });
    let deep10k: number | undefined;
    if (opts.only !== 'large') {
      const cases: [string, RawEntry[]][] = [
        [`${Number(opts.files).toLocaleString('en')} empty files`, manyFiles(Number(opts.files))],
        [`${Number(opts.depth).toLocaleString('en')}-deep directories`, nestedDirs(Number(opts.depth))],
      ];
      for (const [name, entries] of cases) {
        const file = join(dir, 'case.tar');
        await writeFile(file, rawTar(entries));
        await timed(name, (d) => timedImport(d, file, 'bench:1'));
      }
      const deepest = join(dir, 'deepest.tar');
      await writeFile(deepest, rawTar(nestedDirs(10_000)));
      deep10k = await timedImport(hosts.slacker, deepest, 'deep:1');
    }

    const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}`;
    const engineName = engine === 'containerd' ? `dockerd 26 on containerd (differ: ${opts.differ})` : 'dockerd 20.10';
    console.log(`\nbench:apply — one ${engineName} per driver, median of ${REPS} (range); ${machine}\n`);
    console.log('| layer tar | overlay2 | slacker | slacker / overlay2 |');
    console.log('|---|---:|---:|---:|');
    for (const r of rows) {
      const ratio = median(r.slacker) / median(r.overlay2);
      console.log(
        `| ${r.case} | ${median(r.overlay2).toFixed(2)} s (${spread(r.overlay2)}) | ${median(r.slacker).toFixed(2)} s (${spread(r.slacker)}) | ${ratio.toFixed(2)} |`,
      );
    }
    if (deep10k !== undefined) {
      console.log(`| 10,000-deep directories | refused (file name too long) | ${deep10k.toFixed(2)} s | — |`);
    }
    if (opts.json) await writeFile(opts.json, JSON.stringify({ reps: REPS, machine, rows, deep10k }, null, 2));
  } finally {
    await stop();
  }
}

await main();
