/**
 * The graphdriver plugin restarted under a running container (issue 20): `slacker-ts serve`
 * killed (SIGKILL, as a crash) and stopped (SIGTERM, as an upgrade) and started again, with
 * dockerd 20.10 and a container reading and writing throughout. The container must go on with
 * its I/O intact (reads right, flushed writes all there, its root file system writable), and
 * dockerd's next calls must work without restarting dockerd (the plugin initialises itself from
 * what Init gave the previous one). Afterwards nothing is left attached or mounted, and the NBD
 * relay has exited.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopsUnder, mountsUnder } from '../../attach/host-state.js';
import { run } from '../../common/exec.js';
import { busyboxRootfs, importRootfs } from '../../harness/images.js';
import { startSlackerHost, type SlackerHost } from '../../harness/plugin.js';
import { dropCaches, logLines, WORKLOAD, workloadHealthy, writesGoOn } from '../helpers/restart-workload.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

/** PIDs of processes whose command line mentions `text`. */
async function processesWith(text: string): Promise<string[]> {
  const r = await run('pgrep', ['-f', text]).catch(() => ({ stdout: '' }));
  return r.stdout.split('\n').filter(Boolean);
}

describe('the graphdriver plugin restarted under a running container (dockerd 20.10)', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let host: SlackerHost;

  beforeAll(async () => {
    requireRoot();
    await requireTools('dockerd', 'nbdfuse', 'losetup', 'busybox-static', 'pgrep');
    dir = await tempDir('slacker-restarts-');
    host = await startSlackerHost(join(dir.path, 'host'), { size: '256M' });
    await importRootfs(host.dockerd, await busyboxRootfs(join(dir.path, 'rootfs')), 'bb:1');
  }, 120_000);

  afterAll(async () => {
    await host?.stop();
    const state = join(dir.path, 'host', 'state');
    const left = [...(await mountsUnder(state)), ...(await loopsUnder(state)).map((l) => l.device)];
    // The relay exits on its own once nothing is attached.
    const relay = join(state, 'nbd-relay.sock');
    let relays: string[] = [];
    for (let i = 0; i < 50 && (relays = await processesWith(relay)).length > 0; i++) await sleep(200);
    await dir?.cleanup();
    expect(left).toEqual([]);
    expect(relays).toEqual([]);
  }, 120_000);

  it('SIGKILL and SIGTERM of the plugin: the container reads and writes on, dockerd needs no restart', async () => {
    const d = host.dockerd;
    await d.docker(['run', '-d', '--name', 'busy', '--network', 'none', 'bb:1', 'sh', '-c', WORKLOAD]);
    let lines = await writesGoOn(d, 'busy', 0);
    for (const signal of ['SIGKILL', 'SIGTERM', 'SIGKILL'] as const) {
      await host.restartPlugin(signal);
      await dropCaches(); // the next reads of /data and /log go to the device
      expect(await logLines(d, 'busy')).toBeGreaterThanOrEqual(lines); // nothing flushed was lost
      lines = await writesGoOn(d, 'busy', lines);
      await workloadHealthy(d, 'busy');
      // dockerd's next calls work: a new container, exec and inspect of the running one.
      const hello = await d.docker(['run', '--rm', '--network', 'none', 'bb:1', 'cat', '/etc/motd']);
      expect(hello.stdout).toBe('slacker-ts test image\n');
      const [c] = JSON.parse((await d.docker(['inspect', 'busy'])).stdout) as { State: { Running: boolean } }[];
      expect(c!.State.Running).toBe(true);
      console.info(`after ${signal}: the container wrote ${lines} lines so far, every one in place`);
    }
    const log = await run('sh', ['-c', `grep -c 'attachment adopted' '${host.plugin.logFile}'`]);
    expect(Number(log.stdout.trim())).toBeGreaterThanOrEqual(3);
    await d.docker(['exec', 'busy', 'busybox', 'touch', '/stop']);
    expect((await d.docker(['wait', 'busy'])).stdout.trim()).toBe('0');
    await d.docker(['rm', 'busy']);
  }, 300_000);
});
