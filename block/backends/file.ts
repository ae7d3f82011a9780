/**
 * File backend: serves a regular file (or block device) as an export, sparse-aware.
 * TRIM punches holes, WRITE_ZEROES uses fallocate (ZERO_RANGE for NO_HOLE, PUNCH_HOLE otherwise)
 * and BLOCK_STATUS reports holes found with lseek(SEEK_DATA/SEEK_HOLE), all through the native
 * fileops addon since node:fs has none of them. All connections share one descriptor, so the
 * kernel page cache is the only cache and FLUSH (fdatasync) is visible to all: multi-conn safe.
 *
 * I/O first tries preadv2/pwritev2 with RWF_NOWAIT on the event loop: when the data is in the
 * page cache this costs a memcpy, where a libuv threadpool round trip costs several times more
 * (what it bought random 4 KiB reads: docs/BENCHMARKS.md). Whatever
 * would block on the disk falls back to the threadpool, so the event loop never waits on it.
 *
 * Writes run on the event loop while they are quick. A buffered write that lands in the page
 * cache is a memcpy, where the threadpool's hand-off and wake-ups cost more than the copy (bench:nbd
 * sequential writes: server CPU 0.21-0.26 s per 512 MiB through the threadpool, 0.15 s on the
 * event loop, nbdkit's 0.15-0.18). ext4 refuses RWF_NOWAIT for buffered writes, so a write cannot
 * be told not to block: one that took longer than INLINE_WRITE_LIMIT_MS (dirty-page throttling,
 * a slow device) sends this file's writes to the threadpool for a while: a second, doubled each
 * time the next inline write is slow too (up to a minute), so that a file under lasting pressure
 * stalls the event loop at most once a minute; a quick inline write resets it.
 */
import { close, closeSync, fstat, fstatSync, open, openSync, writev, writevSync, type Stats } from 'node:fs';
import { NotSupportedError, ShutdownError, systemErrorCode } from '../../common/errors.js';
import { fdatasyncAsync, readFully, type NoWaitState } from '../../common/file-io.js';
import { fileOps } from '../../common/fileops.js';
import type { Backend, ByteCount, Extent, Slice, WriteFlags, ZeroFlags } from '../backend.js';

// Like the wrappers in common/file-io.ts: cheaper per call than FileHandle methods.
function writevAsync(fd: number, bufs: readonly Buffer[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => writev(fd, bufs, pos, (err, k) => (err ? reject(err) : resolve(k))));
}

const ZERO_WRITE_PIECE = 1024 * 1024;
/** A write on the event loop slower than this sends the next ones to the threadpool... */
const INLINE_WRITE_LIMIT_MS = 2;
/** ...for this long at first, doubling while they stay slow, up to the maximum. */
const OFFLOAD_MS = 1000;
const MAX_OFFLOAD_MS = 60_000;
let zeroPiece: Buffer | undefined;

export interface FileBackendOptions {
  path: string;
  readOnly?: boolean;
  description?: string;
}

export class FileBackend implements Backend {
  readonly kind = 'file';
  readonly multiConn = true;
  readonly description: string | undefined;
  /** Cleared the first time the kernel says RWF_NOWAIT is unsupported for this file. */
  private readonly nowait: NoWaitState = { read: true };
  /** Writes go to the threadpool until then (Date.now()): one on the event loop was slow. */
  private offloadUntil = 0;
  /** How long the next slow inline write sends writes to the threadpool. */
  private offloadMs = OFFLOAD_MS;

  private constructor(
    /** Owned by this backend: closed by close(), by no one else. */
    private descriptor: number,
    readonly size: ByteCount,
    readonly path: string,
    description: string | undefined,
  ) {
    this.description = description;
  }

  /** The descriptor; a call after close() fails here, never reaching a file that reused the number. */
  private get fd(): number {
    if (this.descriptor < 0) throw new ShutdownError(`file backend ${this.path} is closed`);
    return this.descriptor;
  }

  /** Opens any file or block device, on the threadpool (opening a device may wait on it). */
  static async open(options: FileBackendOptions): Promise<FileBackend> {
    const fd = await new Promise<number>((resolve, reject) =>
      open(options.path, options.readOnly ? 'r' : 'r+', (err, f) => (err ? reject(err) : resolve(f))),
    );
    try {
      const st = await new Promise<Stats>((resolve, reject) => fstat(fd, (err, s) => (err ? reject(err) : resolve(s))));
      return FileBackend.opened(fd, st, options);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /**
   * Opens a regular file on this host's own disk on the event loop: open and fstat of a local
   * file take microseconds. Why not open(): a layer's volume is opened at its first Get, on a
   * fresh host while the image's startup profile is being fetched, whose chunk decodes fill the
   * libuv threadpool's queue; the two threadpool round trips then waited behind them (the first
   * attach's volume open took 33 ms on a HelloBench worker, docs/BENCHMARKS.md).
   */
  static openLocal(options: FileBackendOptions): FileBackend {
    const fd = openSync(options.path, options.readOnly ? 'r' : 'r+');
    try {
      return FileBackend.opened(fd, fstatSync(fd), options);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  private static opened(fd: number, st: Stats, options: FileBackendOptions): FileBackend {
    // stat() reports 0 for block devices; their size is where seeking to the end lands.
    const size = st.isBlockDevice() ? fileOps.seekEnd(fd) : st.size;
    return new FileBackend(fd, size, options.path, options.description);
  }

  /** Whether the next write runs on the event loop (none was slow lately). */
  get writesInline(): boolean {
    return Date.now() >= this.offloadUntil;
  }

  async pread(length: ByteCount, offset: ByteCount): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    const done = await readFully(this.fd, buf, 0, length, offset, this.nowait);
    // Short only if the file shrank under us: what lies past its end reads as zeroes.
    if (done < length) buf.fill(0, done);
    return buf;
  }

  fileSlices(offset: ByteCount, length: ByteCount): Slice[] {
    return [{ kind: 'file', fd: this.fd, position: offset, length }];
  }

  async pwrite(data: Buffer, offset: ByteCount, flags: WriteFlags): Promise<void> {
    await this.pwritev([data], offset, flags);
  }

  async pwritev(chunks: readonly Buffer[], offset: ByteCount, flags: WriteFlags): Promise<void> {
    let pos = offset;
    let pending = chunks;
    const inline = this.writesInline;
    const t0 = inline ? performance.now() : 0;
    while (pending.length > 0) {
      let n = inline ? writevSync(this.fd, pending as Buffer[], pos) : await writevAsync(this.fd, pending, pos);
      pos += n;
      // A short write leaves a tail: drop what was written and go on with the rest.
      let i = 0;
      while (i < pending.length && n >= pending[i]!.length) n -= pending[i++]!.length;
      pending = i < pending.length ? [pending[i]!.subarray(n), ...pending.slice(i + 1)] : [];
    }
    if (inline) this.timedInlineWrite(performance.now() - t0);
    if (flags.fua) await this.flush();
  }

  /** Chooses where the next writes run after an inline write that took `ms`. */
  private timedInlineWrite(ms: number): void {
    if (ms <= INLINE_WRITE_LIMIT_MS) {
      this.offloadMs = OFFLOAD_MS;
      return;
    }
    this.offloadUntil = Date.now() + this.offloadMs;
    this.offloadMs = Math.min(2 * this.offloadMs, MAX_OFFLOAD_MS);
  }

  async flush(): Promise<void> {
    await fdatasyncAsync(this.fd);
  }

  async trim(offset: ByteCount, length: ByteCount, flags: WriteFlags): Promise<void> {
    try {
      fileOps.punchHole(this.fd, offset, length);
    } catch (err) {
      // TRIM is advisory: a file system without hole punching simply keeps the data.
      if (systemErrorCode(err) !== 'EOPNOTSUPP') throw err;
    }
    if (flags.fua) await this.flush();
  }

  async zero(offset: ByteCount, length: ByteCount, flags: ZeroFlags): Promise<void> {
    const done =
      (flags.mayTrim && this.tryFallocate('punch', offset, length)) || this.tryFallocate('zero', offset, length);
    if (!done) {
      if (flags.fast) {
        throw new NotSupportedError('fast zero is not supported by this file system', {
          context: { path: this.path },
        });
      }
      await this.writeZeroes(offset, length);
    }
    if (flags.fua) await this.flush();
  }

  async cache(offset: ByteCount, length: ByteCount): Promise<void> {
    fileOps.fadviseWillNeed(this.fd, offset, length);
  }

  async extents(offset: ByteCount, length: ByteCount): Promise<Extent[]> {
    const end = offset + length;
    const out: Extent[] = [];
    let pos = offset;
    while (pos < end) {
      let data = fileOps.seekData(this.fd, pos);
      if (data < 0 || data > end) data = end;
      if (data > pos) {
        out.push({ offset: pos, length: data - pos, hole: true, zero: true });
        pos = data;
        continue;
      }
      const hole = Math.min(fileOps.seekHole(this.fd, pos), end);
      out.push({ offset: pos, length: hole - pos, hole: false, zero: false });
      pos = hole;
    }
    return out;
  }

  async close(): Promise<void> {
    const fd = this.descriptor;
    if (fd < 0) return;
    this.descriptor = -1;
    await new Promise<void>((resolve, reject) => close(fd, (err) => (err ? reject(err) : resolve())));
  }

  /** True when fallocate did it; false when the file system cannot. */
  private tryFallocate(mode: 'punch' | 'zero', offset: ByteCount, length: ByteCount): boolean {
    try {
      if (mode === 'punch') fileOps.punchHole(this.fd, offset, length);
      else fileOps.zeroRange(this.fd, offset, length);
      return true;
    } catch (err) {
      const code = systemErrorCode(err);
      if (code === 'EOPNOTSUPP' || code === 'ENODEV') return false;
      throw err;
    }
  }

  private async writeZeroes(offset: ByteCount, length: ByteCount): Promise<void> {
    zeroPiece ??= Buffer.alloc(ZERO_WRITE_PIECE);
    for (let done = 0; done < length;) {
      const n = Math.min(ZERO_WRITE_PIECE, length - done);
      await this.pwrite(zeroPiece.subarray(0, n), offset + done, { fua: false });
      done += n;
    }
  }
}
