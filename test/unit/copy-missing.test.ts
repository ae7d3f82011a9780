/**
 * copyMissing (layers/copy-missing.ts), on real directories as root: what dockerd writes into
 * an init layer's scratch lands in a container's tree as dockerd would have written it there:
 * only where the tree has nothing, with type, mode, owner, times and content, never through a
 * symlink of the tree; and changes() counts what was copied as the parent's.
 */
import { lstat, mkdir, readFile, readdir, readlink, symlink, utimes, writeFile, chown } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { changes, fromRecorded, type EntryStat } from '../../layers/changes.js';
import { copyEntries, copyMissing, missingEntries, removeEntries } from '../../layers/copy-missing.js';
import { requireRoot } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

let dir: Awaited<ReturnType<typeof tempDir>>;
let scratch: string;
let tree: string;
let outside: string;
beforeEach(async () => {
  requireRoot();
  dir = await tempDir('slacker-copy-missing-');
  scratch = join(dir.path, 'scratch');
  tree = join(dir.path, 'tree');
  outside = join(dir.path, 'outside');
  await Promise.all([mkdir(scratch), mkdir(tree), mkdir(outside)]);
  // The scratch, as dockerd's setupInitLayer leaves it on an empty tree (owner remapped: 1000)
  await mkdir(join(scratch, 'etc'), { mode: 0o755 });
  await mkdir(join(scratch, 'dev/pts'), { recursive: true, mode: 0o755 });
  await writeFile(join(scratch, 'etc/hosts'), '');
  await writeFile(join(scratch, 'etc/hostname'), 'from-scratch', { mode: 0o640 });
  await writeFile(join(scratch, '.dockerenv'), '', { mode: 0o755 });
  await symlink('/proc/mounts', join(scratch, 'etc/mtab'));
  await chown(join(scratch, '.dockerenv'), 1000, 1000);
  await utimes(join(scratch, '.dockerenv'), 1_000_000, 1_000_000);
  // The container's tree: the image's /etc with a hostname of its own, and /dev a symlink out
  await mkdir(join(tree, 'etc'), { mode: 0o755 });
  await writeFile(join(tree, 'etc/hostname'), 'the image');
  await symlink(outside, join(tree, 'dev'));
});
afterEach(() => dir.cleanup());

describe('copyMissing', () => {
  it('creates only what the tree lacks, as the scratch has it, and records it', async () => {
    const created = await copyMissing(scratch, tree);
    expect([...created.keys()].sort()).toEqual(['/.dockerenv', '/etc/hosts', '/etc/mtab']);
    expect(await readFile(join(tree, 'etc/hostname'), 'utf8')).toBe('the image'); // the image's stays
    expect(await readlink(join(tree, 'etc/mtab'))).toBe('/proc/mounts');
    const env = await lstat(join(tree, '.dockerenv'));
    expect([env.mode & 0o7777, env.uid, env.gid, env.mtimeMs]).toEqual([0o755, 1000, 1000, 1_000_000_000]);
    expect(created.get('/.dockerenv')).toMatchObject({ uid: 1000, mtimeMs: env.mtimeMs, size: 0 });
    // Nothing through the tree's symlink: /dev/pts was not made outside
    expect(await readdir(outside)).toEqual([]);
    // Again: everything is there, nothing is created
    expect((await copyMissing(scratch, tree)).size).toBe(0);
  });

  it('copies whole directories the tree lacks, children first, the directory times last', async () => {
    await utimes(join(scratch, 'dev'), 2_000_000, 2_000_000);
    await mkdir(join(dir.path, 'bare'));
    const created = await copyMissing(scratch, join(dir.path, 'bare'));
    expect([...created.keys()].sort()).toEqual([
      '/.dockerenv',
      '/dev',
      '/dev/pts',
      '/etc',
      '/etc/hostname',
      '/etc/hosts',
      '/etc/mtab',
    ]);
    expect((await lstat(join(dir.path, 'bare/dev'))).mtimeMs).toBe(2_000_000_000);
    expect(await readFile(join(dir.path, 'bare/etc/hostname'), 'utf8')).toBe('from-scratch');
  });

  it('plans before it copies: missingEntries lists what copyEntries makes; removeEntries takes a partial copy back, never through a symlink', async () => {
    const planned = await missingEntries(scratch, tree);
    expect(planned).toEqual(['/.dockerenv', '/etc/hosts', '/etc/mtab']);
    expect(await readdir(tree)).toEqual(['dev', 'etc']); // planning wrote nothing
    // A copy cut short: the symlink made, pointing at a directory with content, a file half written
    await symlink(outside, join(tree, 'etc/mtab'));
    await writeFile(join(outside, 'keep'), 'not ours');
    await writeFile(join(tree, '.dockerenv'), 'half');
    await removeEntries(tree, planned);
    expect(await readdir(join(tree, 'etc'))).toEqual(['hostname']);
    expect(await readFile(join(outside, 'keep'), 'utf8')).toBe('not ours');
    const created = await copyEntries(scratch, tree, planned);
    expect([...created.keys()]).toEqual(planned);
    expect(await readFile(join(tree, '.dockerenv'), 'utf8')).toBe('');
    expect(await readlink(join(tree, 'etc/mtab'))).toBe('/proc/mounts');
  });

  it('refuses what an init layer never holds (a fifo), naming it', async () => {
    const { run } = await import('../../common/exec.js');
    await run('mkfifo', [join(scratch, 'pipe')]);
    await expect(copyMissing(scratch, tree)).rejects.toMatchObject({ code: 'SLACKER_ERR_NOT_SUPPORTED' });
  });

  it("changes() counts what was copied as the parent's, and a later change of it as the layer's", async () => {
    const image = join(dir.path, 'image');
    await mkdir(join(image, 'etc'), { recursive: true });
    await writeFile(join(image, 'etc/hostname'), 'the image');
    await mkdir(join(dir.path, 'layer/etc'), { recursive: true });
    const layer = join(dir.path, 'layer');
    await writeFile(join(layer, 'etc/hostname'), 'the image');
    for (const tree of [image, layer]) await utimes(join(tree, 'etc/hostname'), 5_000_000, 5_000_000);
    const created = await copyMissing(scratch, layer);
    const also = new Map<string, EntryStat>([...created].map(([p, r]) => [p, fromRecorded(r)]));
    await writeFile(join(layer, 'new.txt'), 'x');
    expect((await changes(layer, image, also)).changes).toEqual([{ Path: '/new.txt', Kind: 1 }]);
    await writeFile(join(layer, 'etc/hosts'), '127.0.0.1 changed\n');
    expect((await changes(layer, image, also)).changes.map((c) => c.Path)).toEqual(['/etc', '/etc/hosts', '/new.txt']);
  });
});
