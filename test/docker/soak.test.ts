/**
 * Soak (issue 20): two containers on a lazily pulled image read and write for a while (60 s by
 * default; SLACKER_SOAK_SECONDS=N for a longer run) while the shared store disappears and
 * returns and the plugin is killed and restarted under them. They read the image's 64 MiB file a
 * chunk-sized slice per round, each slice first fetched from the store at its turn (so reads keep
 * needing the store for most of a minute), and check every slice against its checksum, and append a counter to a log with a sync after each line. At the end every flushed
 * line is there, no read was wrong, and the whole file reads back right.
 *
 * Host A builds and converts the image; host B (another plugin and dockerd, the same dir://
 * store) loads the converted image (a marker layer) and runs the containers.
 */
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopsUnder, mountsUnder } from '../../attach/host-state.js';
import { busyboxRootfs, importRootfs } from '../../harness/images.js';
import { convertImage, startSlackerHost, type SlackerHost } from '../../harness/plugin.js';
import { dropCaches, logLines } from '../helpers/restart-workload.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

const SECONDS = Number(process.env.SLACKER_SOAK_SECONDS ?? 60);
/** The file is read a 128 KiB slice (one chunk) per round, every slice once in 512 rounds. */
const SLICES = 512;
const SLICE = 131072;

const BUILD = [
  `busybox dd if=/dev/urandom of=/big.bin bs=${SLICE} count=${SLICES} 2>/dev/null`,
  `for s in $(busybox seq 0 ${SLICES - 1}); do busybox dd if=/big.bin bs=${SLICE} skip=$s count=1 2>/dev/null | sha256sum | busybox cut -d' ' -f1; done > /sums`,
  'sha256sum /big.bin > /big.sum',
].join('\n');

const WORK = [
  'i=0',
  'while [ ! -e /stop ]; do',
  '  i=$((i+1)); echo $i >> /log; sync',
  `  seg=$(( (i * 7 + $OFFSET) % ${SLICES} ))`,
  `  got=$(busybox dd if=/big.bin bs=${SLICE} skip=$seg count=1 2>/dev/null | sha256sum | busybox cut -d" " -f1)`,
  '  want=$(busybox sed -n "$((seg+1))p" /sums)',
  '  [ "$got" = "$want" ] || echo "round $i: slice $seg read wrong" >> /errors',
  '  sleep 0.05',
  'done',
].join('\n');

describe(`soak: ${SECONDS} s of reads and writes through store outages and plugin restarts`, () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let a: SlackerHost;
  let b: SlackerHost;
  let store: string;

  beforeAll(async () => {
    requireRoot();
    await requireTools('dockerd', 'nbdfuse', 'losetup', 'busybox-static');
    dir = await tempDir('slacker-soak-');
    store = join(dir.path, 'store');
    const options = { store: `dir://${store}`, size: '512M', pluginArgs: ['--fetch-deadline', '60000'] };
    a = await startSlackerHost(join(dir.path, 'a'), options);
    b = await startSlackerHost(join(dir.path, 'b'), options);
    await importRootfs(a.dockerd, await busyboxRootfs(join(dir.path, 'rootfs')), 'bb:1');
    await a.dockerd.docker(['run', '--name', 'build', '--network', 'none', 'bb:1', 'sh', '-c', BUILD]);
    await a.dockerd.docker(['commit', 'build', 'soak-src:1']);
    // Converted on A, handed to B as a docker-save archive: one marker layer.
    await convertImage(a, 'soak-src:1', 'soak:1', { push: false });
    await a.dockerd.docker(['save', '-o', join(dir.path, 'soak.tar'), 'soak:1']);
    await b.dockerd.docker(['load', '-i', join(dir.path, 'soak.tar')]);
  }, 300_000);

  afterAll(async () => {
    await b?.stop();
    await a?.stop();
    const left = dir ? [...(await mountsUnder(dir.path)), ...(await loopsUnder(dir.path)).map((l) => l.device)] : [];
    await dir?.cleanup();
    expect(left).toEqual([]);
  }, 120_000);

  it(
    'every flushed line is kept, every read is right, the containers never stop',
    async () => {
      const d = b.dockerd;
      for (const n of [1, 2]) {
        await d.docker([
          'run',
          '-d',
          '--name',
          `w${n}`,
          '--network',
          'none',
          '-e',
          `OFFSET=${n * 31}`,
          'soak:1',
          'sh',
          '-c',
          WORK,
        ]);
      }
      const events: string[] = [];
      const started = Date.now();
      const at = (s: number): Promise<void> => sleep(Math.max(0, started + s * 1000 - Date.now()));
      for (let round = 0; (round + 1) * 20 <= SECONDS; round++) {
        const t = round * 20;
        await at(t + 5);
        await rename(store, `${store}.away`); // the store disappears...
        await sleep(3000);
        await rename(`${store}.away`, store); // ... and returns
        events.push(`${t + 5}s store away for 3 s`);
        await at(t + 12);
        await b.restartPlugin(round % 2 === 0 ? 'SIGKILL' : 'SIGTERM');
        await dropCaches();
        events.push(`${t + 12}s plugin ${round % 2 === 0 ? 'killed' : 'stopped'} and restarted`);
      }
      await at(SECONDS);
      const lines: number[] = [];
      for (const n of [1, 2]) {
        const c = `w${n}`;
        const [info] = JSON.parse((await d.docker(['inspect', c])).stdout) as { State: { Running: boolean } }[];
        expect(info!.State.Running, c).toBe(true);
        const errors = await d.docker(['exec', c, 'sh', '-c', 'cat /errors 2>/dev/null; true']);
        expect(errors.stdout, c).toBe('');
        await dropCaches();
        lines.push(await logLines(d, c)); // 1, 2, 3, ...: every synced line, read from the device
        await d.docker(['exec', c, 'busybox', 'touch', '/stop']);
        expect((await d.docker(['wait', c])).stdout.trim()).toBe('0');
        const whole = await d.docker(['run', '--rm', '--network', 'none', 'soak:1', 'sha256sum', '-c', '/big.sum']);
        expect(whole.stdout).toContain('/big.bin: OK');
      }
      console.info(`soak ${SECONDS} s: ${events.join('; ')}; the containers logged ${lines.join(' and ')} lines`);
      expect(lines.every((n) => n > SECONDS)).toBe(true);
      for (const n of [1, 2]) await d.docker(['rm', `w${n}`]);
    },
    (SECONDS + 240) * 1000,
  );
});
