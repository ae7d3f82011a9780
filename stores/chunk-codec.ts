/**
 * How a pack store keeps one chunk: brotli quality 1 where that pays, else as it is.
 *
 * Compression saves link time and costs decode time on the host that reads the chunk, on the
 * critical path of a cold read. Decoding a chunk does not get cheaper as the saving shrinks,
 * so a chunk pays on a 1 Gbit/s link (HelloBench's) only when it shrinks well; the threshold
 * below was chosen on the HelloBench images' contents (`npm run bench:compression`; the
 * numbers and the trade-off: docs/BENCHMARKS.md, "Chunk size and compression").
 */
import { promisify } from 'node:util';
import { brotliCompress, brotliDecompress, constants as zlib } from 'node:zlib';

// zlib's async API runs on the threadpool: (de)compression overlaps the event loop's work.
const compress = promisify(brotliCompress);
const decompress = promisify(brotliDecompress);

/** How published chunks are stored: brotli where it pays (the default), or always as they are. */
export type Compression = 'brotli' | 'none';
export const COMPRESSIONS: readonly Compression[] = ['brotli', 'none'];

/** Keep a compressed chunk only if it is at most this fraction of the original. */
export const WORTH_COMPRESSING = 0.6;

/**
 * Output buffer for decompressing a chunk: a default 128 KiB chunk in one piece. (1 MiB, as
 * before, made every decode touch fresh memory; zlib's 16 KiB default costs a callback and a
 * copy per piece.) Larger chunks decode in several pieces.
 */
export const DECODE_BUFFER = 256 * 1024;

/** log2 of the smallest brotli window that holds `length` bytes. */
function windowBits(length: number): number {
  const bits = Math.ceil(Math.log2(Math.max(length, 1)));
  return Math.min(zlib.BROTLI_MAX_WINDOW_BITS, Math.max(zlib.BROTLI_MIN_WINDOW_BITS, bits));
}

/** The brotli parameters chunks are compressed with. */
export function brotliParams(length: number): Record<number, number> {
  return {
    [zlib.BROTLI_PARAM_QUALITY]: 1,
    // A window no larger than the chunk: the decoder then allocates a ring buffer of the
    // chunk's size, not brotli's default 4 MiB, for every chunk it decodes.
    [zlib.BROTLI_PARAM_LGWIN]: windowBits(length),
    [zlib.BROTLI_PARAM_SIZE_HINT]: length,
  };
}

/** What to store for a chunk: its brotli form if that pays, else the chunk itself. */
export async function encodeChunk(data: Buffer): Promise<{ bytes: Buffer; compressed: boolean }> {
  const z = await compress(data, { params: brotliParams(data.length) });
  return z.length <= data.length * WORTH_COMPRESSING
    ? { bytes: z, compressed: true }
    : { bytes: data, compressed: false };
}

/**
 * The chunk's bytes from its brotli form. Undecodable data is passed on as it is: the
 * caller's digest check then refuses it at once, as tampered data, instead of retrying.
 */
export function decodeChunk(stored: Buffer): Promise<Buffer> {
  // One output buffer for the whole chunk: zlib's default 16 KiB pieces cost a main-thread
  // callback and a copy each (they were most of the CPU a prefetch spent outside the kernel).
  return decompress(stored, { chunkSize: DECODE_BUFFER }).catch(() => stored);
}
