/** Cutting a byte range into the fixed-size blocks (pages, chunks) it touches. */

/** A byte range of a device or volume. */
export interface ByteRange {
  offset: number;
  length: number;
}

export interface BlockPiece {
  /** Index of the block. */
  index: number;
  /** Offset within the block. */
  at: number;
  length: number;
  /** Offset within the range. */
  pos: number;
}

export function blockPieces(offset: number, length: number, blockSize: number): BlockPiece[] {
  const out: BlockPiece[] = [];
  for (let pos = 0; pos < length;) {
    const abs = offset + pos;
    const index = Math.floor(abs / blockSize);
    const at = abs - index * blockSize;
    const n = Math.min(blockSize - at, length - pos);
    out.push({ index, at, length: n, pos });
    pos += n;
  }
  return out;
}

/**
 * The bytes [pos, pos + length) of a vector of buffers (a write payload as it arrived in pieces),
 * as views: nothing is copied.
 */
export function vectorSlice(vector: readonly Buffer[], pos: number, length: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = pos;
  let left = length;
  for (const b of vector) {
    if (left === 0) break;
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    const n = Math.min(b.length - skip, left);
    out.push(n === b.length ? b : b.subarray(skip, skip + n));
    skip = 0;
    left -= n;
  }
  if (left > 0) throw new RangeError(`vector of ${vectorLength(vector)} bytes has no [${pos}, ${pos + length})`);
  return out;
}

export function vectorLength(vector: readonly Buffer[]): number {
  let n = 0;
  for (const b of vector) n += b.length;
  return n;
}
