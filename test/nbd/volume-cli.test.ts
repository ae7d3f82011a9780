/** `slacker-ts volume ...` as an operator runs it: the built binary against real state and a dir:// store. */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CommandError, run } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

const BIN = join(import.meta.dirname, '../../dist/cli/main.js');

describe('slacker-ts volume', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  const cli = async (root: string, ...args: string[]): Promise<{ code: number; out: string }> => {
    try {
      const r = await run(process.execPath, [
        BIN,
        'volume',
        ...args,
        '--root',
        join(dir.path, root),
        '--store',
        `dir://${join(dir.path, 'store')}`,
      ]);
      return { code: 0, out: r.stdout.trim() };
    } catch (err) {
      if (err instanceof CommandError) return { code: err.exitCode ?? -1, out: (err.stdout + err.stderr).trim() };
      throw err;
    }
  };

  beforeAll(async () => {
    dir = await tempDir('slacker-volcli-');
  });
  afterAll(async () => {
    await dir?.cleanup();
  });

  it('creates, freezes, clones, publishes, opens elsewhere, lists, reports and removes', async () => {
    expect(await cli('a', 'create', 'base', '64M', '--chunk-size', '64K')).toEqual({ code: 0, out: 'base' });
    expect((await cli('a', 'freeze', 'base')).code).toBe(0);
    expect((await cli('a', 'clone', 'base', 'app')).out).toBe('app');
    const ref = (await cli('a', 'publish', 'base')).out;
    expect(ref).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect((await cli('b', 'open', ref, 'base-b')).code).toBe(0);
    const ls = JSON.parse((await cli('b', 'ls', '--json')).out);
    expect(ls).toMatchObject([{ id: 'base-b', frozen: true, size: 64 * 1024 * 1024, snapshotRef: ref }]);
    const stats = JSON.parse((await cli('a', 'stats', 'app', '--json')).out);
    expect(stats).toMatchObject({ id: 'app', parent: 'base', frozen: false, chunkSize: 65536, chunks: 0 });
    expect((await cli('a', 'stats', 'app')).out).toMatch(/clone of base/);
    expect(await cli('a', 'rm', 'base')).toMatchObject({
      code: 1,
      out: expect.stringMatching(/has 1 clone.*SLACKER_ERR_CONFLICT/),
    });
    expect((await cli('a', 'rm', 'app')).code).toBe(0);
    expect((await cli('a', 'rm', 'base')).code).toBe(0);
    expect((await cli('a', 'ls')).out).toBe('');
    expect(JSON.parse((await cli('b', 'cache', '--json', '--cache-size', '1G')).out)).toMatchObject({
      limitBytes: 1024 ** 3,
      evictions: 0,
    });
  });

  it('explains bad input', async () => {
    expect(await cli('c', 'create', 'x', 'lots')).toMatchObject({ code: 1, out: expect.stringMatching(/bad size/) });
    expect(await cli('c', 'stats', 'nope')).toMatchObject({
      code: 1,
      out: expect.stringMatching(/SLACKER_ERR_NOT_FOUND/),
    });
    expect(await cli('c', 'open', 'sha256:' + '0'.repeat(64), 'y')).toMatchObject({
      code: 1,
      out: expect.stringMatching(/cannot fetch snapshot/),
    });
    expect(await cli('c', 'ls', '--compression', 'zstd')).toMatchObject({
      code: 1,
      out: expect.stringMatching(/--compression wants brotli or none, got zstd/),
    });
    expect(await cli('c', 'clone')).toMatchObject({
      code: 1,
      out: expect.stringMatching(/usage: slacker-ts volume clone/),
    });
  });
});
