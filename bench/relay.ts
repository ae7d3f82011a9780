/**
 * What the NBD relay costs: the same nbd-serve export read and written by nbdcopy directly and
 * through `slacker-ts nbd-relay` (the path every attached layer's I/O takes, so that it survives
 * daemon restarts), in the same run; the ratio is relay/direct throughput.
 *
 *   npm run bench:relay -- [--size-mib 256] [--reps 3] [--json FILE]
 *
 * The file is warm in the page cache: the figures compare the paths, not the disk.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, startProcess } from '../common/exec.js';
import { retryUntil } from '../common/retry.js';
import { existsSync } from 'node:fs';
import { median, spread } from './hellobench/report.js';
import { benchArgs } from './options.js';

const { values: opts } = benchArgs(
  'npm run bench:relay --',
  'What the NBD relay costs: nbdcopy straight to nbd-serve and through the relay.',
  {
    'size-mib': { type: 'string', default: '256' },
    reps: { type: 'string', default: '3' },
    json: { type: 'string' },
  },
);
const SIZE = Number(opts['size-mib']) * 2 ** 20;
const REPS = Number(opts.reps);
const CLI = join(import.meta.dirname, '../cli/main.js');
const now = (): number => Number(process.hrtime.bigint()) / 1e9;

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'slacker-bench-relay-'));
  const server = join(dir, 'nbd.sock');
  const relaySock = join(dir, 'relay.sock');
  const disk = join(dir, 'disk.img');
  const src = join(dir, 'src.bin');
  await writeFile(disk, Buffer.alloc(0));
  await run('truncate', ['-s', String(SIZE), disk]);
  await run('dd', ['if=/dev/urandom', `of=${src}`, 'bs=1M', `count=${SIZE / 2 ** 20}`, 'status=none']);
  const nbd = startProcess(process.execPath, [
    CLI,
    'nbd-serve',
    '--export',
    `disk=${disk}`,
    '--listen',
    `unix://${server}`,
  ]);
  const relay = startProcess(process.execPath, [
    CLI,
    'nbd-relay',
    '--listen',
    relaySock,
    '--upstream',
    server,
    '--idle-exit-ms',
    '600000',
  ]);
  try {
    await retryUntil('sockets', async () => {
      if (!existsSync(server) || !existsSync(relaySock)) throw new Error('not yet');
    });
    const uri = (sock: string): string => `nbd+unix:///disk?socket=${sock}`;
    const rows: { name: string; direct: number[]; relay: number[] }[] = [];
    // Writes first: then the export holds data everywhere, and reads move it (a sparse export
    // would answer holes, which only the direct path, with structured replies, can skip).
    const workloads = [
      { name: 'sequential write (nbdcopy file → export), 4 connections', args: (u: string) => [src, u] },
      { name: 'sequential read (nbdcopy → null:), 4 connections', args: (u: string) => [u, 'null:'] },
    ];
    for (const w of workloads) {
      const row = { name: w.name, direct: [] as number[], relay: [] as number[] };
      for (let rep = -1; rep < REPS; rep++) {
        for (const [key, sock] of [
          ['direct', server],
          ['relay', relaySock],
        ] as const) {
          const t = now();
          await run('nbdcopy', ['--connections=4', ...w.args(uri(sock))], { timeoutMs: 600_000 });
          const mibs = SIZE / 2 ** 20 / (now() - t);
          if (rep >= 0) row[key].push(mibs); // rep -1 warms up
        }
      }
      rows.push(row);
      const ratio = median(row.relay) / median(row.direct);
      console.log(
        `${w.name}: direct ${median(row.direct).toFixed(0)} MiB/s (${spread(row.direct)}), relay ${median(row.relay).toFixed(0)} MiB/s (${spread(row.relay)}): ${ratio.toFixed(2)}`,
      );
    }
    if (opts.json) await writeFile(opts.json, JSON.stringify(rows, null, 2));
  } finally {
    await relay.stop();
    await nbd.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
