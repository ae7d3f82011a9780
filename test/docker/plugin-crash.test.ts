/**
 * The plugin killed (SIGKILL) in the middle of an ApplyDiff: dockerd reports the failure, the
 * restarted plugin tears down what the dead one left mounted and attached, and the same image
 * then loads and runs.
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDockerd, type Dockerd } from '../../harness/dockerd.js';
import { imageArchive, layerTar } from '../../harness/images.js';
import { loopsUnder, mountsUnder } from '../../attach/host-state.js';
import { startPlugin, uniquePluginName, type PluginProcess } from '../../harness/plugin.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

describe('plugin killed mid-operation', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let plugin: PluginProcess;
  let dockerd: Dockerd;
  const name = uniquePluginName();
  const start = () =>
    startPlugin({ name, root: join(dir.path, 'state'), size: '1G', logFile: join(dir.path, 'plugin.log') });

  beforeAll(async () => {
    requireRoot();
    await requireTools('dockerd', 'nbdfuse', 'losetup', 'findmnt');
    dir = await tempDir('slacker-crash-');
    plugin = await start();
    dockerd = await startDockerd(join(dir.path, 'docker'), { storageDriver: name });
  }, 120_000);

  afterAll(async () => {
    await dockerd?.stop();
    await plugin?.stop();
    const left = dir ? [...(await mountsUnder(dir.path)), ...(await loopsUnder(dir.path))] : [];
    await dir?.cleanup();
    expect(left).toEqual([]);
  }, 120_000);

  it('recovers after SIGKILL during ApplyDiff; the image then loads and runs', async () => {
    // One layer with a shell and 128 MiB of data: long enough to be killed in the middle of.
    const files = Array.from({ length: 16 }, (_, i) => ({ name: `data/f${i}`, data: randomBytes(8 * 2 ** 20) }));
    const layer = await layerTar([
      { name: 'bin/', type: 'directory' },
      { name: 'bin/busybox', data: await readFile('/bin/busybox'), mode: 0o755 },
      { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
      { name: 'data/', type: 'directory' },
      ...files,
    ]);
    const archive = join(dir.path, 'big.tar');
    await writeFile(
      archive,
      await imageArchive([layer], 'big:1', { config: { Cmd: ['/bin/sh', '-c', 'ls /data | wc -l'] } }),
    );

    // A small image first, so that the empty ext4 template exists and the next mount is the big layer's.
    await writeFile(
      join(dir.path, 'small.tar'),
      await imageArchive([await layerTar([{ name: 'a', data: 'a' }])], 'small:1'),
    );
    await dockerd.docker(['load', '-i', join(dir.path, 'small.tar')]);
    // An apply mounts a staged copy of the layer (its base is here), else the layer itself.
    const mounts = async (): Promise<number> =>
      (await readFile(plugin.logFile, 'utf8')).match(/"msg":"(layer|staged copy) mounted"/g)?.length ?? 0;
    const mountsSoFar = await mounts();
    const loading = dockerd.docker(['load', '-i', archive]).then(
      () => 'loaded',
      (e: Error) => e.message,
    );
    // Kill the plugin while it applies: after it has mounted the layer.
    for (let i = 0; i < 600; i++) {
      if ((await mounts()) > mountsSoFar) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await new Promise((r) => setTimeout(r, 300));
    plugin.proc.child.kill('SIGKILL');
    await plugin.stop();
    const outcome = await loading;
    expect(outcome).not.toBe('loaded');
    expect((await mountsUnder(join(dir.path, 'state'))).length + (await loopsUnder(dir.path)).length).toBeGreaterThan(
      0,
    );

    plugin = await start();
    await dockerd.stop();
    dockerd = await startDockerd(join(dir.path, 'docker'), { storageDriver: name }); // Init: recovery runs
    expect(await mountsUnder(join(dir.path, 'state'))).toEqual([]);
    expect(await loopsUnder(dir.path)).toEqual([]);

    await dockerd.docker(['load', '-i', archive]);
    const out = await dockerd.docker(['run', '--rm', '--network', 'none', 'big:1']);
    expect(out.stdout.trim()).toBe('16');
    await dockerd.docker(['rmi', 'big:1']);
  }, 300_000);
});
