/** Cutting a byte range into the fixed-size blocks (pages, chunks) it touches. */

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
