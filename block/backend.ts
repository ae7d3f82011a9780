/**
 * The block backend interface: what an export is made of. In the spirit of nbdkit's plugin
 * API it is small: `size` and `pread` are required; every other operation is optional and the
 * server infers the export's capabilities (and so its NBD transmission flags) from which ones
 * are present. A filter is a function `(next: Backend) => Backend` (see filters/).
 *
 * Backends know nothing of NBD framing: offsets and lengths arrive validated (in range, aligned
 * to `blockSizes.minimum`), and errors are thrown as SlackerError or node:fs system errors,
 * which nbd-server/errno.ts maps to wire errors.
 */

/** A byte offset or length on a device. Plain numbers: exact up to 8 PiB. */
export type ByteCount = number;

export interface BlockSizes {
  /** Requests must be aligned to this (1 = any alignment). */
  minimum: number;
  /** Requests of this size and alignment are the efficient ones (chunk size for volumes). */
  preferred: number;
  /** Largest request payload accepted. */
  maximum: number;
}

export interface WriteFlags {
  /** Persist before returning (NBD_CMD_FLAG_FUA). */
  fua: boolean;
}

export interface ZeroFlags extends WriteFlags {
  /** May deallocate (no NBD_CMD_FLAG_NO_HOLE). */
  mayTrim: boolean;
  /** Fail with NotSupportedError rather than fall back to writing zeroes (NBD_CMD_FLAG_FAST_ZERO). */
  fast: boolean;
}

/** A run of bytes with one allocation status (base:allocation). */
export interface Extent {
  offset: ByteCount;
  length: ByteCount;
  /** Not allocated in the backing storage. */
  hole: boolean;
  /** Known to read as zeroes. */
  zero: boolean;
}

/**
 * Where some bytes of a range lie: in a file the backend holds open, or a run of zeroes. Used
 * for zero-copy read replies (direct-reply.ts).
 */
export type Slice =
  { kind: 'file'; fd: number; position: ByteCount; length: ByteCount } | { kind: 'zero'; length: ByteCount };

export interface Backend {
  /** Short kind name for logs ("file", "memory", "volume"). */
  readonly kind: string;
  readonly size: ByteCount;
  readonly description?: string;
  readonly blockSizes?: BlockSizes;
  /**
   * True when a FLUSH or FUA on one connection is visible to all connections of the export (no
   * per-connection cache), which allows NBD_FLAG_CAN_MULTI_CONN.
   */
  readonly multiConn?: boolean;

  /** Read `length` bytes at `offset`. May return a shared buffer: callers must not modify it. */
  pread(length: ByteCount, offset: ByteCount): Promise<Buffer>;
  pwrite?(data: Buffer, offset: ByteCount, flags: WriteFlags): Promise<void>;
  /**
   * Optional vectored write: the pieces are written back to back from `offset`. Large write
   * payloads arrive in several socket reads; with this the server need not join them first.
   */
  pwritev?(chunks: readonly Buffer[], offset: ByteCount, flags: WriteFlags): Promise<void>;
  flush?(): Promise<void>;
  trim?(offset: ByteCount, length: ByteCount, flags: WriteFlags): Promise<void>;
  zero?(offset: ByteCount, length: ByteCount, flags: ZeroFlags): Promise<void>;
  /** Prefetch a range (NBD_CMD_CACHE): advisory. */
  cache?(offset: ByteCount, length: ByteCount): Promise<void>;
  /** Allocation status of a range: consecutive extents starting at `offset`, covering at least some of it. */
  extents?(offset: ByteCount, length: ByteCount): Promise<Extent[]>;
  /**
   * The zero-copy read contract, in two steps: `localize` (optional) brings a range local and
   * accounts for the read, then `fileSlices` describes where it lies. The server calls them in
   * that order for every zero-copy read, and pread only when fileSlices cannot answer.
   *
   * Optional: the slices a range's bytes lie in, in order, covering it exactly, or undefined if
   * some of it is not in a local file (the server then calls pread). A pure description: it
   * counts nothing and changes nothing. Synchronous because the server sends from the
   * descriptors at once: they must stay open until control returns to the event loop. Bytes in
   * the slices must be what pread would return now.
   */
  fileSlices?(offset: ByteCount, length: ByteCount): Slice[] | undefined;
  /**
   * Optional, with fileSlices: a read of the range is about to be served from fileSlices. A
   * backend that fetches lazily brings the range's bytes into local files first, and any
   * backend accounts for the read here (statistics, readahead). Returns undefined when the
   * range already is local (the warm path costs no promise), else a promise that settles once
   * it is; rejects as pread would.
   */
  localize?(offset: ByteCount, length: ByteCount): Promise<void> | undefined;
  close?(): Promise<void>;
}

export interface Capabilities {
  write: boolean;
  flush: boolean;
  fua: boolean;
  trim: boolean;
  /** WRITE_ZEROES is always offered on writable exports: the server emulates it with writes. */
  zero: boolean;
  fastZero: boolean;
  cache: boolean;
  extents: boolean;
  multiConn: boolean;
}

export const DEFAULT_BLOCK_SIZES: BlockSizes = {
  minimum: 1,
  preferred: 4096,
  maximum: 32 * 1024 * 1024,
};

/** Capabilities follow from which operations a backend implements. */
export function capabilitiesOf(backend: Backend): Capabilities {
  const write = typeof backend.pwrite === 'function';
  const flush = typeof backend.flush === 'function';
  return {
    write,
    flush,
    fua: write && flush,
    trim: write && typeof backend.trim === 'function',
    zero: write,
    fastZero: write && typeof backend.zero === 'function',
    cache: typeof backend.cache === 'function',
    extents: typeof backend.extents === 'function',
    multiConn: backend.multiConn === true,
  };
}

export function blockSizesOf(backend: Backend): BlockSizes {
  return backend.blockSizes ?? DEFAULT_BLOCK_SIZES;
}
