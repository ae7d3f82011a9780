/**
 * One request at a time: what a container's start pays per read, write and fsync on the lazy
 * path, against anchors measured in the same run (docs/BENCHMARKS.md, "Where a container's run
 * goes"). A start's requests mostly go one at a time (postgres: ~1.05 in flight on average), so
 * it is latency, not throughput, that its run is made of.
 *
 *   npm run bench:latency -- [--reps 3] [--seconds 3] [--files 300] [--json FILE]
 *
 * 1. A 4 KiB request alone (`fio --ioengine=nbd --iodepth=1`, random writes then random reads
 *    over 64 MiB), on unix sockets: `nbdkit file` (the anchor), `slacker-ts nbd-serve` of the
 *    same kind of file, a layer volume (`slacker-ts volume serve`), and that volume through
 *    `slacker-ts nbd-relay`, the path every attached layer takes. Mean latency per request.
 * 2. fsync per file: a child process creates FILES files of 8 KiB and fsyncs each, then fsyncs
 *    each once more with nothing dirty (ext4 still sends its device a flush). On a directory of
 *    the host (overlay2's case, the anchor), on ext4 on a loop device over a local file, and on
 *    ext4 on a layer volume attached as the daemon attaches it (relay, then this machine's
 *    attacher: nbdfuse + loop here).
 *
 * Each server or file system is its own process (the volume's server too: an fsync waits on
 * it, and must not wait on this process's own event loop). Repetitions alternate; medians and
 * ranges are printed, with each row's ratio to its anchor (below 1: slower than the anchor).
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { attachLoop, detachLoop } from '../attach/loop.js';
import { mkfsExt4, mountExt4, unmount } from '../attach/ext4.js';
import { run, startProcess, type Started } from '../common/exec.js';
import { retryUntil } from '../common/retry.js';
import { attachExt4, type Attached } from '../harness/attach.js';
import { onInterrupt } from '../harness/interrupt.js';
import { requireTools } from '../harness/tools.js';
import { median, spread } from './hellobench/report.js';
import { benchArgs } from './options.js';

const { values: opts } = benchArgs(
  'npm run bench:latency --',
  'One request at a time: 4 KiB NBD requests and fsyncs on a volume, against nbdkit and the host.',
  {
    reps: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '3' },
    files: { type: 'string', default: '300' },
    json: { type: 'string' },
  },
);
const REPS = Number(opts.reps);
const SECONDS = Number(opts.seconds);
const FILES = Number(opts.files);
const CLI = join(import.meta.dirname, '../cli/main.js');
const REGION = '64m';

interface Row {
  name: string;
  unit: string;
  anchor: string;
  /** Per repetition, per path: the measured value (µs or ms: lower is better). */
  values: Record<string, number[]>;
}

/** Mean latency (µs) of fio's one-at-a-time 4 KiB requests against an NBD URI. */
async function fioLatency(uri: string, rw: 'randwrite' | 'randread'): Promise<number> {
  const { stdout } = await run(
    'fio',
    [
      '--name=qd1',
      '--ioengine=nbd',
      `--uri=${uri}`,
      `--rw=${rw}`,
      '--bs=4k',
      '--iodepth=1',
      `--size=${REGION}`,
      '--time_based',
      `--runtime=${SECONDS}`,
      '--output-format=json',
    ],
    { timeoutMs: (SECONDS + 60) * 1000 },
  );
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
  const side = rw === 'randwrite' ? job.write : job.read;
  return (side.lat_ns.mean as number) / 1000;
}

/**
 * The child that times fsyncs: creates `files` files of 8 KiB in `dir`, each written and
 * fsynced; then fsyncs each again. Prints {write, clean}: ms per file.
 */
const FSYNC_CHILD = `
const fs = require('node:fs'), path = require('node:path');
const [dir, n] = [process.argv[1], Number(process.argv[2])];
const data = Buffer.alloc(8192, 7);
const fds = [];
let t = process.hrtime.bigint();
for (let i = 0; i < n; i++) {
  const fd = fs.openSync(path.join(dir, 'f' + i), 'w');
  fs.writeSync(fd, data);
  fs.fsyncSync(fd);
  fds.push(fd);
}
const write = Number(process.hrtime.bigint() - t) / 1e6 / n;
t = process.hrtime.bigint();
for (const fd of fds) fs.fsyncSync(fd);
const clean = Number(process.hrtime.bigint() - t) / 1e6 / n;
for (const fd of fds) fs.closeSync(fd);
for (let i = 0; i < n; i++) fs.unlinkSync(path.join(dir, 'f' + i));
fs.fsyncSync(fs.openSync(dir, 'r'));
console.log(JSON.stringify({ write, clean }));
`;

async function fsyncTimes(dir: string): Promise<{ write: number; clean: number }> {
  const { stdout } = await run(process.execPath, ['-e', FSYNC_CHILD, dir, String(FILES)], { timeoutMs: 600_000 });
  return JSON.parse(stdout.trim()) as { write: number; clean: number };
}

function waitForSocket(path: string, what: string): Promise<void> {
  return retryUntil(
    what,
    async () => {
      if (!existsSync(path)) throw new Error('not yet');
    },
    { attempts: 400, delayMs: 25 },
  );
}

function report(rows: Row[]): void {
  for (const r of rows) {
    const anchor = median(r.values[r.anchor]!);
    console.log(`${r.name} (${r.unit}, lower is better):`);
    for (const [path, xs] of Object.entries(r.values)) {
      const m = median(xs);
      const ratio = path === r.anchor ? 'anchor' : `${(anchor / m).toFixed(2)} of the anchor's speed`;
      console.log(`  ${path.padEnd(44)} ${m.toFixed(m < 10 ? 3 : 1).padStart(8)} (${spread(xs)})  ${ratio}`);
    }
  }
}

async function main(): Promise<void> {
  await requireTools('nbdkit', 'fio', 'nbdfuse', 'losetup', 'mkfs.ext4');
  if (process.getuid?.() !== 0) throw new Error('bench:latency attaches loop devices and mounts ext4: run it as root');
  const dir = await mkdtemp(join(tmpdir(), 'slacker-bench-latency-'));
  const procs: Started[] = [];
  /** A server of this run: its output is drained (an unread pipe would stall it) and it is stopped at the end. */
  const daemon = (cmd: string, args: string[]): void => {
    const p = startProcess(cmd, args);
    p.child.stdout?.resume();
    p.child.stderr?.resume();
    procs.push(p);
  };
  const undo: (() => Promise<unknown>)[] = [];
  const cleanup = async (): Promise<void> => {
    for (let step = undo.pop(); step; step = undo.pop()) await step().catch(() => undefined);
    await Promise.all(procs.splice(0).map((p) => p.stop()));
    await rm(dir, { recursive: true, force: true });
  };
  const stop = onInterrupt(cleanup);
  try {
    // The servers: nbdkit and nbd-serve on files of random data, a volume served on its own.
    await mkdir(join(dir, 'files'));
    await run('sh', ['-c', `head -c ${REGION.replace('m', 'M')} /dev/urandom > ${join(dir, 'files/disk.img')}`]);
    await run('cp', [join(dir, 'files/disk.img'), join(dir, 'serve.img')]);
    const sock = (n: string): string => join(dir, `${n}.sock`);
    const uri = (n: string, e: string): string => `nbd+unix:///${e}?socket=${sock(n)}`;
    daemon('nbdkit', ['-f', '-U', sock('nbdkit'), 'file', `dir=${join(dir, 'files')}`]);
    daemon(process.execPath, [
      CLI,
      'nbd-serve',
      '--export',
      `disk.img=${join(dir, 'serve.img')}`,
      '--listen',
      `unix://${sock('serve')}`,
      '--log-level',
      'warn',
    ]);
    const root = join(dir, 'root');
    const volume = ['--root', root, '--store', `dir://${join(dir, 'store')}`, '--log-level', 'warn'];
    await mkdir(join(dir, 'store'));
    await run(process.execPath, [CLI, 'volume', 'create', 'vol', '1G', ...volume]);
    await run(process.execPath, [CLI, 'volume', 'create', 'fs', '1G', ...volume]);
    daemon(process.execPath, [CLI, 'volume', 'serve', 'vol', 'fs', '--listen', `unix://${sock('volume')}`, ...volume]);
    await waitForSocket(sock('volume'), 'the volume server');
    daemon(process.execPath, [
      CLI,
      'nbd-relay',
      '--listen',
      sock('relay'),
      '--upstream',
      sock('volume'),
      '--idle-exit-ms',
      '3600000',
    ]);
    for (const n of ['nbdkit', 'serve', 'relay']) await waitForSocket(sock(n), n);

    const paths: Record<string, string> = {
      'nbdkit file (anchor)': uri('nbdkit', 'disk.img'),
      'slacker-ts nbd-serve, a file': uri('serve', 'disk.img'),
      'slacker-ts volume serve, a volume': uri('volume', 'vol'),
      'the volume through slacker-ts nbd-relay': uri('relay', 'vol'),
    };
    const rows: Row[] = [];
    for (const rw of ['randwrite', 'randread'] as const) {
      const row: Row = {
        name: `4 KiB ${rw === 'randwrite' ? 'write' : 'read'} alone (fio nbd, iodepth 1)`,
        unit: 'µs per request',
        anchor: 'nbdkit file (anchor)',
        values: {},
      };
      for (const name of Object.keys(paths)) row.values[name] = [];
      for (let rep = 0; rep < REPS; rep++) {
        const order = Object.entries(paths);
        if (rep % 2 === 1) order.reverse();
        for (const [name, u] of order) row.values[name]!.push(await fioLatency(u, rw));
      }
      rows.push(row);
      console.error(`done: ${row.name}`);
    }

    // The file systems.
    const hostDir = join(dir, 'host');
    await mkdir(hostDir);
    const loopFile = join(dir, 'loop.img');
    await writeFile(loopFile, Buffer.alloc(0));
    await run('truncate', ['-s', '1G', loopFile]);
    const loop = await attachLoop(loopFile, false);
    undo.push(() => detachLoop(loop));
    await mkfsExt4(loop);
    const loopMnt = join(dir, 'loop-mnt');
    await mountExt4(loop, loopMnt, { readOnly: false });
    undo.push(() => unmount(loopMnt));
    const attached: Attached = await attachExt4({ socket: sock('relay'), exportName: 'fs' }, join(dir, 'attach'), {
      mkfs: true,
    });
    undo.push(() => attached.detach());
    const places: Record<string, string> = {
      'a directory on the host (anchor)': hostDir,
      'ext4 on a loop device over a local file': loopMnt,
      'ext4 on a volume: relay, nbdfuse, loop': attached.mountPoint,
    };
    const written: Row = {
      name: `create, write 8 KiB and fsync, ${FILES} files`,
      unit: 'ms per file',
      anchor: 'a directory on the host (anchor)',
      values: {},
    };
    const clean: Row = {
      name: 'fsync of the same files again, nothing dirty',
      unit: 'ms per file',
      anchor: 'a directory on the host (anchor)',
      values: {},
    };
    for (const name of Object.keys(places)) {
      written.values[name] = [];
      clean.values[name] = [];
    }
    for (let rep = 0; rep < REPS; rep++) {
      const order = Object.entries(places);
      if (rep % 2 === 1) order.reverse();
      for (const [name, d] of order) {
        const t = await fsyncTimes(d);
        written.values[name]!.push(t.write);
        clean.values[name]!.push(t.clean);
      }
    }
    rows.push(written, clean);
    report(rows);
    if (opts.json) await writeFile(opts.json, JSON.stringify(rows, null, 2));
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
