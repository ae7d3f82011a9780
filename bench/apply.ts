/**
 * ApplyDiff cost on the same dockerd, slacker against overlay2 (the anchor), in one run:
 * `docker import` of layer tars that stress the per-entry path (many small files, a deep tree),
 * the cases of issue 22. Each case runs --reps times per driver, alternating drivers; the image
 * is removed between runs. Prints medians, ranges and the ratio slacker / overlay2.
 *
 *   npm run bench:apply -- [--reps 3] [--files 100000] [--depth 1500] [--json FILE]
 *
 * The deep tree stays at a depth overlay2 can apply (its mkdir fails past PATH_MAX, about
 * 2,000 one-letter levels under its data root); a row for slacker alone at 10,000 levels follows.
 */
import { writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { run } from '../common/exec.js';
import { startDockerd, type Dockerd } from '../harness/dockerd.js';
import { onInterrupt } from '../harness/interrupt.js';
import { startPlugin } from '../harness/plugin.js';
import { nestedDirs, rawTar, type RawEntry } from '../harness/raw-tar.js';
import { requireTools } from '../harness/tools.js';
import { median, spread } from './hellobench/report.js';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';

const { values: opts } = parseArgs({
  options: {
    reps: { type: 'string', default: '3' },
    files: { type: 'string', default: '100000' },
    depth: { type: 'string', default: '1500' },
    json: { type: 'string' },
  },
});
const REPS = Number(opts.reps);

function manyFiles(n: number): RawEntry[] {
  const entries: RawEntry[] = [];
  for (let d = 0; d * 1000 < n; d++) {
    entries.push({ name: `many/d${d}/`, type: 'directory' });
    for (let i = d * 1000; i < Math.min(n, (d + 1) * 1000); i++) entries.push({ name: `many/d${d}/f${i}` });
  }
  return entries;
}

async function timedImport(d: Dockerd, file: string, tag: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  await d.docker(['import', file, tag], { timeoutMs: 1_800_000 });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  await d.docker(['rmi', tag]);
  return s;
}

async function main(): Promise<void> {
  await requireTools('dockerd', 'nbdfuse', 'losetup', 'mkfs.ext4');
  const dir = await mkdtemp(join(tmpdir(), 'slacker-bench-apply-'));
  const plugin = await startPlugin({ root: join(dir, 'state'), logFile: join(dir, 'plugin.log') });
  const hosts: Record<'overlay2' | 'slacker', Dockerd> = {
    overlay2: await startDockerd(join(dir, 'overlay'), { storageDriver: 'overlay2' }),
    slacker: await startDockerd(join(dir, 'slacker'), { storageDriver: plugin.name }),
  };
  const stop = onInterrupt(async () => {
    await hosts.slacker.stop();
    await hosts.overlay2.stop();
    await plugin.stop();
    await run('rm', ['-rf', dir]); // GNU rm: the deep tree is deeper than node:fs removes
  });
  const rows: { case: string; overlay2: number[]; slacker: number[] }[] = [];
  try {
    const cases: [string, RawEntry[]][] = [
      [`${Number(opts.files).toLocaleString('en')} empty files`, manyFiles(Number(opts.files))],
      [`${Number(opts.depth).toLocaleString('en')}-deep directories`, nestedDirs(Number(opts.depth))],
    ];
    // A first import on each, not counted: slacker makes its empty ext4 template then.
    const warm = join(dir, 'warm.tar');
    await writeFile(warm, rawTar([{ name: 'warm', data: 'x' }]));
    for (const d of Object.values(hosts)) await timedImport(d, warm, 'warm:1');
    for (const [name, entries] of cases) {
      const file = join(dir, 'case.tar');
      await writeFile(file, rawTar(entries));
      const row = { case: name, overlay2: [] as number[], slacker: [] as number[] };
      for (let rep = 0; rep < REPS; rep++) {
        for (const driver of ['overlay2', 'slacker'] as const) {
          row[driver].push(await timedImport(hosts[driver], file, 'bench:1'));
          console.error(`${name}: ${driver} rep ${rep + 1}: ${row[driver].at(-1)!.toFixed(2)} s`);
        }
      }
      rows.push(row);
    }
    const deepest = join(dir, 'deepest.tar');
    await writeFile(deepest, rawTar(nestedDirs(10_000)));
    const deep10k = await timedImport(hosts.slacker, deepest, 'deep:1');

    const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}`;
    console.log(`\nbench:apply — docker import on one dockerd 20.10, median of ${REPS} (range); ${machine}\n`);
    console.log('| layer tar | overlay2 | slacker | slacker / overlay2 |');
    console.log('|---|---:|---:|---:|');
    for (const r of rows) {
      const ratio = median(r.slacker) / median(r.overlay2);
      console.log(
        `| ${r.case} | ${median(r.overlay2).toFixed(2)} s (${spread(r.overlay2)}) | ${median(r.slacker).toFixed(2)} s (${spread(r.slacker)}) | ${ratio.toFixed(2)} |`,
      );
    }
    console.log(`| 10,000-deep directories | refused (file name too long) | ${deep10k.toFixed(2)} s | — |`);
    if (opts.json) await writeFile(opts.json, JSON.stringify({ reps: REPS, machine, rows, deep10k }, null, 2));
  } finally {
    await stop();
  }
}

await main();
