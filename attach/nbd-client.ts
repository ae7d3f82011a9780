/**
 * The kernel NBD driver through nbd-client (Debian package nbd-client). Timeout policy: the
 * server fails a read whose chunk cannot be fetched with EIO within its fetch deadline (15 s by
 * default), so the kernel's request timeout is set well above it (60 s): a slow lazy fetch never
 * makes the kernel tear the device down, and a dead server does not hang I/O forever.
 *
 * Not exercised on the development machine (its kernel has no NBD driver); nbdfuse is.
 */
import { readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { run } from '../common/exec.js';
import { NotSupportedError } from '../common/errors.js';
import { claimUnmounted } from './exclusive-claim.js';
import { attachFile } from './loop.js';
import { DEFAULT_READAHEAD_KIB, setReadahead } from './read-ahead.js';
import { warmPrograms } from './warm.js';
import type { Attacher, BlockDevice, DeviceRecord, NbdTarget } from './attacher.js';

const KERNEL_TIMEOUT_S = 60;

export class NbdClientAttacher implements Attacher {
  readonly method = 'nbd-client';
  readonly attachFile = attachFile;

  /** `readaheadKib`: the device's readahead window (read-ahead.ts says why it is set). */
  constructor(private readonly options: { readaheadKib?: number } = {}) {}

  warm(): Promise<void> {
    return warmPrograms([
      ['nbd-client', '--help'],
      ['losetup', '--version'],
    ]);
  }

  async attach(target: NbdTarget, _workDir: string, options: { readOnly: boolean }): Promise<BlockDevice> {
    const device = await freeDevice();
    await run('nbd-client', [
      '-unix',
      target.socket,
      '-N',
      target.exportName,
      device,
      '-timeout',
      String(KERNEL_TIMEOUT_S),
      ...(options.readOnly ? ['-readonly'] : []),
    ]);
    const attached = connected(device);
    try {
      await setReadahead(device, this.options.readaheadKib ?? DEFAULT_READAHEAD_KIB);
    } catch (err) {
      await attached.detach();
      throw err;
    }
    return attached;
  }

  /** A device whose kernel NBD connection (to the relay) is still up: its sysfs pid file exists. */
  async adopt(record: DeviceRecord): Promise<BlockDevice | undefined> {
    const name = /^\/dev\/(nbd\d+)$/.exec(record.path)?.[1];
    if (!name) return undefined;
    const up = await readFile(`/sys/block/${name}/pid`, 'utf8').then(
      () => true,
      () => false,
    );
    return up ? connected(record.path) : undefined;
  }
}

function connected(device: string): BlockDevice {
  let attached = true;
  return {
    path: device,
    method: 'nbd-client',
    record: { method: 'nbd-client', path: device },
    claim: () => claimUnmounted(device),
    detach: async () => {
      if (!attached) return;
      attached = false;
      await run('nbd-client', ['-d', device]);
    },
  };
}

/** The first /dev/nbdN with no client connected (its sysfs pid file is absent). */
async function freeDevice(): Promise<string> {
  const names = readdirSync('/sys/block').filter((n) => /^nbd\d+$/.test(n));
  for (const name of names.sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)))) {
    const busy = await readFile(`/sys/block/${name}/pid`, 'utf8').then(
      () => true,
      () => false,
    );
    if (!busy) return `/dev/${name}`;
  }
  throw new NotSupportedError('no free /dev/nbd device (is the nbd module loaded with enough nbds_max?)');
}
