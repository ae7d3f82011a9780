/**
 * Issue 22 under a real dockerd (Debian's 20.10), crafted and damaged layer tars through
 * `docker load` and `docker import`, with overlay2 beside slacker as the reference: whiteouts of
 * `..`, aborted uploads, binary xattrs and non-UTF-8 names, a layer that does not fit, markers
 * with more in them, deep trees and many files. Throughout, a container keeps running on
 * slacker and must keep its files; the plugin must stay up and leak nothing.
 */
import { readdir, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopsUnder, mountsUnder } from '../../attach/host-state.js';
import { run } from '../../common/exec.js';
import { startDockerd, type Dockerd } from '../../harness/dockerd.js';
import { busyboxRootfs, imageArchive, importRootfs } from '../../harness/images.js';
import { callPlugin, startPlugin, uniquePluginName, type PluginProcess } from '../../harness/plugin.js';
import { nestedDirs, rawTar, type RawEntry } from '../../harness/raw-tar.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

type Outcome = { ok: true } | { ok: false; message: string };

describe('issue 22: crafted layer tars through dockerd, slacker against overlay2', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let plugin: PluginProcess;
  let slacker: Dockerd;
  let overlay: Dockerd;
  const name = uniquePluginName();
  const hosts = (): [string, Dockerd][] => [
    ['slacker', slacker],
    ['overlay2', overlay],
  ];

  const attempt = (p: Promise<unknown>): Promise<Outcome> =>
    p.then(
      () => ({ ok: true }) as const,
      (e: Error) => ({ ok: false, message: e.message }) as const,
    );

  /** `docker load` of an image made of these layer tars. */
  const load = async (d: Dockerd, layers: Buffer[], tag: string): Promise<Outcome> => {
    const file = join(dir.path, `${tag.replace(/\W/g, '_')}-${Math.random().toString(36).slice(2)}.tar`);
    await writeFile(file, await imageArchive(layers, tag, { config: { Cmd: ['/bin/sh'] } }));
    return attempt(d.docker(['load', '-i', file]));
  };

  const importTar = async (d: Dockerd, tar: Buffer, tag: string): Promise<Outcome> => {
    const file = join(dir.path, `${tag.replace(/\W/g, '_')}-${Math.random().toString(36).slice(2)}.tar`);
    await writeFile(file, tar);
    return attempt(d.docker(['import', file, tag], { timeoutMs: 300_000 }));
  };

  const status = async (): Promise<Map<string, string>> =>
    new Map((await callPlugin(plugin.socket, 'GraphDriver.Status', {})).body.Status as [string, string][]);

  let mountedBefore = '';
  /** The plugin is up, the keeper container still reads its files, and nothing leaked. */
  const healthy = async (volumesBefore: string): Promise<void> => {
    expect(plugin.proc.child.exitCode).toBeNull();
    const out = await slacker.docker(['exec', 'keeper', 'sh', '-c', 'cat /alive; ls /bin | wc -l']);
    expect(out.stdout.split('\n')[0]).toBe('alive');
    expect(Number(out.stdout.split('\n')[1])).toBeGreaterThan(5);
    const s = await status();
    expect(s.get('Volumes')).toBe(volumesBefore);
    expect(s.get('Mounted layers')).toBe(mountedBefore);
  };

  beforeAll(async () => {
    requireRoot();
    await requireTools('dockerd', 'nbdfuse', 'losetup', 'mkfs.ext4', 'findmnt', 'busybox-static', 'python3');
    dir = await tempDir('slacker-tar-docker-');
    // 128 MiB layers: small enough for the layer-full case to be quick.
    plugin = await startPlugin({
      name,
      root: join(dir.path, 'state'),
      size: '128M',
      logFile: join(dir.path, 'plugin.log'),
    });
    slacker = await startDockerd(join(dir.path, 'slacker'), { storageDriver: name });
    overlay = await startDockerd(join(dir.path, 'overlay'), { storageDriver: 'overlay2' });
    const rootfs = await busyboxRootfs(join(dir.path, 'rootfs'));
    for (const [, d] of hosts()) await importRootfs(d, rootfs, 'bb:1');
    await slacker.docker([
      'run',
      '-d',
      '--name',
      'keeper',
      '--network',
      'none',
      'bb:1',
      'sh',
      '-c',
      'echo alive > /alive; exec sleep 3600',
    ]);
    await run('sleep', ['0.5']);
    mountedBefore = (await status()).get('Mounted layers') ?? '';
  }, 180_000);

  afterAll(async () => {
    await slacker?.docker(['rm', '-f', 'keeper']).catch(() => undefined);
    await slacker?.stop();
    await overlay?.stop();
    await plugin?.stop();
    const state = dir ? join(dir.path, 'state') : '';
    const left = dir ? [...(await mountsUnder(state)), ...(await loopsUnder(state)).map((l) => l.device)] : [];
    if (dir) await run('rm', ['-rf', dir.path]); // GNU rm: the deep trees are deeper than node:fs removes
    expect(left).toEqual([]);
  }, 180_000);

  it('refuses whiteouts of .. and . as overlay2 does, naming the entry; nothing outside the layer is touched', async () => {
    const volumes = (await status()).get('Volumes')!;
    const mnt = join(dir.path, 'state', 'mnt');
    const mntBefore = (await readdir(mnt)).sort();
    const lower = rawTar([
      { name: 'dir/', type: 'directory' },
      { name: 'dir/keep', data: 'lower' },
    ]);
    for (const entry of ['.wh...', 'dir/.wh...', 'dir/.wh..']) {
      const top = rawTar([{ name: entry }]);
      const tag = `wh:${entry.length}${entry.startsWith('dir') ? 'd' : 't'}`;
      const results = new Map<string, Outcome>();
      for (const [driver, d] of hosts()) results.set(driver, await load(d, [lower, top], tag));
      expect(results.get('overlay2')?.ok, `overlay2 on ${entry}`).toBe(false);
      const s = results.get('slacker')!;
      expect(s.ok, `slacker on ${entry}`).toBe(false);
      if (!s.ok) {
        expect(s.message).toContain(JSON.stringify(entry));
        expect(s.message).toContain('whiteout must name a file');
      }
    }
    // Every mount point that was there still is (the escape emptied this directory).
    expect((await readdir(mnt)).sort()).toEqual(expect.arrayContaining(mntBefore));
    await healthy(volumes);
  });

  it('an aborted upload (a truncated tar, a bad header) is a clean, quick error; the plugin stays up', async () => {
    const volumes = (await status()).get('Volumes')!;
    const cut = join(dir.path, 'cut.tar');
    await run('sh', ['-c', `tar -C /usr/bin -cf - . | head -c 3000000 > ${cut}`]);
    const bad = rawTar([
      { name: 'a', data: 'x'.repeat(5000) },
      { name: 'b', data: 'y' },
    ]);
    bad[512 + 5120 + 3] = bad[512 + 5120 + 3]! ^ 0xff; // the second header's name: checksum now wrong
    for (const [driver, d] of hosts()) {
      const t0 = Date.now();
      const r = await attempt(d.docker(['import', cut, 'cut:1'], { timeoutMs: 120_000 }));
      expect(r.ok, driver).toBe(false);
      // dockerd 20.10's plugin client retries a request whose body failed on its side (1+2+4+8 s): ~15 s,
      // whatever the plugin does. Before, the plugin crashed and each load took 30 s.
      if (driver === 'slacker') expect(Date.now() - t0).toBeLessThan(25_000);
      expect((await importTar(d, bad, 'bad:1')).ok, driver).toBe(false);
    }
    await run('sleep', ['1']); // a crash would come right after the aborted request
    await healthy(volumes);
    // The plugin keeps working: the next import on it succeeds.
    const good = await importTar(slacker, rawTar([{ name: 'ok', data: 'fine' }]), 'good:1');
    expect(good.ok).toBe(true);
    await slacker.docker(['rmi', 'good:1']);
    await healthy(volumes);
  });

  it('answers a refused ApplyDiff only after reading the whole upload (dockerd 20.10 can panic otherwise)', async () => {
    const id = `drain-${Math.random().toString(36).slice(2)}`;
    await callPlugin(plugin.socket, 'GraphDriver.Create', { ID: id });
    try {
      // Refused at its first entry, followed by 64 MiB the plugin has no use for.
      const head = rawTar([{ name: '.wh...' }], { end: false });
      const junk = Buffer.alloc(2 ** 20, 0x41);
      const total = head.length + 64 * junk.length;
      let written = 0;
      const answer = await new Promise<{ status: number; writtenAtAnswer: number; body: string }>((resolve, reject) => {
        const req = request(
          { socketPath: plugin.socket, path: `/GraphDriver.ApplyDiff?id=${id}&parent=`, method: 'POST' },
          (res) => {
            const writtenAtAnswer = written;
            let body = '';
            res.on('data', (b: Buffer) => (body += b.toString()));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, writtenAtAnswer, body }));
          },
        );
        req.on('error', reject);
        void (async () => {
          for (const part of [head, ...Array.from({ length: 64 }, () => junk)]) {
            written += part.length;
            if (!req.write(part)) await new Promise((r) => req.once('drain', r));
          }
          req.end();
        })();
      });
      expect(answer.status).toBe(500);
      expect(answer.body).toContain('whiteout must name a file');
      expect(answer.writtenAtAnswer).toBe(total);
    } finally {
      await callPlugin(plugin.socket, 'GraphDriver.Remove', { ID: id });
    }
  });

  it('keeps binary xattrs (security.capability with cap_setuid) and non-UTF-8 names byte for byte, as overlay2', async () => {
    const capability = Buffer.from('0100000280000000000000000000000000000000', 'hex');
    const blob = Buffer.from([0x00, 0xff, 0x80, 0xc3, 0x28]);
    const cafe = Buffer.from('caf\xe9', 'latin1');
    const layer = rawTar([
      { name: 'bin/', type: 'directory', mode: 0o755 },
      {
        name: 'bin/ping',
        data: 'not really ping',
        mode: 0o4755,
        pax: { 'SCHILY.xattr.security.capability': capability, 'SCHILY.xattr.user.blob': blob },
      },
      { name: Buffer.concat([Buffer.from('bin/'), cafe]), data: 'latin-1' },
    ]);
    const read = async (root: string): Promise<string> => {
      const r = await run('python3', [
        '-c',
        [
          'import os,sys',
          'r=os.fsencode(sys.argv[1])',
          "p=r+b'/bin/ping'",
          "print(os.getxattr(p,'security.capability').hex(), os.getxattr(p,'user.blob').hex(), oct(os.lstat(p).st_mode))",
          "print(sorted(n.hex() for n in os.listdir(r+b'/bin')))",
        ].join('\n'),
        root,
      ]);
      return r.stdout;
    };
    const seen = new Map<string, string>();
    for (const [driver, d] of hosts()) {
      const r = await load(d, [layer], 'xattr:1');
      expect(r, driver).toEqual({ ok: true });
      const data = JSON.parse(
        (await d.docker(['image', 'inspect', '-f', '{{json .GraphDriver.Data}}', 'xattr:1'])).stdout,
      );
      if (driver === 'overlay2') {
        seen.set(driver, await read(data.UpperDir));
      } else {
        const got = await callPlugin(plugin.socket, 'GraphDriver.Get', { ID: data.VolumeId });
        try {
          seen.set(driver, await read(got.body.Dir as string));
        } finally {
          await callPlugin(plugin.socket, 'GraphDriver.Put', { ID: data.VolumeId });
        }
      }
      await d.docker(['rmi', 'xattr:1']);
    }
    expect(seen.get('slacker')).toBe(seen.get('overlay2'));
    expect(seen.get('slacker')).toContain(`${capability.toString('hex')} ${blob.toString('hex')} 0o104755`);
    expect(seen.get('slacker')).toContain(cafe.toString('hex'));
  });

  it('a layer larger than the layer size fails with ENOSPC naming the size and how to change it', async () => {
    const volumes = (await status()).get('Volumes')!;
    // A gzip bomb: 200 MiB of zeros in a ~200 KiB archive, for 128 MiB layers.
    const bomb = gzipSync(rawTar([{ name: 'zeros', data: Buffer.alloc(200 * 2 ** 20) }]));
    const r = await importTar(slacker, bomb, 'bomb:1');
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.message).toContain('128MiB');
      expect(r.message).toContain('--size');
      expect(r.message).toContain('"zeros"');
    }
    await healthy(volumes);
  });

  it('a marker entry with files after it is refused, not half-read', async () => {
    const tar = rawTar([
      { name: './', type: 'directory', pax: { 'SLACKER.snapshot': `sha256:${'ab'.repeat(32)}` } },
      { name: 'etc/passwd', data: 'root::0:0::/:/bin/sh\n' },
    ]);
    const r = await importTar(slacker, tar, 'marker:1');
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.message).toContain('marker layer holds only its marker entries');
  });

  it('applies a 1,500-deep tree (3,000-byte paths; overlay2 stops near 2,000) and 20,000 files as overlay2 does', async () => {
    const many: RawEntry[] = [{ name: 'many/', type: 'directory' }];
    for (let i = 0; i < 20_000; i++) many.push({ name: `many/f${i}` });
    for (const [tag, tar] of [
      ['deep:1', rawTar(nestedDirs(1_500))],
      ['many:1', rawTar(many)],
    ] as const) {
      const outcomes = new Map<string, Outcome>();
      for (const [driver, d] of hosts()) outcomes.set(driver, await importTar(d, tar, tag));
      expect(outcomes.get('slacker'), tag).toEqual({ ok: true });
      expect(outcomes.get('overlay2'), tag).toEqual({ ok: true });
    }
  });

  it('applies a 10,000-deep tree (20,000-byte paths), which overlay2 refuses (mkdir: file name too long)', async () => {
    const tar = rawTar(nestedDirs(10_000));
    const o = await importTar(overlay, tar, 'deeper:1');
    expect(o.ok).toBe(false);
    if (!o.ok) expect(o.message).toContain('file name too long');
    expect(await importTar(slacker, tar, 'deeper:1')).toEqual({ ok: true });
  });
});
