/**
 * Marker layers, the Slacker way of moving a layer: instead of its files, the layer tar carries
 * the reference of a published snapshot. It is one directory entry for the root (`./`) with a
 * PAX record `SLACKER.snapshot=<ref>`; no file data, so dockerd's tar-split can rebuild it
 * byte for byte from headers alone, and other storage drivers see an empty layer.
 */
import { pack as tarPack, type Header } from 'tar-stream';
import { isDigest, type Digest } from '../../volumes/types.js';

export const MARKER_RECORD = 'SLACKER.snapshot';

/** The snapshot reference a first tar entry carries, if it is a marker. */
export function markerRef(header: Header): Digest | undefined {
  const ref = paxRecords(header)[MARKER_RECORD];
  return header.type === 'directory' && ref !== undefined && isDigest(ref) ? ref : undefined;
}

/** A header's PAX records (tar-stream decodes them as UTF-8 strings). */
export function paxRecords(header: Header): Record<string, string> {
  return (header.pax ?? {}) as Record<string, string>;
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
