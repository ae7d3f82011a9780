/**
 * Which chunks are worth storing compressed: measured on real image contents.
 *
 *   npm run bench:compression -- [--sample-mib 32] [FILE ...]
 *
 * Input: the HelloBench root file systems (tarballs under /var/cache/slacker-ts/hellobench,
 * made by `npm run hellobench`), or the files given. From each, `--sample-mib` of 128 KiB
 * chunks spread over the file (all-zero chunks left out: they are holes, never stored) are
 * compressed as the oci:// store does (stores/chunk-codec.ts) and decoded as a reader does.
 *
 * A compressed chunk saves link time and costs decode time on the reader, on its critical path
 * for a single read and in its CPU budget for a stream. Printed: per compression ratio, what a
 * chunk saves and what decoding it costs, and the link speed below which it pays; then, for
 * each threshold (keep the compressed form only if it is at most that fraction of the chunk),
 * the bytes sent and the decode time per GiB of chunks, against storing everything raw.
 */
import { existsSync } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { brotliCompressSync, brotliDecompressSync } from 'node:zlib';
import { CACHE } from './hellobench/rootfs.js';
import { brotliParams, DECODE_BUFFER, WORTH_COMPRESSING } from '../stores/chunk-codec.js';
import { DEFAULT_CHUNK_SIZE, isAllZero } from '../volumes/types.js';
import { benchArgs } from './options.js';

const { values: opts, positionals } = benchArgs(
  'npm run bench:compression -- [FILE ...]',
  'Which 128 KiB chunks pay for being stored compressed (the HelloBench images, or the files given).',
  { 'sample-mib': { type: 'string', default: '32' } },
  { positionals: true },
);
const CHUNK = DEFAULT_CHUNK_SIZE;
const MiB = 2 ** 20;
const GiB = 2 ** 30;
const THRESHOLDS = [0.9, 0.8, 0.7, 0.6, 0.5];
/** Links to price the bytes at, in bytes per second (1 Gbit/s is HelloBench's). */
const LINKS: [string, number][] = [
  ['100 Mbit/s', 100e6 / 8],
  ['1 Gbit/s', 1e9 / 8],
  ['10 Gbit/s', 10e9 / 8],
];

interface Sample {
  /** Compressed / original. */
  ratio: number;
  saved: number;
  /** Fastest of three decodes, seconds. */
  decodeS: number;
}

async function inputs(): Promise<string[]> {
  if (positionals.length > 0) return positionals;
  if (!existsSync(CACHE)) {
    throw new Error(`no files given and no HelloBench images at ${CACHE}: run npm run hellobench -- --quick once`);
  }
  return (await readdir(CACHE)).filter((f) => f.endsWith('.tar')).map((f) => join(CACHE, f));
}

/** Up to `bytes` of whole chunks, spread evenly over the file, all-zero ones left out. */
async function chunksOf(path: string, bytes: number): Promise<Buffer[]> {
  const size = (await stat(path)).size;
  const count = Math.floor(size / CHUNK);
  const want = Math.min(count, Math.floor(bytes / CHUNK));
  const f = await open(path, 'r');
  try {
    const out: Buffer[] = [];
    for (let i = 0; i < want; i++) {
      const buf = Buffer.alloc(CHUNK);
      await f.read(buf, 0, CHUNK, Math.floor((i * count) / want) * CHUNK);
      if (!isAllZero(buf)) out.push(buf);
    }
    return out;
  } finally {
    await f.close();
  }
}

function measure(chunk: Buffer): Sample {
  const z = brotliCompressSync(chunk, { params: brotliParams(chunk.length) });
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    brotliDecompressSync(z, { chunkSize: DECODE_BUFFER });
    best = Math.min(best, performance.now() - t);
  }
  return { ratio: z.length / chunk.length, saved: chunk.length - z.length, decodeS: best / 1000 };
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

async function main(): Promise<void> {
  const files = await inputs();
  const samples: Sample[] = [];
  for (const file of files) {
    for (const chunk of await chunksOf(file, Number(opts['sample-mib']) * MiB)) samples.push(measure(chunk));
  }
  if (samples.length === 0) throw new Error('no non-zero chunks in the input');
  const total = samples.length * CHUNK;
  console.log(
    `${samples.length} chunks of ${CHUNK / 1024} KiB (${(total / MiB).toFixed(0)} MiB, all-zero ones left out) from ${files.length} files; ${cpus()[0]?.model.trim()}, Node ${process.version}\n`,
  );

  console.log('| compressed / original | chunks | saves per chunk | decode per chunk | pays on links slower than |');
  console.log('|---|---:|---:|---:|---:|');
  for (let b = 0; b < 10; b++) {
    const inBucket = samples.filter((s) => Math.min(9, Math.floor(s.ratio * 10)) === b);
    if (inBucket.length === 0) continue;
    const saved = median(inBucket.map((s) => s.saved));
    const decodeS = median(inBucket.map((s) => s.decodeS));
    console.log(
      `| ${(b / 10).toFixed(1)}-${((b + 1) / 10).toFixed(1)} | ${((inBucket.length / samples.length) * 100).toFixed(1)}% | ${(saved / 1024).toFixed(0)} KiB | ${(decodeS * 1e6).toFixed(0)} µs | ${saved > 0 ? `${((saved * 8) / decodeS / 1e9).toFixed(2)} Gbit/s` : 'never'} |`,
    );
  }

  // Per GiB of chunks: bytes on the link, decode seconds, and link + decode time on each link.
  const perGiB = GiB / total;
  const cost = (t: number | undefined): { sent: number; decodeS: number } => {
    const kept = t === undefined ? [] : samples.filter((s) => s.ratio <= t);
    return {
      sent: (total - sum(kept.map((s) => s.saved))) * perGiB,
      decodeS: sum(kept.map((s) => s.decodeS)) * perGiB,
    };
  };
  const raw = cost(undefined);
  console.log(
    `\n| keep compressed if ≤ | chunks compressed | sent per GiB | decode per GiB | ${LINKS.map(([n]) => `link + decode, ${n} (vs raw)`).join(' | ')} |`,
  );
  console.log(`|---|---:|---:|---:|${LINKS.map(() => '---:').join('|')}|`);
  for (const t of [undefined, ...THRESHOLDS]) {
    const c = cost(t);
    const share = t === undefined ? 0 : samples.filter((s) => s.ratio <= t).length / samples.length;
    const times = LINKS.map(([, bps]) => {
      const s = c.sent / bps + c.decodeS;
      return `${s.toFixed(2)} s (${(s / (raw.sent / bps)).toFixed(2)})`;
    });
    const name = t === undefined ? 'raw (anchor)' : `${t}${t === WORTH_COMPRESSING ? ' (current)' : ''}`;
    console.log(
      `| ${name} | ${(share * 100).toFixed(0)}% | ${(c.sent / MiB).toFixed(0)} MiB | ${c.decodeS.toFixed(2)} s | ${times.join(' | ')} |`,
    );
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
