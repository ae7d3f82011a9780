/**
 * Memory backend: a sparse RAM disk. Data lives in fixed-size pages that exist only once
 * written, so a large, mostly empty device costs only what has been written; trimmed or
 * zeroed whole pages are dropped again and report as holes.
 */
import { InvalidArgumentError } from '../../common/errors.js';
import { blockPieces } from '../ranges.js';
import type { Backend, BlockSizes, ByteCount, Extent, ZeroFlags } from '../backend.js';
import { DEFAULT_BLOCK_SIZES } from '../backend.js';

const PAGE_SIZE = 64 * 1024;

export interface MemoryBackendOptions {
  size: ByteCount;
  description?: string;
  blockSizes?: Partial<BlockSizes>;
}

export class MemoryBackend implements Backend {
  readonly kind = 'memory';
  readonly size: ByteCount;
  readonly description: string | undefined;
  readonly blockSizes: BlockSizes;
  readonly multiConn = true; // one shared store, no per-connection cache
  private readonly pages = new Map<number, Buffer>();

  constructor(options: MemoryBackendOptions) {
    if (!Number.isSafeInteger(options.size) || options.size < 0) {
      throw new InvalidArgumentError(`memory backend size must be a non-negative integer`, {
        context: { size: options.size },
      });
    }
    this.size = options.size;
    this.description = options.description;
    this.blockSizes = { ...DEFAULT_BLOCK_SIZES, ...options.blockSizes };
  }

  /** Bytes of RAM holding data (for tests and stats). */
  get allocatedBytes(): number {
    return this.pages.size * PAGE_SIZE;
  }

  async pread(length: ByteCount, offset: ByteCount): Promise<Buffer> {
    const out = Buffer.alloc(length);
    this.forEachPage(offset, length, (page, pageOffset, bufOffset, n) => {
      this.pages.get(page)?.copy(out, bufOffset, pageOffset, pageOffset + n);
    });
    return out;
  }

  async pwrite(data: Buffer, offset: ByteCount): Promise<void> {
    this.forEachPage(offset, data.length, (page, pageOffset, bufOffset, n) => {
      let p = this.pages.get(page);
      if (!p) {
        p = Buffer.alloc(PAGE_SIZE);
        this.pages.set(page, p);
      }
      data.copy(p, pageOffset, bufOffset, bufOffset + n);
    });
  }

  async flush(): Promise<void> {}

  async trim(offset: ByteCount, length: ByteCount): Promise<void> {
    this.clear(offset, length);
  }

  async zero(offset: ByteCount, length: ByteCount, _flags: ZeroFlags): Promise<void> {
    // Dropping pages is always fast, and RAM has no allocation to keep for NO_HOLE.
    this.clear(offset, length);
  }

  async extents(offset: ByteCount, length: ByteCount): Promise<Extent[]> {
    const out: Extent[] = [];
    this.forEachPage(offset, length, (page, _pageOffset, bufOffset, n) => {
      const hole = !this.pages.has(page);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += n;
      else out.push({ offset: offset + bufOffset, length: n, hole, zero: hole });
    });
    return out;
  }

  private clear(offset: ByteCount, length: ByteCount): void {
    this.forEachPage(offset, length, (page, pageOffset, _bufOffset, n) => {
      if (n === PAGE_SIZE) this.pages.delete(page);
      else this.pages.get(page)?.fill(0, pageOffset, pageOffset + n);
    });
  }

  /** Calls `fn` for each page piece of [offset, offset+length). */
  private forEachPage(
    offset: ByteCount,
    length: ByteCount,
    fn: (page: number, pageOffset: number, bufOffset: number, n: number) => void,
  ): void {
    for (const p of blockPieces(offset, length, PAGE_SIZE)) fn(p.index, p.at, p.pos, p.length);
  }
}
