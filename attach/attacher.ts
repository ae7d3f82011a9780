/**
 * Turning an NBD export into a local block device. Two ways, one interface:
 *   - nbd-client: the kernel NBD driver (/dev/nbdN), where the kernel has it;
 *   - nbdfuse: libnbd's FUSE file plus a loop device, which works wherever FUSE does.
 * `chooseAttacher('auto')` picks the kernel driver when /dev/nbd0 exists, else nbdfuse.
 * Knows nothing of volumes or Docker: it is given a unix socket and an export name.
 */
import { existsSync } from 'node:fs';
import { ConfigError } from '../common/errors.js';
import { NbdClientAttacher } from './nbd-client.js';
import { NbdfuseAttacher } from './nbdfuse.js';

export type AttachMethod = 'nbd-client' | 'nbdfuse';
export const ATTACH_METHODS: readonly AttachMethod[] = ['nbd-client', 'nbdfuse'];

/** Where the export is served: a unix socket of this host's NBD server. */
export interface NbdTarget {
  socket: string;
  exportName: string;
}

export interface BlockDevice {
  /** The device node to mount (/dev/nbdN or /dev/loopN). */
  readonly path: string;
  readonly method: AttachMethod;
  /** Undoes the attach; idempotent. */
  detach(): Promise<void>;
}

export interface Attacher {
  readonly method: AttachMethod;
  /** `workDir` is this attachment's own scratch directory (nbdfuse puts its file there). */
  attach(target: NbdTarget, workDir: string, options: { readOnly: boolean }): Promise<BlockDevice>;
}

export function chooseAttacher(preference: AttachMethod | 'auto'): Attacher {
  const method = preference === 'auto' ? (existsSync('/dev/nbd0') ? 'nbd-client' : 'nbdfuse') : preference;
  switch (method) {
    case 'nbd-client':
      return new NbdClientAttacher();
    case 'nbdfuse':
      return new NbdfuseAttacher();
    default:
      throw new ConfigError(`unknown attach method ${String(method)}: use auto, nbd-client or nbdfuse`);
  }
}
