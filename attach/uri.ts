import type { NbdTarget } from './attacher.js';

/** nbd+unix URI (RFC-style, as libnbd parses it) of an export on a unix socket. */
export function nbdUnixUri(t: NbdTarget): string {
  return `nbd+unix:///${encodeURIComponent(t.exportName)}?socket=${encodeURIComponent(t.socket)}`;
}
