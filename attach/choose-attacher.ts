/**
 * Which attacher this host uses: `auto` picks the kernel NBD driver when /dev/nbd0 exists,
 * else nbdfuse (a config override names one). `readaheadKib` sets the kernel's readahead window on
 * the devices it attaches (read-ahead.ts).
 */
import { existsSync } from 'node:fs';
import { ConfigError } from '../common/errors.js';
import type { Attacher, AttachMethod } from './attacher.js';
import { NbdClientAttacher } from './nbd-client.js';
import { NbdfuseAttacher } from './nbdfuse.js';

export function chooseAttacher(preference: AttachMethod | 'auto', options: { readaheadKib?: number } = {}): Attacher {
  const method = preference === 'auto' ? (existsSync('/dev/nbd0') ? 'nbd-client' : 'nbdfuse') : preference;
  switch (method) {
    case 'nbd-client':
      return new NbdClientAttacher(options);
    case 'nbdfuse':
      return new NbdfuseAttacher(options);
    default:
      throw new ConfigError(`unknown attach method ${String(method)}: use auto, nbd-client or nbdfuse`);
  }
}
