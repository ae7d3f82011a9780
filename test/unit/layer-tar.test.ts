/**
 * Applying layer tars on a real directory (as root): OCI whiteouts and opaque directories,
 * links, devices, ownership and modes, symlinks in parent paths resolved inside the layer root,
 * and the unsafe entries that must be refused. Marker tars are recognised without a root.
 */
import { lstat, mkdir, readFile, readdir, readlink, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { run } from '../../common/exec.js';
import { applyLayerTar } from '../../layers/layer-tar/apply.js';
import { tarOf } from '../../plugin/image-archive.js';
import { markerTar } from '../../layers/layer-tar/marker.js';
import { pack } from 'tar-stream';
import { requireRoot } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';
import type { Digest } from '../../common/digests.js';

let dir: Awaited<ReturnType<typeof tempDir>>;
let root: string;
beforeEach(async () => {
  requireRoot();
  dir = await tempDir('slacker-tar-');
  root = join(dir.path, 'root');
  await mkdir(root);
});
afterEach(() => dir.cleanup());

const apply = (tar: Buffer) => applyLayerTar(Readable.from([tar]), async () => root);

/** A tar with full headers (owners, devices, PAX records), which tarOf does not make. */
async function rawTar(entries: (Record<string, unknown> & { name: string; data?: string })[]): Promise<Buffer> {
  const p = pack();
  for (const { data, ...h } of entries) p.entry({ mtime: new Date(1_000_000_000_000), ...h }, data ?? '');
  p.finalize();
  const parts: Buffer[] = [];
  for await (const b of p) parts.push(b as Buffer);
  return Buffer.concat(parts);
}

describe('applyLayerTar', () => {
  it('whiteouts delete lower files; an opaque directory keeps only what this layer adds', async () => {
    await mkdir(join(root, 'etc/old'), { recursive: true });
    await writeFile(join(root, 'etc/gone'), 'x');
    await writeFile(join(root, 'etc/old/a'), 'lower');
    await writeFile(join(root, 'etc/keep'), 'lower');
    const r = await apply(
      await tarOf([
        { name: 'etc/.wh.gone' },
        { name: 'etc/old/', type: 'directory' },
        { name: 'etc/old/.wh..wh..opq' },
        { name: 'etc/old/b', data: 'upper' },
      ]),
    );
    expect(r).toMatchObject({ kind: 'files', size: 5, entries: 4, skippedXattrs: 0 });
    expect((await readdir(join(root, 'etc'))).sort()).toEqual(['keep', 'old']);
    expect(await readdir(join(root, 'etc/old'))).toEqual(['b']);
  });

  it('makes hardlinks, symlinks, FIFOs and devices with their owners, modes and times', async () => {
    await apply(
      await rawTar([
        { name: 'bin/', type: 'directory', mode: 0o755 },
        { name: 'bin/tool', data: 'run me', mode: 0o4755, uid: 1000, gid: 1001 },
        { name: 'bin/alias', type: 'link', linkname: 'bin/tool' },
        { name: 'bin/sym', type: 'symlink', linkname: 'tool' },
        { name: 'pipe', type: 'fifo', mode: 0o600 },
        { name: 'null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
        { name: 'tagged', data: 'x', pax: { 'SCHILY.xattr.user.slacker': 'yes' } },
      ]),
    );
    const tool = await lstat(join(root, 'bin/tool'));
    expect([tool.uid, tool.gid, tool.mode & 0o7777]).toEqual([1000, 1001, 0o4755]);
    expect(tool.mtimeMs).toBe(1_000_000_000_000);
    expect((await lstat(join(root, 'bin/alias'))).ino).toBe(tool.ino);
    expect(await readlink(join(root, 'bin/sym'))).toBe('tool');
    expect((await lstat(join(root, 'pipe'))).isFIFO()).toBe(true);
    const dev = await lstat(join(root, 'null'));
    expect(dev.isCharacterDevice()).toBe(true);
    expect(dev.rdev).toBe(0x103);
    const xattr = await run('python3', [
      '-c',
      `import os; print(os.getxattr(${JSON.stringify(join(root, 'tagged'))}, 'user.slacker').decode())`,
    ]);
    expect(xattr.stdout.trim()).toBe('yes');
  });

  it('resolves symlinked parents inside the layer root, never on the host', async () => {
    await mkdir(join(root, 'usr/lib'), { recursive: true });
    await symlink('/usr/lib', join(root, 'lib')); // merged-/usr style, absolute target
    await apply(await tarOf([{ name: 'lib/slacker-test.so', data: 'inside' }]));
    expect(await readFile(join(root, 'usr/lib/slacker-test.so'), 'utf8')).toBe('inside');
  });

  it.each([
    ['path traversal', [{ name: '../outside', data: 'x' }], 'path traversal'],
    ['traversal in the middle', [{ name: 'a/../../outside', data: 'x' }], 'path traversal'],
    [
      'symlink escape',
      [
        { name: 'esc', type: 'symlink' as const, linkname: '../../..' },
        { name: 'esc/outside', data: 'x' },
      ],
      'symlink escape',
    ],
    [
      'hardlink out of the root',
      [{ name: 'pw', type: 'link' as const, linkname: '../../etc/passwd' }],
      'path traversal',
    ],
  ])('refuses %s', async (_what, entries, error) => {
    await expect(apply(await tarOf(entries))).rejects.toThrow(error);
    expect(await readdir(dir.path)).toEqual(['root']); // nothing written beside the root
  });

  it('recognises a marker tar without asking for a root', async () => {
    const ref = `sha256:${'ab'.repeat(32)}` as Digest;
    let asked = false;
    const r = await applyLayerTar(Readable.from([await markerTar(ref)]), async () => {
      asked = true;
      return root;
    });
    expect(r).toEqual({ kind: 'marker', ref });
    expect(asked).toBe(false);
  });

  it('queues the file system work behind the reading, in tar order: streamed files, then what follows', async () => {
    const big = Buffer.alloc(5 * 1024 * 1024 + 123);
    for (let i = 0; i < big.length; i += 4096) big.writeUInt32BE(i, i);
    const entries = [
      { name: 'd/', type: 'directory' as const },
      { name: 'd/big', data: big },
      { name: 'd/big2', type: 'link' as const, linkname: 'd/big' },
      ...Array.from({ length: 300 }, (_, i) => ({ name: `d/f${i}`, data: `file ${i}` })),
      { name: 'd/.wh.f7' },
    ];
    const r = await apply(await tarOf(entries));
    expect(r).toMatchObject({ kind: 'files', entries: 304 });
    expect((await readFile(join(root, 'd/big2'))).equals(big)).toBe(true);
    expect((await lstat(join(root, 'd/big'))).nlink).toBe(2);
    expect(await readFile(join(root, 'd/f299'), 'utf8')).toBe('file 299');
    expect((await readdir(join(root, 'd'))).length).toBe(2 + 299);
  });

  it('stops at the first entry the file system refuses, names it, and applies nothing after it', async () => {
    await writeFile(join(root, 'plain'), 'a file, not a directory');
    const entries = [
      { name: 'a', data: 'before' },
      { name: 'plain/inside', data: 'cannot be made' },
      ...Array.from({ length: 200 }, (_, i) => ({ name: `after${i}`, data: 'x' })),
    ];
    await expect(apply(await tarOf(entries))).rejects.toThrow(/plain\/inside/);
    expect((await readdir(root)).sort()).toEqual(['a', 'plain']);
  });
});
