/**
 * Marker layers, the Slacker way of moving a layer: instead of its files, the layer tar carries
 * the reference of a published snapshot. It is one directory entry for the root (`./`) with a
 * PAX record `SLACKER.snapshot=<ref>`; no file data, so dockerd's tar-split can rebuild it
 * byte for byte from headers alone, and other storage drivers see an empty layer.
 */
import { pack as tarPack } from 'tar-stream';
import { InvalidArgumentError } from '../../common/errors.js';
import { isDigest, type Digest } from '../../common/digests.js';
import { entryPath } from './paths.js';
import type { TarHeader } from './tar-reader.js';

export const MARKER_RECORD = 'SLACKER.snapshot';

/**
 * The snapshot reference a first tar entry carries, if it is a marker: the root directory with
 * the record. A record that is not a snapshot reference is an error, not an ordinary layer.
 */
export function markerRef(header: TarHeader): Digest | undefined {
  const record = header.pax.get(MARKER_RECORD);
  if (record === undefined || header.type !== 'directory' || entryPath(header.name) !== '') return undefined;
  const ref = record.toString('latin1');
  if (!isDigest(ref)) {
    throw new InvalidArgumentError(`marker layer with a malformed snapshot reference ${JSON.stringify(ref)}`);
  }
  return ref;
}

/** The complete marker tar of a snapshot (a few KiB; deterministic for a given reference). */
export async function markerTar(ref: Digest): Promise<Buffer> {
  const p = tarPack();
  p.entry({
    name: './',
    type: 'directory',
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtime: new Date(0),
    pax: { [MARKER_RECORD]: ref },
  });
  p.finalize();
  const parts: Buffer[] = [];
  for await (const b of p) parts.push(b as Buffer);
  return Buffer.concat(parts);
}
