/**
 * Applying an ordinary layer tar to a mounted layer with OCI image-layer semantics: whiteouts
 * (`.wh.<name>` deletes a lower file, `.wh..wh..opq` hides a directory's lower contents),
 * hardlinks, symlinks, devices and FIFOs, ownership, modes, times and extended attributes.
 *
 * Three parts, each with one job: tar-reader.ts reads entries byte for byte; this file decides
 * what each entry means (and refuses what overlay2 refuses: whiteouts of `.` or `..`, symlinks
 * that climb above the root, unknown types); tree-writer.ts does the file system work inside the
 * layer root, where the kernel keeps every path (openat2 RESOLVE_IN_ROOT). File data streams
 * from the request body to disk; small files go in one job with their attributes.
 * A refused or failed entry stops the apply with an error that names it; the caller discards the
 * half-written layer (a fresh clone, so nothing is lost) and drains the rest of the body.
 */
import { Readable, pipeline } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { InvalidArgumentError, IoError, NoSpaceError, SlackerError, systemErrorCode } from '../../common/errors.js';
import type { Digest } from '../../common/digests.js';
import { readMarker } from './marker.js';
import { checkSymlinkTarget, displayName, entryPath, pathBytes, UnsafeEntryError } from './paths.js';
import { readTar, type TarEntry, type TarHeader } from './tar-reader.js';
import { OpKind, TreeWriter, type TreeOp } from './tree-writer.js';

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';
/** AUFS metadata at the top of old layers (`.wh..wh.plnk`, ...): moby skips it, and so do we. */
const AUFS_META = '.wh..wh.';
/** Files up to this size go to disk in the job that creates them; larger ones stream. */
const SMALL_FILE = 1 << 20;
/** Bytes gathered before a streamed file's next write job. */
const WRITE_BATCH = 1 << 20;
/**
 * Work queued for the tree writer before reading the tar waits: the jobs run one at a time, in
 * tar order, while the next entries are read and parsed. One job in flight left the reading
 * waiting on the writer for a third of a large import (docs/BENCHMARKS.md).
 */
const QUEUE_BYTES = 32 << 20;
const QUEUE_JOBS = 4096;

export type ApplyResult =
  | { kind: 'marker'; ref: Digest }
  | {
      kind: 'files';
      /** Bytes of file data the tar carried (what Docker's ApplyDiff reports). */
      size: number;
      entries: number;
      /** Extended attributes the file system does not take (ENOTSUP/EPERM), skipped as moby does. */
      skippedXattrs: number;
      /** Time the reading of the tar stood waiting for the file system work (ms): the rest is input. */
      writeWaitMs: number;
    };

/**
 * Reads a layer tar (plain or gzip'ed). A marker layer is returned as its reference without
 * touching any file system; otherwise `root()` is called once, at the first entry, for the
 * directory to apply to, and every entry is applied there. Does not consume `body` past the
 * tar's end, nor destroy it on failure: the caller drains it (dockerd must see its upload read).
 */
export async function applyLayerTar(body: AsyncIterable<Buffer>, root: () => Promise<string>): Promise<ApplyResult> {
  const entries = readTar(await plainTar(body));
  const peeked: TarEntry[] = [];
  const ref = await readMarker(entries, peeked);
  if (ref) return { kind: 'marker', ref };
  if (peeked.length === 0) return { kind: 'files', size: 0, entries: 0, skippedXattrs: 0, writeWaitMs: 0 };
  const tree = new TreeWriter(await root());
  const applier = new Applier(tree);
  try {
    for (const entry of peeked) await applier.apply(entry);
    for await (const entry of entries) await applier.apply(entry);
    await applier.settle();
    await tree.finish().catch((err: unknown) => {
      throw entryError(err, '(directory times)');
    });
    return {
      kind: 'files',
      size: applier.size,
      entries: applier.entries,
      skippedXattrs: applier.skippedXattrs,
      writeWaitMs: Math.round(applier.waitNs / 1e6),
    };
  } finally {
    await applier.settle().catch(() => undefined); // no job may run on the tree once it is closed
    tree.close();
  }
}

/** The body as a plain tar: dockerd sends plain tars, a gzip'ed one is accepted too. */
async function plainTar(body: AsyncIterable<Buffer>): Promise<AsyncIterable<Buffer>> {
  const it = body[Symbol.asyncIterator]();
  const first = await it.next();
  // Not `for await (... of body)`: leaving that loop early would destroy the request body.
  const rest = (async function* () {
    if (!first.done) yield first.value;
    for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
  })();
  if (first.done || first.value[0] !== 0x1f || first.value[1] !== 0x8b) return rest;
  // pipeline passes a failure of either side on to the gunzip stream, whose reader then throws it.
  return pipeline(Readable.from(rest), createGunzip(), () => undefined);
}

class Applier {
  size = 0;
  entries = 0;
  skippedXattrs = 0;
  /** Nanoseconds spent waiting for tree jobs before the next entry could be read. */
  waitNs = 0;
  /** Children each directory got from this layer's own entries: an opaque whiteout keeps these. */
  private readonly created = new Map<string, Set<string>>();
  /** Settles when the last queued job is done (rejects with the first failure). */
  private tail: Promise<void> = Promise.resolve();
  private queuedBytes = 0;
  private queuedJobs = 0;
  private failed = false;
  /** Wakes a reader waiting for room in the queue. */
  private roomWaiter: (() => void) | undefined;

  constructor(private readonly tree: TreeWriter) {}

  async apply(entry: TarEntry): Promise<void> {
    const h = entry.header;
    this.entries++;
    const rel = entryPath(h.name);
    const slash = rel.lastIndexOf('/');
    const dir = slash < 0 ? '' : rel.slice(0, slash);
    const base = rel.slice(slash + 1);
    if (rel === '') {
      if (h.type !== 'directory') throw new UnsafeEntryError('the layer root can only be a directory', h.name);
      return this.run(this.op(OpKind.Root, rel, h), h);
    }
    if (base.startsWith(WHITEOUT)) return this.whiteout(dir, base, h);
    let children = this.created.get(dir);
    if (!children) this.created.set(dir, (children = new Set()));
    children.add(base);

    switch (h.type) {
      case 'directory':
        return this.run(this.op(OpKind.Dir, rel, h), h);
      case 'file':
        return this.file(entry, this.op(OpKind.File, rel, h));
      case 'symlink':
        checkSymlinkTarget(dir, h.linkname, h.name);
        return this.run({ ...this.op(OpKind.Symlink, rel, h), link: pathBytes(h.linkname) }, h);
      case 'link': {
        // A hardlink shares its target's inode, attributes included: only the name is new.
        const target = entryPath(h.linkname);
        if (target === '') throw new UnsafeEntryError('hardlink to the layer root', h.name);
        return this.run({ kind: OpKind.Link, path: pathBytes(rel), link: pathBytes(target) }, h);
      }
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        const kind =
          h.type === 'fifo' ? OpKind.Fifo : h.type === 'block-device' ? OpKind.BlockDevice : OpKind.CharDevice;
        return this.run({ ...this.op(kind, rel, h), major: h.devmajor, minor: h.devminor }, h);
      }
      default:
        throw new UnsafeEntryError(`unsupported entry type ${JSON.stringify(h.typeflag)}`, h.name);
    }
  }

  private async file(entry: TarEntry, op: TreeOp): Promise<void> {
    const h = entry.header;
    if (h.size <= SMALL_FILE) {
      const data = await entry.readAll();
      await this.run({ ...op, data }, h, data.length);
    } else {
      await this.run({ ...op, stream: true }, h);
      const write = (batch: Buffer[], bytes: number) =>
        this.enqueue(() => this.tree.write(batch).then(() => 0), h, bytes);
      let batch: Buffer[] = [];
      let bytes = 0;
      for await (const piece of entry.data()) {
        batch.push(piece);
        bytes += piece.length;
        if (bytes < WRITE_BATCH) continue;
        await write(batch, bytes);
        batch = [];
        bytes = 0;
      }
      if (batch.length > 0) await write(batch, bytes);
      await this.enqueue(() => this.tree.finishFile(op), h);
    }
    this.size += h.size;
  }

  private async whiteout(dir: string, base: string, h: TarHeader): Promise<void> {
    if (base === OPAQUE) {
      const keep = [...(this.created.get(dir) ?? [])].sort(); // code-unit order = byte order for binary strings
      return this.run(
        { kind: OpKind.Opaque, path: pathBytes(dir), keep: pathBytes(keep.map((n) => `${n}\0`).join('')) },
        h,
      );
    }
    if (dir === '' && base.startsWith(AUFS_META)) return;
    const victim = base.slice(WHITEOUT.length);
    if (victim === '' || victim === '.' || victim === '..') {
      throw new UnsafeEntryError(
        `a whiteout must name a file, not ${JSON.stringify(victim)} (overlay2 refuses it too)`,
        h.name,
      );
    }
    return this.run({ kind: OpKind.Whiteout, path: pathBytes(dir ? `${dir}/${victim}` : victim) }, h);
  }

  /** The op of an entry with its owner, mode, time and extended attributes. */
  private op(kind: OpKind, rel: string, h: TarHeader): TreeOp {
    return {
      kind,
      path: pathBytes(rel),
      mode: h.mode,
      uid: h.uid,
      gid: h.gid,
      sec: h.mtime.sec,
      nsec: h.mtime.nsec,
      xattrs: xattrs(h),
    };
  }

  /** Queues an entry's op (see enqueue). */
  private run(op: TreeOp, h: TarHeader, bytes = 0): Promise<void> {
    return this.enqueue(() => this.tree.apply(op), h, bytes);
  }

  /**
   * Queues a tree job (resolving with the extended attributes it skipped) behind the others and
   * returns at once while the queue has room, so that reading and parsing the tar goes on while
   * the jobs run on the threadpool, one at a time and in tar order. After a failure no job runs
   * any more: the failure surfaces at the next enqueue or settle, named after its own entry.
   */
  private async enqueue(job: () => Promise<number>, h: TarHeader, bytes = 0): Promise<void> {
    while (!this.failed && (this.queuedBytes + bytes > QUEUE_BYTES || this.queuedJobs >= QUEUE_JOBS)) {
      if (this.queuedJobs === 0) break; // one job larger than the queue still goes
      await this.waited(new Promise<void>((resolve) => (this.roomWaiter = resolve)));
    }
    if (this.failed) return this.tail;
    this.queuedBytes += bytes;
    this.queuedJobs++;
    const done = this.tail
      .then(job)
      .then(
        (skipped) => void (this.skippedXattrs += skipped),
        (err: unknown) => {
          this.failed = true;
          return Promise.reject(entryError(err, h.name));
        },
      )
      .finally(() => {
        this.queuedBytes -= bytes;
        this.queuedJobs--;
        const wake = this.roomWaiter;
        this.roomWaiter = undefined;
        wake?.();
      });
    done.catch(() => undefined); // awaited later: not an unhandled rejection meanwhile
    this.tail = done;
  }

  private async waited<T>(p: Promise<T>): Promise<T> {
    const t0 = process.hrtime.bigint();
    try {
      return await p;
    } finally {
      this.waitNs += Number(process.hrtime.bigint() - t0);
    }
  }

  /** Waits for every queued job (rejects with the first failure). */
  settle(): Promise<void> {
    return this.waited(this.tail);
  }
}

/** Extended attributes from PAX records `SCHILY.xattr.NAME=VALUE` (Docker, Go, GNU tar, bsdtar), values as bytes. */
function xattrs(h: TarHeader): Buffer[] | undefined {
  let out: Buffer[] | undefined;
  for (const [key, value] of h.pax) {
    if (key.startsWith('SCHILY.xattr.')) (out ??= []).push(pathBytes(key.slice('SCHILY.xattr.'.length)), value);
  }
  return out;
}

/** A tree writer failure as one of our errors, naming the entry. */
function entryError(err: unknown, name: string): SlackerError {
  if (err instanceof SlackerError) return err;
  const code = systemErrorCode(err);
  const message = `layer tar entry ${name.startsWith('(') ? name : displayName(name)}: ${(err as Error).message}`;
  const options = { cause: err, context: { entry: name, errno: code } };
  if (code === 'ENOSPC' || code === 'EDQUOT') return new NoSpaceError(message, options);
  if (code === 'EIO' || code === 'EROFS' || code === 'ENOMEM' || code === 'EMFILE')
    return new IoError(message, options);
  return new InvalidArgumentError(message, options);
}
