/**
 * Issue 22 regressions on a real directory (as root): whiteouts that would delete outside the
 * layer, names and xattrs that must come back byte for byte, markers that must be only markers,
 * damaged tars, trees deeper than PATH_MAX, and a fuzz test that applies randomly built and
 * mutated tars over a layer whose lower files include symlinks pointing out of it, checking
 * after every one that nothing outside the layer root changed.
 */
import { createHash } from 'node:crypto';
import { lstat, mkdir, readFile, readdir, readlink, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { run } from '../../common/exec.js';
import { nestedDirs, rawTar, type RawEntry } from '../../harness/raw-tar.js';
import { applyLayerTar } from '../../layers/layer-tar/apply.js';
import { prng, tempDir } from '../helpers/tmp.js';
import { requireRoot } from '../helpers/tools.js';

let dir: Awaited<ReturnType<typeof tempDir>>;
let root: string;
let outside: string;

beforeEach(async () => {
  requireRoot();
  dir = await tempDir('slacker-tar-safety-');
  root = join(dir.path, 'root');
  outside = join(dir.path, 'outside');
  await mkdir(join(root, 'dir'), { recursive: true });
  await writeFile(join(root, 'dir/keep'), 'lower');
  await mkdir(join(outside, 'sub'), { recursive: true });
  await writeFile(join(outside, 'sentinel'), 'do not touch');
  await writeFile(join(outside, 'sub/file'), 'nor this');
  // Lower-layer symlinks that point out of the layer, as another tool might have made them.
  await symlink('../outside', join(root, 'out'));
  await symlink('../../..', join(root, 'up'));
  await symlink(outside, join(root, 'abs'));
});
// GNU rm, not fs.rm: node:fs cannot remove a tree deeper than PATH_MAX.
afterEach(() => run('rm', ['-rf', dir.path]));

const apply = (tar: Buffer) => applyLayerTar(Readable.from([tar]), async () => root);

/** Everything under a directory: path, type, size, mode, mtime and content hash. */
async function snapshot(path: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (p: string, rel: string): Promise<void> => {
    const st = await lstat(p);
    const hash = st.isFile()
      ? createHash('sha256')
          .update(await readFile(p))
          .digest('hex')
      : '';
    const link = st.isSymbolicLink() ? await readlink(p) : '';
    out.push(`${rel} ${st.mode} ${st.size} ${st.mtimeMs} ${st.nlink} ${hash}${link}`);
    if (st.isDirectory()) for (const c of (await readdir(p)).sort()) await walk(join(p, c), `${rel}/${c}`);
  };
  await walk(path, '.');
  return out;
}

async function xattrHex(path: string, name: string): Promise<string> {
  const r = await run('python3', [
    '-c',
    'import os,sys; print(os.getxattr(os.fsencode(sys.argv[1]), sys.argv[2], follow_symlinks=False).hex())',
    path,
    name,
  ]);
  return r.stdout.trim();
}

describe('issue 22: whiteouts stay inside the layer', () => {
  it.each([
    ['.wh...', "a whiteout of .. at the top (the issue's escape)"],
    ['dir/.wh...', 'a whiteout of .. in a directory'],
    ['.wh..', 'a whiteout of . at the top'],
    ['dir/.wh..', 'a whiteout of . in a directory'],
    ['dir/.wh.', 'a whiteout of nothing'],
  ])('refuses %s (%s), naming the entry; the lower directory and everything outside stay', async (name) => {
    const before = await snapshot(dir.path);
    const err = await apply(rawTar([{ name }])).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).toMatch(/whiteout must name a file/);
    expect(err?.message).toContain(JSON.stringify(name));
    expect(await snapshot(dir.path)).toEqual(before);
  });

  it('a whiteout through a lower symlink that points out of the layer deletes nothing outside', async () => {
    const before = await snapshot(outside);
    await apply(rawTar([{ name: 'out/.wh.sentinel' }, { name: 'abs/.wh.sub' }, { name: 'up/.wh.outside' }]));
    expect(await snapshot(outside)).toEqual(before);
  });

  it('an opaque directory keeps what this layer made and hides the lower rest', async () => {
    await apply(
      rawTar([{ name: 'dir/', type: 'directory' }, { name: 'dir/new', data: 'upper' }, { name: 'dir/.wh..wh..opq' }]),
    );
    expect(await readdir(join(root, 'dir'))).toEqual(['new']);
  });
});

describe('issue 22: names, link targets and xattrs byte for byte', () => {
  it('keeps a binary security.capability, binary user xattrs and non-UTF-8 names', async () => {
    // VFS_CAP_REVISION_2 with the effective bit, permitted = cap_setuid (bit 7): byte 0x80.
    const capability = Buffer.from('0100000280000000000000000000000000000000', 'hex');
    const binary = Buffer.from([0x00, 0xff, 0x80, 0xc3, 0x28, 0x0a, 0x3d]);
    const cafe = Buffer.from('caf\xe9', 'latin1'); // latin-1 é: not UTF-8
    await apply(
      rawTar([
        { name: 'bin/', type: 'directory' },
        {
          name: 'bin/ping',
          data: 'ELF',
          mode: 0o755,
          uid: 1000,
          pax: { 'SCHILY.xattr.security.capability': capability, 'SCHILY.xattr.user.blob': binary },
        },
        { name: Buffer.concat([Buffer.from('bin/'), cafe]), data: 'latin-1 name' },
        { name: 'bin/to-cafe', type: 'symlink', linkname: cafe },
        { name: 'bin/cafe-link', type: 'link', linkname: Buffer.concat([Buffer.from('bin/'), cafe]) },
        { name: 'dir/tagged/', type: 'directory', pax: { 'SCHILY.xattr.user.dir': binary } },
      ]),
    );
    const ping = join(root, 'bin/ping');
    expect(await xattrHex(ping, 'security.capability')).toBe(capability.toString('hex'));
    expect(await xattrHex(ping, 'user.blob')).toBe(binary.toString('hex'));
    expect(await xattrHex(join(root, 'dir/tagged'), 'user.dir')).toBe(binary.toString('hex'));
    expect((await lstat(ping)).uid).toBe(1000);
    const names = await readdir(Buffer.from(join(root, 'bin')), { encoding: 'buffer' });
    expect(names.map((n) => n.toString('latin1')).sort()).toEqual(['caf\xe9', 'cafe-link', 'ping', 'to-cafe'].sort());
    const cafePath = Buffer.concat([Buffer.from(join(root, 'bin') + '/'), cafe]);
    expect((await readFile(cafePath)).toString()).toBe('latin-1 name');
    expect(await readlink(Buffer.from(join(root, 'bin/to-cafe')), { encoding: 'buffer' })).toEqual(cafe);
    expect((await lstat(join(root, 'bin/cafe-link'))).ino).toBe((await lstat(cafePath)).ino);
  });

  it('keeps PAX mtimes to the nanosecond and long names past 100 bytes', async () => {
    const long = `${'d'.repeat(90)}/${'e'.repeat(90)}/${'f'.repeat(90)}`;
    await apply(rawTar([{ name: long, data: 'x', pax: { mtime: '1700000000.123456789' } }]));
    const st = await lstat(join(root, long), { bigint: true });
    expect(st.mtimeNs).toBe(1_700_000_000_123_456_789n);
  });
});

describe('issue 22: markers are exactly markers; damaged tars are clear errors', () => {
  const marker = { name: './', type: 'directory' as const, pax: { 'SLACKER.snapshot': `sha256:${'ab'.repeat(32)}` } };

  it('a marker entry followed by files is refused, and nothing is written', async () => {
    const before = await snapshot(root);
    await expect(apply(rawTar([marker, { name: 'etc/passwd', data: 'x' }]))).rejects.toThrow(
      /marker layer holds only its marker entries, but this one goes on with "etc\/passwd"/,
    );
    expect(await snapshot(root)).toEqual(before);
  });

  const ref = `sha256:${'ab'.repeat(32)}`;
  const markerDir = { name: './.slacker/', type: 'directory' as const };
  const markerFile = { name: `./.slacker/${ref}`, data: '' };

  it('the marker file alone (what containerd leaves of a marker) is a marker, and nothing is written', async () => {
    const before = await snapshot(root);
    expect(await apply(rawTar([{ name: './', type: 'directory' }, markerDir, markerFile]))).toEqual({
      kind: 'marker',
      ref,
    });
    expect(await apply(rawTar([markerDir, markerFile]))).toEqual({ kind: 'marker', ref });
    expect(await snapshot(root)).toEqual(before);
  });

  it('a tar that only starts like a marker file is an ordinary layer, applied in full', async () => {
    const r = await apply(rawTar([markerDir, markerFile, { name: 'etc/hostname', data: 'h' }]));
    expect(r).toMatchObject({ kind: 'files', entries: 3 });
    expect(await readFile(join(root, '.slacker', ref), 'utf8')).toBe('');
    expect(await readFile(join(root, 'etc/hostname'), 'utf8')).toBe('h');
    // A .slacker file with data, or not named by a reference, is an ordinary file too.
    expect(await apply(rawTar([markerDir, { name: `./.slacker/${ref}`, data: 'x' }]))).toMatchObject({ kind: 'files' });
    expect(await apply(rawTar([markerDir, { name: './.slacker/notes', data: '' }]))).toMatchObject({ kind: 'files' });
  });

  it('a marker whose record and file name disagree, or that goes on after its file, is refused', async () => {
    const other = { name: `./.slacker/sha256:${'cd'.repeat(32)}`, data: '' };
    await expect(apply(rawTar([marker, markerDir, other]))).rejects.toThrow(/names two snapshots/);
    await expect(apply(rawTar([marker, markerDir, markerFile, { name: 'x', data: 'x' }]))).rejects.toThrow(
      /holds only its marker entries, but this one goes on with "x"/,
    );
    await expect(apply(rawTar([marker, markerDir, { name: 'y', data: '' }]))).rejects.toThrow(/goes on with "y"/);
  });

  it('a marker record with a malformed reference is refused', async () => {
    await expect(apply(rawTar([{ ...marker, pax: { 'SLACKER.snapshot': 'sha256:nope' } }]))).rejects.toThrow(
      /malformed snapshot reference/,
    );
  });

  it.each([
    ['cut inside a file', (t: Buffer) => t.subarray(0, 512 + 100), /ends inside an entry \(truncated\)/],
    ['cut inside a header', (t: Buffer) => t.subarray(0, 300), /ends inside a header \(truncated\)/],
    [
      'a flipped header byte',
      (t: Buffer) => {
        const c = Buffer.from(t);
        c[10] = c[10]! ^ 0x20;
        return c;
      },
      /header checksum mismatch/,
    ],
  ])('%s', async (_what, damage, message) => {
    const tar = rawTar([
      { name: 'file', data: 'y'.repeat(2000) },
      { name: 'other', data: 'z' },
    ]);
    await expect(apply(damage(tar))).rejects.toThrow(message);
  });

  it('an unsupported entry type is refused by name', async () => {
    await expect(apply(rawTar([{ name: 'vol', type: 'other', typeflag: 'V' }]))).rejects.toThrow(
      /unsafe layer tar entry "vol": unsupported entry type "V"/,
    );
  });

  it("a gzip'ed tar applies; a corrupt gzip stream is a clean error", async () => {
    const tar = rawTar([{ name: 'zipped', data: 'inside' }]);
    await apply(gzipSync(tar));
    expect(await readFile(join(root, 'zipped'), 'utf8')).toBe('inside');
    const broken = gzipSync(tar);
    broken.fill(0x55, 20, 40);
    await expect(apply(broken)).rejects.toThrow();
  });
});

describe('issue 22: trees deeper than PATH_MAX', () => {
  it('applies 3000 nested directories (6000-byte paths) with a file at the bottom', async () => {
    const entries = nestedDirs(3000).map((e) => ({ ...e, mtime: 1_000_000 }));
    const r = await apply(rawTar(entries));
    expect(r).toMatchObject({ kind: 'files', entries: 3001 });
    const found = await run('find', [join(root, 'd'), '-name', 'bottom']);
    expect(found.stdout.trim().length).toBeGreaterThan(6000);
    const dirs = await run('sh', ['-c', `find ${join(root, 'd')} -type d -newermt @1000001 | wc -l`]);
    expect(dirs.stdout.trim()).toBe('0'); // every directory time set last, to the tar's
  });
});

describe('issue 22: fuzz — nothing outside the layer root changes, whatever the tar', () => {
  const NAMES = [
    'a',
    'b',
    'dir',
    'out',
    'up',
    'abs',
    '..',
    '.',
    '',
    '.wh..',
    '.wh.a',
    '.wh..wh..opq',
    'caf\xe9',
    'x\0y',
  ];
  const TARGETS = [
    '..',
    '../..',
    '../../outside',
    '/',
    '/etc',
    'a',
    'dir/keep',
    'out/sentinel',
    '../outside/sentinel',
    '',
  ];
  const TYPES: RawEntry['type'][] = ['file', 'directory', 'symlink', 'link', 'fifo', 'other'];

  function randomEntries(next: () => number): RawEntry[] {
    const pick = <T>(xs: T[]): T => xs[next() % xs.length]!;
    const n = 1 + (next() % 8);
    return Array.from({ length: n }, () => {
      const depth = 1 + (next() % 4);
      const name = Array.from({ length: depth }, () => pick(NAMES)).join('/');
      const type = pick(TYPES);
      return {
        name: Buffer.from(next() % 5 === 0 ? `/${name}` : name, 'latin1'),
        type,
        typeflag: 'V',
        data: type === 'file' ? 'f'.repeat(next() % 600) : '',
        linkname: Buffer.from(pick(TARGETS), 'latin1'),
        mode: next() & 0o7777,
      };
    });
  }

  it('200 random tars (built from hostile names and targets, some with flipped bytes)', async () => {
    const before = await snapshot(outside);
    const sandbox = (await readdir(dir.path)).sort();
    let applied = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const next = prng(seed);
      let tar = rawTar(randomEntries(next));
      if (seed % 4 === 0) {
        // Byte flips anywhere (most will break the checksum; some land in data or padding).
        tar = Buffer.from(tar);
        for (let k = 0; k < 4; k++) tar[next() % tar.length] = next() & 0xff;
      }
      if (seed % 7 === 0) tar = tar.subarray(0, next() % tar.length);
      await apply(tar).then(
        () => applied++,
        (err: Error) => expect(err.constructor.name).toMatch(/Error$/),
      );
      expect(await snapshot(outside), `seed ${seed}`).toEqual(before);
      expect((await readdir(dir.path)).sort(), `seed ${seed}`).toEqual(sandbox);
    }
    expect(applied).toBeGreaterThan(10); // the test exercised successful applies, not only refusals
  });
});
