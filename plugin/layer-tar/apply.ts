/**
 * Applying an ordinary layer tar to a mounted layer with OCI image-layer semantics: whiteouts
 * (`.wh.<name>` deletes a lower file, `.wh..wh..opq` hides a directory's lower contents),
 * hardlinks, symlinks, devices and FIFOs, ownership, modes, times and extended attributes.
 * Streams entry by entry: file data goes from the request body to disk without being held.
 * Unsafe entries (paths above the root, symlink escapes) stop the apply with UnsafeEntryError;
 * the caller discards the half-written layer (it is a fresh clone, so nothing is lost).
 */
import { createWriteStream } from 'node:fs';
import { chmod, lchown, link, lutimes, mkdir, readdir, rm, symlink, lstat, utimes } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { extract, type Header } from 'tar-stream';
import { constants } from 'node:fs';
import { fileOps } from '../../common/fileops.js';
import { entryPath, resolveAll, resolveParent, UnsafeEntryError } from './paths.js';
import { markerRef, paxRecords } from './marker.js';
import type { Digest } from '../../volumes/types.js';

/** An entry's data stream (a streamx Readable). */
type EntryData = AsyncIterable<unknown> & { resume(): unknown };

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';

export type ApplyResult = { kind: 'marker'; ref: Digest } | { kind: 'files'; size: number; entries: number };

/**
 * Reads a layer tar. A marker layer (first entry) is returned as its reference without touching
 * any file system; otherwise `root()` is called once, at the first entry, for the directory to
 * apply to, and every entry is applied there.
 */
export async function applyLayerTar(body: Readable, root: () => Promise<string>): Promise<ApplyResult> {
  const ex = extract();
  let applier: Applier | undefined;
  let marker: Digest | undefined;
  let first = true;
  const done = pipeline(body, ex);
  try {
    for await (const entry of ex) {
      const h = entry.header;
      if (first) {
        first = false;
        marker = markerRef(h);
      }
      if (marker) {
        entry.resume(); // the rest of a marker tar (nothing, normally) is ignored
        continue;
      }
      applier ??= new Applier(await root());
      await applier.apply(h, entry);
    }
    await done;
  } catch (err) {
    // Stop reading the body; the pipeline's own error (if any) is the same failure.
    ex.destroy();
    await done.catch(() => undefined);
    throw err;
  }
  if (marker) return { kind: 'marker', ref: marker };
  if (applier) await applier.finish();
  return { kind: 'files', size: applier?.size ?? 0, entries: applier?.entries ?? 0 };
}

class Applier {
  size = 0;
  entries = 0;
  /** Paths this layer created: an opaque whiteout keeps these and hides the rest. */
  private readonly created = new Set<string>();
  /** Directory times are set last: writing their children would change them again. */
  private readonly dirTimes: { path: string; mtime: Date }[] = [];

  constructor(private readonly root: string) {}

  async apply(h: Header, data: EntryData): Promise<void> {
    this.entries++;
    const rel = entryPath(h.name);
    const base = rel.slice(rel.lastIndexOf('/') + 1);
    if (base === OPAQUE) {
      data.resume();
      return this.opaque(rel.slice(0, -OPAQUE.length - 1), h.name);
    }
    if (base.startsWith(WHITEOUT)) {
      data.resume();
      const victim = await resolveParent(this.root, join(dirname(rel), base.slice(WHITEOUT.length)), h.name);
      await rm(victim, { recursive: true, force: true });
      return;
    }
    const path = await resolveParent(this.root, rel, h.name);
    if (rel === '') {
      data.resume();
      await this.attributes(this.root, h);
      return;
    }
    await mkdir(dirname(path), { recursive: true });
    await this.clear(path, h.type === 'directory');
    this.created.add(rel);
    switch (h.type) {
      case 'directory':
        data.resume();
        await mkdir(path, { recursive: true });
        break;
      case 'file':
      case 'contiguous-file':
        await pipeline(data, createWriteStream(path, { mode: 0o600 }));
        this.size += h.size ?? 0;
        break;
      case 'symlink':
        data.resume();
        await symlink(h.linkname ?? '', path);
        break;
      case 'link': {
        data.resume();
        // link(2) does not follow a final symlink: the new name shares the target entry itself.
        const target = await resolveParent(this.root, entryPath(h.linkname ?? ''), h.name);
        await link(target, path);
        return; // a hardlink shares its target's inode, attributes included
      }
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        data.resume();
        const kind =
          h.type === 'fifo' ? constants.S_IFIFO : h.type === 'block-device' ? constants.S_IFBLK : constants.S_IFCHR;
        fileOps.mknod(path, kind | (h.mode ?? 0o644), h.devmajor ?? 0, h.devminor ?? 0);
        break;
      }
      default:
        data.resume();
        throw new UnsafeEntryError(`unsupported entry type ${String(h.type)}`, h.name);
    }
    await this.attributes(path, h);
  }

  /** Directory times, once every entry is in. */
  async finish(): Promise<void> {
    for (const { path, mtime } of this.dirTimes.reverse()) await utimes(path, mtime, mtime);
  }

  /** An existing path in the way of a new entry goes, unless both are directories (merged). */
  private async clear(path: string, isDir: boolean): Promise<void> {
    const st = await lstat(path).catch(() => undefined);
    if (!st || (isDir && st.isDirectory())) return;
    await rm(path, { recursive: true, force: true });
  }

  private async opaque(dirRel: string, name: string): Promise<void> {
    const dir = await resolveAll(this.root, dirRel, name);
    await mkdir(dir, { recursive: true });
    for (const child of await readdir(dir)) {
      const rel = dirRel ? `${dirRel}/${child}` : child;
      if (!this.created.has(rel)) await rm(join(dir, child), { recursive: true, force: true });
    }
  }

  private async attributes(path: string, h: Header): Promise<void> {
    await lchown(path, h.uid ?? 0, h.gid ?? 0);
    for (const [key, value] of Object.entries(paxRecords(h))) {
      if (key.startsWith('SCHILY.xattr.'))
        fileOps.lsetxattr(path, key.slice('SCHILY.xattr.'.length), Buffer.from(value));
    }
    const mtime = h.mtime ?? new Date(0);
    if (h.type === 'symlink') {
      await lutimes(path, mtime, mtime);
      return;
    }
    await chmod(path, h.mode ?? 0o644); // after chown, which clears set-id bits
    if (h.type === 'directory') this.dirTimes.push({ path, mtime });
    else await utimes(path, mtime, mtime);
  }
}
