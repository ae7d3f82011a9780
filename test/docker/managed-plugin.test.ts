/**
 * The managed plugin: built by scripts/build-plugin.sh (config.json + a Debian rootfs), pushed to
 * a real registry by one dockerd, installed from it by another, which then runs containers on it
 * with `--storage-driver` naming the plugin.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../common/exec.js';
import { DOCKER, startDockerd, type Dockerd } from '../../harness/dockerd.js';
import { busyboxRootfs, importRootfs } from '../../harness/images.js';
import { mountsUnder } from '../../attach/host-state.js';
import { uniquePluginName } from '../../harness/plugin.js';
import { startRegistry, type TestRegistry } from '../../harness/registry.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

const SCRIPT = join(import.meta.dirname, '../../scripts/build-plugin.sh');

describe('managed plugin from a registry', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let registry: TestRegistry;
  const daemons: Dockerd[] = [];

  beforeAll(async () => {
    requireRoot();
    await requireTools('dockerd', 'docker-registry', 'debootstrap', 'busybox-static');
    dir = await tempDir('slacker-managed-');
    registry = await startRegistry();
  });

  afterAll(async () => {
    for (const d of daemons) await d.stop();
    await registry?.close();
    const mounts = dir ? await mountsUnder(dir.path) : [];
    await dir?.cleanup();
    expect(mounts).toEqual([]);
  }, 120_000);

  it('is built, pushed, installed from the registry, and runs a container', async () => {
    const remote = `127.0.0.1:${registry.port}/slacker-ts:latest`;
    // Host A builds and pushes it.
    const a = await startDockerd(join(dir.path, 'a'), { storageDriver: 'vfs' });
    daemons.push(a);
    await run('bash', [SCRIPT, '--name', remote, '--push', '--out', join(dir.path, 'plugin')], {
      timeoutMs: 900_000,
      env: { ...process.env, DOCKER, DOCKER_HOST: `unix://${a.socket}` },
    });

    // Host B installs it, then restarts with it as its storage driver.
    const alias = uniquePluginName();
    const bDir = join(dir.path, 'b');
    const b0 = await startDockerd(bDir, { storageDriver: 'vfs' });
    await b0.docker(['plugin', 'install', '--grant-all-permissions', '--alias', alias, remote], { timeoutMs: 300_000 });
    const plugins = (await b0.docker(['plugin', 'ls', '--format', '{{.Name}} {{.Enabled}}'])).stdout;
    expect(plugins).toContain(`${alias}:latest true`);
    await b0.stop();
    const b = await startDockerd(bDir, { storageDriver: `${alias}:latest` });
    daemons.push(b);

    const info = (await b.docker(['info', '--format', '{{.Driver}} {{json .DriverStatus}}'])).stdout;
    expect(info).toContain(alias);
    expect(info).toContain('Attach method');
    const rootfs = await busyboxRootfs(join(dir.path, 'rootfs'));
    await importRootfs(b, rootfs, 'bb:1');
    const out = await b.docker(['run', '--rm', '--network', 'none', 'bb:1', 'sh', '-c', 'echo managed > /f; cat /f']);
    expect(out.stdout.trim()).toBe('managed');
    await b.docker(['rmi', 'bb:1']);
  }, 900_000);
});
