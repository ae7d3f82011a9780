/**
 * Fakes for running the layer core (volumes, NBD server, layer mounts, the graphdriver logic)
 * where the kernel parts are not wanted: a fake attacher and a fake file system, made for each
 * other.
 *   - FakeAttacher "attaches" an export by opening an NBD session to it (our raw client over
 *     the server's unix socket): every byte still goes through the real NBD server and volume.
 *   - tarfs keeps a directory tree as a tar at the start of the device (a 16-byte header:
 *     magic and length). Mounting extracts it into the mount point (a plain directory);
 *     unmounting and freezing write the tree back. GNU tar keeps owners, modes, times and xattrs.
 * The real pair is the nbdfuse/nbd-client attacher with ext4; both run the same conformance suite.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Attacher, BlockDevice, NbdTarget } from '../../attach/attacher.js';
import type { LayerFilesystem } from '../../attach/filesystem.js';
import type { ByteRange } from '../../block/ranges.js';
import { IoError, NoSpaceError } from '../../common/errors.js';
import { KeyedLock } from '../../common/keyed-lock.js';
import { run } from '../../common/exec.js';
import { CMD } from '../../nbd-server/protocol.js';
import { RawClient } from './raw-client.js';

/** An NBD session to one export, by byte range. */
class FakeDevice implements BlockDevice {
  readonly method = 'fake';
  private handle = 1n;

  constructor(
    readonly path: string,
    private readonly client: RawClient,
    readonly size: number,
    readonly readOnly: boolean,
    private readonly target: NbdTarget,
  ) {}

  /** As a kernel cache would be filled: the ranges read through a session of their own. */
  async readIntoCache(ranges: readonly ByteRange[]): Promise<void> {
    const client = await RawClient.connect({ path: this.target.socket });
    try {
      await client.go(this.target.exportName);
      let handle = 1n;
      for (const r of ranges) {
        client.sendRequest({ type: CMD.READ, offset: r.offset, length: r.length, handle: handle++ });
        if ((await client.simpleReply(r.length)).error) throw new IoError('fake device cache fill failed');
      }
      client.sendRequest({ type: CMD.DISC });
    } finally {
      client.destroy();
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (let at = 0; at < length; at += 1 << 20) {
      const n = Math.min(1 << 20, length - at);
      this.client.sendRequest({ type: CMD.READ, offset: offset + at, length: n, handle: this.handle++ });
      const r = await this.client.simpleReply(n);
      if (r.error) throw new IoError(`fake device read failed: NBD error ${r.error}`);
      parts.push(r.data);
    }
    return Buffer.concat(parts);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    for (let at = 0; at < data.length; at += 1 << 20) {
      const piece = data.subarray(at, at + (1 << 20));
      this.client.sendRequest({ type: CMD.WRITE, offset: offset + at, data: piece, handle: this.handle++ });
      const r = await this.client.simpleReply();
      if (r.error) throw new IoError(`fake device write failed: NBD error ${r.error}`);
    }
    this.client.sendRequest({ type: CMD.FLUSH, handle: this.handle++ });
    if ((await this.client.simpleReply()).error) throw new IoError('fake device flush failed');
  }

  async detach(): Promise<void> {
    devices.delete(this.path);
    this.client.sendRequest({ type: CMD.DISC });
    this.client.destroy();
  }
}

/** Attached fake devices by path, for tarfs. */
const devices = new Map<string, FakeDevice>();

export class FakeAttacher implements Attacher {
  readonly method = 'fake';

  async attach(target: NbdTarget, workDir: string, options: { readOnly: boolean }): Promise<BlockDevice> {
    const client = await RawClient.connect({ path: target.socket });
    const { size } = await client.go(target.exportName);
    const device = new FakeDevice(join(workDir, 'fake-device'), client, Number(size), options.readOnly, target);
    devices.set(device.path, device);
    return device;
  }
}

const MAGIC = Buffer.from('TARFS001');
const HEADER = 16;
const mounted = new Map<string, { device: FakeDevice; readOnly: boolean }>();

function device(path: string): FakeDevice {
  const d = devices.get(path);
  if (!d) throw new IoError(`no fake device ${path} is attached`);
  return d;
}

/**
 * One write-out of a mounted tree at a time, as the kernel serialises syncfs, freeze and unmount
 * on a superblock: a layer's background sync after its last Put and a publish's freeze of it
 * used to race on the scratch file (one read it after the other had removed it).
 */
const writingOut = new KeyedLock<string>();

function writeTree(dir: string, d: FakeDevice): Promise<void> {
  return writingOut.run(dir, async () => {
    const scratch = `${dir}.tarfs`;
    await run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', dir, '-cf', scratch, '.']);
    const tar = await readFile(scratch);
    await rm(scratch, { force: true });
    if (HEADER + tar.length > d.size)
      throw new NoSpaceError(`tarfs: ${tar.length} bytes do not fit a ${d.size}-byte device`);
    const header = Buffer.alloc(HEADER);
    MAGIC.copy(header);
    header.writeBigUInt64BE(BigInt(tar.length), 8);
    await d.write(0, Buffer.concat([header, tar]));
  });
}

export const tarfs: LayerFilesystem = {
  name: 'tarfs',
  async mkfs(path) {
    const scratch = `${path}.mkfs`;
    await mkdir(join(scratch, 'lost+found'), { recursive: true }); // as mkfs.ext4 leaves it
    await writeTree(scratch, device(path));
    await rm(scratch, { recursive: true, force: true });
  },
  async mount(path, dir, { readOnly }) {
    const d = device(path);
    const header = await d.read(0, HEADER);
    if (!header.subarray(0, 8).equals(MAGIC)) throw new IoError(`tarfs: no file system on ${path}`);
    const tar = await d.read(HEADER, Number(header.readBigUInt64BE(8)));
    await mkdir(dir, { recursive: true });
    const scratch = `${dir}.tarfs`;
    await writeFile(scratch, tar);
    await run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', dir, '-xpf', scratch]);
    await rm(scratch, { force: true });
    mounted.set(dir, { device: d, readOnly });
  },
  async unmount(dir) {
    const m = mounted.get(dir);
    if (!m) throw new IoError(`tarfs: ${dir} is not mounted`);
    if (!m.readOnly) await writeTree(dir, m.device);
    mounted.delete(dir);
    await run('rm', ['-rf', dir]);
  },
  async freeze(dir) {
    const m = mounted.get(dir);
    if (m && !m.readOnly) await writeTree(dir, m.device);
  },
  async unfreeze() {},
  // Written out as a freeze writes it: the device then holds the tree as it is now.
  async sync(dir) {
    const m = mounted.get(dir);
    if (m && !m.readOnly) await writeTree(dir, m.device);
  },
};
