/**
 * read-only filter: exposes a backend without any of its write operations, so the export is
 * advertised NBD_FLAG_READ_ONLY and every write-type request is refused with EPERM.
 */
import type { Backend } from '../backend.js';

export function readOnly(next: Backend): Backend {
  const filtered: Backend = {
    kind: next.kind,
    size: next.size,
    pread: (length, offset) => next.pread(length, offset),
    // Nothing can be written, so everything is always "flushed" and visible on every connection.
    multiConn: true,
  };
  if (next.description !== undefined) Object.assign(filtered, { description: next.description });
  if (next.blockSizes) Object.assign(filtered, { blockSizes: next.blockSizes });
  if (next.cache) filtered.cache = next.cache.bind(next);
  if (next.extents) filtered.extents = next.extents.bind(next);
  if (next.fileSlices) filtered.fileSlices = next.fileSlices.bind(next);
  if (next.localize) filtered.localize = next.localize.bind(next);
  if (next.close) filtered.close = next.close.bind(next);
  return filtered;
}
