/**
 * The legacy (socket) graphdriver plugin under a real dockerd (Debian's docker.io): images run
 * on slacker layers, container writes persist, commit makes marker layers, save/load round-trip
 * both kinds of layer, removal frees everything, bad input gets clear errors.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopsUnder, mountsUnder } from '../../attach/host-state.js';
import { run } from '../../common/exec.js';
import { startDockerd, type Dockerd } from '../../harness/dockerd.js';
import { busyboxRootfs, importRootfs, imageArchive, layerTar } from '../../harness/images.js';
import { callPlugin, startPlugin, uniquePluginName, type PluginProcess } from '../../harness/plugin.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

type Dir = Awaited<ReturnType<typeof tempDir>>;

/** Mounts and loop devices that belong to this test's plugin state. */
async function leftovers(dir: string): Promise<string[]> {
  const state = join(dir, 'state');
  return [...(await mountsUnder(state)), ...(await loopsUnder(state)).map((l) => `${l.device} ${l.backFile}`)];
}

async function status(p: PluginProcess): Promise<Map<string, string>> {
  const r = await callPlugin(p.socket, 'GraphDriver.Status', {});
  return new Map(r.body.Status as [string, string][]);
}

describe('legacy graphdriver plugin under dockerd', () => {
  let dir: Dir;
  let plugin: PluginProcess;
  let dockerd: Dockerd;
  const name = uniquePluginName();

  const startAll = async (): Promise<void> => {
    plugin = await startPlugin({
      name,
      root: join(dir.path, 'state'),
      size: '1G',
      logFile: join(dir.path, 'plugin.log'),
    });
    dockerd = await startDockerd(join(dir.path, 'docker'), { storageDriver: name });
  };

  beforeAll(async () => {
    requireRoot();
    await requireTools('dockerd', 'nbdfuse', 'losetup', 'mkfs.ext4', 'findmnt', 'busybox-static');
    dir = await tempDir('slacker-docker-');
    await startAll();
    const rootfs = await busyboxRootfs(join(dir.path, 'rootfs'));
    await importRootfs(dockerd, rootfs, 'bb:1');
  }, 120_000);

  afterAll(async () => {
    await dockerd?.stop();
    await plugin?.stop();
    const left = dir ? await leftovers(dir.path) : [];
    await dir?.cleanup();
    expect(left).toEqual([]);
  }, 120_000);

  it('runs a container; its writes survive stop/start; docker diff lists them', async () => {
    const out = await dockerd.docker([
      'run',
      '--name',
      'c1',
      '--network',
      'none',
      'bb:1',
      'sh',
      '-c',
      'echo written > /data.txt; rm /etc/motd; test -f /.dockerenv && test -L /etc/mtab && cat /data.txt',
    ]);
    expect(out.stdout.trim()).toBe('written');
    const again = await dockerd.docker(['start', '-a', 'c1']);
    expect(again.stdout).toContain('written');
    const diff = (await dockerd.docker(['diff', 'c1'])).stdout.split('\n');
    expect(diff).toContain('A /data.txt');
    expect(diff).toContain('D /etc/motd');
    expect(diff).toContain('C /etc'); // moby's rule, as overlay2 reports it
    // What dockerd wrote into the init layer (copied into the container's layer: plugin/init-layers.ts)
    // is the init layer's, as on overlay2, and the container has it.
    for (const initFile of ['/.dockerenv', '/etc/hosts', '/etc/hostname', '/etc/resolv.conf', '/dev/console'])
      expect(diff.filter((l) => l.endsWith(` ${initFile}`))).toEqual([]);
    expect(diff.filter((l) => l.startsWith('A '))).toEqual(['A /data.txt']);
    const container = JSON.parse((await dockerd.docker(['inspect', 'c1'])).stdout)[0].GraphDriver.Data
      .VolumeId as string;
    const info = (await dockerd.docker(['info', '--format', '{{json .DriverStatus}}'])).stdout;
    expect(info).toContain('Attach method');
    // slacker-ts status, as an operator asks it
    const cli = join(import.meta.dirname, '../../dist/cli/main.js');
    const json = JSON.parse((await run(process.execPath, [cli, 'status', '--socket', plugin.socket, '--json'])).stdout);
    expect(json.store.reachable).toBe(true);
    expect(json.volumes).toBeGreaterThan(1);
    const c1 = json.layers.find((l: { id: string }) => l.id === container);
    expect(c1).toMatchObject({ frozen: false, attached: false });
    const table = (await run(process.execPath, [cli, 'status', '--socket', plugin.socket])).stdout;
    expect(table).toMatch(/Backing store\s+dir:\/\/\S+ \(answers\)/);
    expect(table).toContain(container.slice(0, 24));
    await expect(run(process.execPath, [cli, 'status', '--socket', join(dir.path, 'no.sock')])).rejects.toThrow(
      /no slacker-ts daemon answers/,
    );
  });

  it('commit makes a marker layer that runs, and save/load round-trips both kinds of layer', async () => {
    await dockerd.docker(['commit', 'c1', 'bb:2']);
    const meta = JSON.parse(
      (await dockerd.docker(['inspect', 'bb:2', '--format', '{{json .GraphDriver.Data}}'])).stdout,
    );
    expect(meta.SnapshotRef).toMatch(/^sha256:[0-9a-f]{64}$/);
    const saved = join(dir.path, 'bb2.tar');
    await dockerd.docker(['save', '-o', saved, 'bb:2']);
    const listing = (await run('tar', ['-tvf', saved])).stdout;
    const layerSizes = listing
      .split('\n')
      .filter((l) => l.endsWith('/layer.tar'))
      .map((l) => Number(l.split(/\s+/)[2]));
    expect(layerSizes).toHaveLength(2);
    expect(Math.min(...layerSizes)).toBeLessThan(16 * 1024); // the marker: metadata only
    expect(Math.max(...layerSizes)).toBeGreaterThan(1024 * 1024); // busybox itself

    await dockerd.docker(['rm', 'c1']);
    await dockerd.docker(['rmi', 'bb:2']);
    await dockerd.docker(['load', '-i', saved]);
    const out = await dockerd.docker([
      'run',
      '--rm',
      '--network',
      'none',
      'bb:2',
      'sh',
      '-c',
      'cat /data.txt; ls /etc',
    ]);
    expect(out.stdout).toContain('written');
    expect(out.stdout).not.toContain('motd');
  });

  it('64 containers from one image at once', { timeout: 600_000 }, async () => {
    const t0 = Date.now();
    const runs = Array.from({ length: 64 }, (_, i) =>
      dockerd.docker(['run', '--rm', '--network', 'none', 'bb:2', 'sh', '-c', `echo c${i} > /x; cat /x /data.txt`], {
        timeoutMs: 600_000,
      }),
    );
    const outs = await Promise.all(runs);
    outs.forEach((o, i) => expect(o.stdout).toBe(`c${i}\nwritten\n`));
    console.info(`64 containers at once: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    expect((await status(plugin)).get('Mounted layers')).toBe('0');
  });

  it('survives a plugin restart while containers are stopped, and a dockerd restart', async () => {
    await dockerd.docker(['create', '--name', 'c2', '--network', 'none', 'bb:2', 'sh', '-c', 'cat /data.txt']);
    await dockerd.stop();
    await plugin.stop();
    await startAll();
    const out = await dockerd.docker(['start', '-a', 'c2']);
    expect(out.stdout).toContain('written');
    await dockerd.docker(['rm', 'c2']);
  });

  it('refuses malicious layer tars with a clear error and leaves nothing behind', async () => {
    const cases = [
      { entries: [{ name: '../../../../tmp/slacker-evil', data: 'x' }], error: 'path traversal' },
      {
        entries: [
          { name: 'escape', type: 'symlink' as const, linkname: '../../../../../..' },
          { name: 'escape/tmp/slacker-evil', data: 'x' },
        ],
        error: 'symlink escape',
      },
    ];
    for (const [i, c] of cases.entries()) {
      const tarball = join(dir.path, `evil${i}.tar`);
      await writeFile(
        tarball,
        await imageArchive([await layerTar(c.entries)], `evil:${i}`, { config: { Cmd: ['/bin/sh'] } }),
      );
      const err = await dockerd.docker(['load', '-i', tarball]).then(
        () => undefined,
        (e: Error) => e.message,
      );
      expect(err).toContain(c.error);
    }
    expect(await leftovers(dir.path)).toEqual([]);
    expect((await status(plugin)).get('Mounted layers')).toBe('0');
  });

  it('answers unknown layer ids with a clear error', async () => {
    const r = await callPlugin(plugin.socket, 'GraphDriver.Get', { ID: 'no-such-layer' });
    expect(r.status).toBe(500);
    expect(r.body.Err).toContain('no volume "no-such-layer"');
    const e = await callPlugin(plugin.socket, 'GraphDriver.Exists', { ID: 'no-such-layer' });
    expect(e.body.Exists).toBe(false);
  });

  it('docker rm and rmi free the volumes: nothing mounted or attached', async () => {
    await dockerd.docker(['rmi', 'bb:2', 'bb:1']);
    const left = (await dockerd.docker(['images', '-q'])).stdout.trim();
    expect(left).toBe('');
    // Only the empty ext4 template remains.
    expect((await status(plugin)).get('Volumes')).toBe('1');
    expect(await leftovers(dir.path)).toEqual([]);
  });
});
