/**
 * What changed between a layer's tree and its parent's, as `docker diff` and DiffSize report it
 * (moby's rules: a path is modified when its type, mode, owner, device, or, for non-directories,
 * size or mtime differ; a directory is also modified whenever an entry inside it was added,
 * changed or removed, as overlay2 reports it). Both trees are walked without following symlinks,
 * a call at a time through mount-calls.ts's gate.
 * The size is the bytes of the added and modified files: what a layer tar of the changes carries.
 */
import { join } from 'node:path';
import { mountFs } from './mount-calls.js';

export const enum ChangeKind {
  Modify = 0,
  Add = 1,
  Delete = 2,
}

export interface Change {
  Path: string;
  Kind: ChangeKind;
}

/** ext4's own directory, present in every layer: not part of any image. */
const IGNORED = new Set(['/lost+found']);

/** The fields a comparison looks at of a path, as JSON keeps them. */
export interface RecordedStat {
  mode: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  mtimeMs: number;
}

/** What a comparison looks at of a path: an `fs.Stats`, or one recorded earlier (fromRecorded). */
export interface EntryStat extends RecordedStat {
  isDirectory(): boolean;
  isFile(): boolean;
}

export function toRecorded(st: EntryStat): RecordedStat {
  return { mode: st.mode, uid: st.uid, gid: st.gid, rdev: st.rdev, size: st.size, mtimeMs: st.mtimeMs };
}

export function fromRecorded(r: RecordedStat): EntryStat {
  const type = r.mode & 0o170000;
  return { ...r, isDirectory: () => type === 0o040000, isFile: () => type === 0o100000 };
}

async function walk(root: string): Promise<Map<string, EntryStat>> {
  const out = new Map<string, EntryStat>();
  const visit = async (rel: string): Promise<void> => {
    for (const name of await mountFs.readdir(join(root, rel))) {
      const path = `${rel}/${name}`;
      if (IGNORED.has(path)) continue;
      const st = await mountFs.lstat(join(root, path));
      out.set(path, st);
      if (st.isDirectory()) await visit(path);
    }
  };
  await visit('');
  return out;
}

function differs(a: EntryStat, b: EntryStat): boolean {
  if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || a.rdev !== b.rdev) return true;
  return !a.isDirectory() && (a.size !== b.size || a.mtimeMs !== b.mtimeMs);
}

/**
 * Changes of `layer` relative to `parent` (undefined: an empty parent), sorted by path.
 * `parentAlso`: paths the parent has beyond its tree (a container's init layer that has no
 * tree of its own: plugin/init-layers.ts).
 */
export async function changes(
  layer: string,
  parent: string | undefined,
  parentAlso?: ReadonlyMap<string, EntryStat>,
): Promise<{ changes: Change[]; size: number }> {
  const now = await walk(layer);
  const before = parent ? await walk(parent) : new Map<string, EntryStat>();
  for (const [path, st] of parentAlso ?? []) before.set(path, st);
  const out: Change[] = [];
  let size = 0;
  for (const [path, st] of now) {
    const old = before.get(path);
    if (old && !differs(old, st)) continue;
    out.push({ Path: path, Kind: old ? ChangeKind.Modify : ChangeKind.Add });
    if (st.isFile()) size += st.size;
  }
  for (const path of before.keys()) {
    // A deleted directory is one change: its contents are not listed (as moby does).
    const parentGone = !now.has(path.slice(0, path.lastIndexOf('/'))) && path.lastIndexOf('/') > 0;
    if (!now.has(path) && !parentGone) out.push({ Path: path, Kind: ChangeKind.Delete });
  }
  // Every directory above a change changed too (moby lists it as modified); the root is not listed.
  const listed = new Set(out.map((c) => c.Path));
  for (const c of [...out]) {
    for (let dir = c.Path.slice(0, c.Path.lastIndexOf('/')); dir !== ''; dir = dir.slice(0, dir.lastIndexOf('/'))) {
      if (listed.has(dir)) continue;
      listed.add(dir);
      if (now.has(dir) && before.has(dir)) out.push({ Path: dir, Kind: ChangeKind.Modify });
    }
  }
  out.sort((a, b) => (a.Path < b.Path ? -1 : a.Path > b.Path ? 1 : 0));
  return { changes: out, size };
}
