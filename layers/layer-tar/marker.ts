/**
 * Marker layers, the Slacker way of moving a layer: instead of its files, the layer tar carries
 * the reference of a published snapshot. Three entries, no file data:
 *   ./                        the root directory, with a PAX record `SLACKER.snapshot=<ref>`
 *   .slacker/                 a directory
 *   .slacker/sha256:<hex>     an empty regular file named by the reference
 * Why both: dockerd hands the graphdriver the whole tar, PAX record included; containerd's
 * applier skips the `./` entry and unknown PAX records, so only a real file reaches a containerd
 * snapshotter (or our differ). The file is empty so that dockerd's tar-split rebuilds the tar
 * from headers alone (it reads no file for an empty entry), and the reference is in its name.
 * Other storage drivers see an empty directory `.slacker` with one empty file.
 * A marker tar of the first version (the `./` entry only) is still read.
 */
import { pack as tarPack } from 'tar-stream';
import { InvalidArgumentError } from '../../common/errors.js';
import { isDigest, type Digest } from '../../common/digests.js';
import { displayName, entryPath } from './paths.js';
import type { TarEntry, TarHeader } from './tar-reader.js';

export const MARKER_RECORD = 'SLACKER.snapshot';
/** The directory holding the marker file, at the layer root. */
export const MARKER_DIR = '.slacker';

/**
 * The snapshot reference a first tar entry carries, if it is a marker: the root directory with
 * the record. A record that is not a snapshot reference is an error, not an ordinary layer.
 */
function recordRef(header: TarHeader): Digest | undefined {
  const record = header.pax.get(MARKER_RECORD);
  if (record === undefined || header.type !== 'directory' || entryPath(header.name) !== '') return undefined;
  const ref = record.toString('latin1');
  if (!isDigest(ref)) {
    throw new InvalidArgumentError(`marker layer with a malformed snapshot reference ${JSON.stringify(ref)}`);
  }
  return ref;
}

/** The reference a `.slacker/<ref>` entry names, if it is an empty regular file named so. */
function fileRef(header: TarHeader): Digest | undefined {
  const path = entryPath(header.name);
  if (header.type !== 'file' || header.size !== 0 || !path.startsWith(`${MARKER_DIR}/`)) return undefined;
  const ref = path.slice(MARKER_DIR.length + 1);
  return isDigest(ref) ? ref : undefined;
}

/**
 * Reads the first entries of a layer tar and decides whether it is a marker. Returns the
 * reference of a marker (having read the tar to its end), or undefined for an ordinary layer;
 * either way `peeked` holds the entries read so far, in order, which an ordinary layer's applier
 * applies first. It never reads past an entry with data, so a peeked entry's data is still there.
 * A tar that starts as a marker (the PAX record) but holds anything else is an error.
 */
export async function readMarker(entries: AsyncIterator<TarEntry>, peeked: TarEntry[]): Promise<Digest | undefined> {
  const take = async (): Promise<TarEntry | undefined> => {
    const r = await entries.next();
    if (r.done) return undefined;
    peeked.push(r.value);
    return r.value;
  };
  let e = await take();
  if (!e) return undefined;
  const record = recordRef(e.header);
  const notOnlyMarker = (what: TarHeader): InvalidArgumentError =>
    new InvalidArgumentError(
      `a marker layer holds only its marker entries, but this one goes on with ${displayName(what.name)}`,
      { context: { ref: record } },
    );
  if (entryPath(e.header.name) === '' && e.header.type === 'directory') {
    e = await take();
    if (!e) return record; // a first-version marker, or an empty layer
  }
  // `.slacker/` then `.slacker/<ref>`, then the end.
  if (e.header.type !== 'directory' || entryPath(e.header.name) !== MARKER_DIR) {
    if (record) throw notOnlyMarker(e.header);
    return undefined;
  }
  e = await take();
  const ref = e ? fileRef(e.header) : undefined;
  if (!e || !ref) {
    if (record) throw notOnlyMarker(e?.header ?? peeked.at(-1)!.header);
    return undefined;
  }
  if (record && ref !== record) {
    throw new InvalidArgumentError(`marker layer names two snapshots: ${record} in its record, ${ref} in its file`, {
      context: { record, ref },
    });
  }
  const after = await take();
  if (after) {
    if (record) throw notOnlyMarker(after.header);
    return undefined; // an ordinary layer that happens to start like a marker
  }
  return ref;
}

/** The complete marker tar of a snapshot (a few KiB; deterministic for a given reference). */
export async function markerTar(ref: Digest): Promise<Buffer> {
  const p = tarPack();
  const common = { uid: 0, gid: 0, mtime: new Date(0) };
  p.entry({ ...common, name: './', type: 'directory', mode: 0o755, pax: { [MARKER_RECORD]: ref } });
  p.entry({ ...common, name: `./${MARKER_DIR}/`, type: 'directory', mode: 0o755 });
  p.entry({ ...common, name: `./${MARKER_DIR}/${ref}`, type: 'file', mode: 0o444, size: 0 }, Buffer.alloc(0));
  p.finalize();
  const parts: Buffer[] = [];
  for await (const b of p) parts.push(b as Buffer);
  return Buffer.concat(parts);
}
