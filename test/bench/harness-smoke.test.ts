/**
 * Smoke test of the HelloBench and MultiMake harnesses in quick mode (3 images / 4 variants), on
 * both engines (Docker 20.10 graphdriver; Docker 26 on the containerd image store),
 * of bench:volumes on a small volume, and of bench:compression on files made here: the whole topology (rate-limited link, registry with
 * the oci chunk store, builders, cold workers) runs for real, the guard rails hold, and the
 * results are written. Speed is not asserted here: the numbers are in docs/, made by the full
 * runs.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../common/exec.js';
import { DEFAULT_CHUNK_SIZE } from '../../volumes/types.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';

const DIST = join(import.meta.dirname, '../../dist/bench');

describe('benchmark harnesses, quick mode', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    requireRoot();
    await requireTools('dockerd', 'docker-registry', 'debootstrap', 'ip', 'tc', 'busybox-static');
    dir = await tempDir('slacker-harness-');
  });
  afterAll(() => dir?.cleanup());

  it.each(['graphdriver', 'containerd'])(
    'hellobench --quick --engine %s deploys every image on both drivers, lazily on slacker',
    async (engine) => {
      const json = join(dir.path, `hb-${engine}.json`);
      const out = join(dir.path, engine);
      await run(
        process.execPath,
        [join(DIST, 'hellobench.js'), '--quick', '--engine', engine, '--out', out, '--json', json],
        {
          timeoutMs: 1_200_000,
        },
      );
      const { rows } = JSON.parse(await readFile(json, 'utf8')) as {
        rows: { item: string; driver: string; deploy: number; bytesFetched: number; linkBytes: number }[];
      };
      expect(rows.map((r) => `${r.item}/${r.driver}`).sort()).toEqual(
        ['busybox', 'debian', 'python3'].flatMap((i) => [`${i}/overlay2`, `${i}/slacker`]),
      );
      for (const r of rows) expect(r.deploy).toBeGreaterThan(0);
      for (const r of rows.filter((x) => x.driver === 'slacker')) expect(r.bytesFetched).toBeGreaterThan(0);
      // The overlay2 pull of a Debian image moves it whole; slacker's moves a marker and what is read.
      const link = (item: string, driver: string) =>
        rows.find((r) => r.item === item && r.driver === driver)!.linkBytes;
      expect(link('debian', 'slacker')).toBeLessThan(link('debian', 'overlay2') / 4);
      const name = engine === 'containerd' ? 'hellobench-containerd-quick' : 'hellobench-quick';
      expect(await readFile(join(out, `${name}.md`), 'utf8')).toContain('Median deploy speedup');
      expect(await readFile(join(out, `${name}.svg`), 'utf8')).toContain('<svg');
    },
    1_200_000,
  );

  it.each(['graphdriver', 'containerd'])(
    'multimake --quick --engine %s runs four development cycles on both drivers',
    async (engine) => {
      const json = join(dir.path, `mm-${engine}.json`);
      const out = join(dir.path, engine);
      await run(
        process.execPath,
        [join(DIST, 'multimake.js'), '--quick', '--engine', engine, '--out', out, '--json', json],
        {
          timeoutMs: 1_200_000,
        },
      );
      const { cycles } = JSON.parse(await readFile(json, 'utf8')) as { cycles: { driver: string; cycle: number }[] };
      expect(cycles.filter((c) => c.driver === 'overlay2')).toHaveLength(4);
      expect(cycles.filter((c) => c.driver === 'slacker')).toHaveLength(4);
      const name = engine === 'containerd' ? 'multimake-containerd-quick' : 'multimake-quick';
      expect(await readFile(join(out, `${name}.md`), 'utf8')).toContain('Total development cycle');
    },
    1_200_000,
  );

  it('bench:volumes measures every row against its anchor, with the CPU of each side', async () => {
    const json = join(dir.path, 'vol.json');
    const args = ['--size-mib', '16', '--reps', '1', '--warmup', '1', '--json', json];
    await run(process.execPath, [join(DIST, 'volumes.js'), ...args], { timeoutMs: 600_000 });
    const { rows } = JSON.parse(await readFile(json, 'utf8')) as {
      rows: { name: string; ratio: number; samples?: { value: number[]; anchor: number[] } }[];
    };
    expect(rows.map((r) => r.name.split(' ')[0])).toEqual(['clone', 'cold', 'the', 'the', 'CPU', 'warm']);
    expect(rows[2]!.name).toMatch(/first cold read in this process/);
    for (const r of rows) expect(Number.isFinite(r.ratio) && r.ratio > 0).toBe(true);
    // The warm-up repetition is not among the samples: one counted repetition, one sample.
    for (const r of rows.filter((x) => x.samples))
      expect([r.samples!.value.length, r.samples!.anchor.length]).toEqual([1, 1]);
    const cpu = rows.find((r) => r.name.startsWith('CPU'))!;
    // Both sides used some CPU, and the cold read (which also verifies, stores and serves) more.
    expect(cpu.samples!.anchor[0]).toBeGreaterThan(0);
    expect(cpu.samples!.value[0]).toBeGreaterThan(cpu.samples!.anchor[0]!);
  }, 600_000);

  it('bench:compression prices each threshold against storing raw, and marks the one in use', async () => {
    const text = join(dir.path, 'text');
    const random = join(dir.path, 'random');
    await writeFile(text, Buffer.from('the quick brown fox jumps over the lazy dog\n'.repeat(30_000)));
    await writeFile(random, randomBytes(1024 * 1024, 5));
    const { stdout } = await run(process.execPath, [join(DIST, 'compression.js'), '--sample-mib', '1', text, random]);
    // 1 MiB of each: half the chunks text (compress to almost nothing), half random (do not compress).
    expect(stdout).toMatch(
      new RegExp(`^${(2 * 2 ** 20) / DEFAULT_CHUNK_SIZE} chunks of ${DEFAULT_CHUNK_SIZE / 1024} KiB`),
    );
    expect(stdout).toMatch(/^\| 0\.0-0\.1 \| 50\.0% \|/m);
    expect(stdout).toMatch(/^\| 0\.9-1\.0 \| 50\.0% \|/m);
    expect(stdout).toMatch(/^\| raw \(anchor\) \| 0% \| 1024 MiB \|/m);
    expect(stdout).toMatch(/^\| 0\.6 \(current\) \| 50% \|/m);
  }, 60_000);

  it('bench:latency measures every path against its anchor, and leaves nothing attached', async () => {
    const json = join(dir.path, 'latency.json');
    const args = ['--reps', '1', '--seconds', '1', '--files', '30', '--json', json];
    await run(process.execPath, [join(DIST, 'latency.js'), ...args], { timeoutMs: 300_000 });
    const rows = JSON.parse(await readFile(json, 'utf8')) as {
      name: string;
      anchor: string;
      values: Record<string, number[]>;
    }[];
    expect(rows.map((r) => r.name.split(' ').slice(0, 3).join(' '))).toEqual([
      '4 KiB write',
      '4 KiB read',
      'create, write 8',
      'fsync of the',
    ]);
    for (const r of rows) {
      expect(Object.keys(r.values)).toContain(r.anchor);
      for (const xs of Object.values(r.values))
        expect(xs.length === 1 && Number.isFinite(xs[0]) && xs[0]! > 0).toBe(true);
    }
    expect(Object.keys(rows[0]!.values)).toHaveLength(4); // nbdkit, nbd-serve, a volume, through the relay
    expect(Object.keys(rows[2]!.values)).toHaveLength(3); // host, loop over a file, a volume
    const { stdout: loops } = await run('losetup', ['-l', '-n', '-O', 'BACK-FILE']);
    expect(loops).not.toMatch(/slacker-bench-latency-/);
  }, 300_000);

  it('a benchmark prints its options for --help, and refuses an unknown one in one line with them', async () => {
    const help = await run(process.execPath, [join(DIST, 'relay.js'), '--help']);
    expect(help.stdout).toMatch(/^usage: npm run bench:relay -- \[options\]/);
    expect(help.stdout).toMatch(/--size-mib VALUE \(default 256\)/);
    const bad = await run(process.execPath, [join(DIST, 'relay.js'), '--bogus']).catch((err: unknown) => err);
    expect(bad).toMatchObject({
      exitCode: 2,
      stderr: expect.stringMatching(/^npm run bench:relay: Unknown option '--bogus'/),
    });
  });
});
