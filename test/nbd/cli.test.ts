/** The `slacker-ts nbd-serve` command as a user runs it: the built binary, real signals, real clients. */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireTools, run, CommandError } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

const BIN = join(import.meta.dirname, '../../dist/cli/main.js');

/** Starts nbd-serve; resolves once it has printed `lines` URIs. */
async function serve(args: string[], lines: number) {
  const child = spawn(process.execPath, [BIN, 'nbd-serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const uris: string[] = [];
  const rl = createInterface({ input: child.stdout });
  await new Promise<void>((resolve, reject) => {
    rl.on('line', (l) => {
      uris.push(l);
      if (uris.length === lines) resolve();
    });
    void exited.then(() => reject(new Error(`nbd-serve exited early: ${stderr}`)));
  });
  return { child, uris, exited, stderr: () => stderr };
}

async function cli(args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args]);
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    if (err instanceof CommandError) return { code: err.exitCode ?? -1, out: err.stdout + err.stderr };
    throw err;
  }
}

describe('slacker-ts nbd-serve', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let a: string;
  let b: string;

  beforeAll(async () => {
    await requireTools('nbdinfo');
    if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run npm run build (npm test does)`);
    dir = await tempDir();
    a = join(dir.path, 'a.img');
    b = join(dir.path, 'b.img');
    for (const f of [a, b]) {
      await writeFile(f, '');
      await truncate(f, 16 * 1024 * 1024);
    }
  });
  afterAll(async () => {
    await dir?.cleanup();
  });

  it('prints a URI per export and listener, serves them, and exits 0 on SIGTERM', async () => {
    const sock = join(dir.path, 'nbd.sock');
    const s = await serve(
      ['--export', `a=${a}`, '--export', `b=${b}:ro`, '--listen', 'tcp://127.0.0.1:0', '--listen', `unix://${sock}`],
      4,
    );
    try {
      expect(s.uris[0]).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/a$/);
      expect(s.uris[1]).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/b$/);
      expect(s.uris[2]).toBe(`nbd+unix:///a?socket=${encodeURIComponent(sock)}`);
      const infoA = JSON.parse((await run('nbdinfo', ['--json', s.uris[0]!])).stdout).exports[0];
      const infoB = JSON.parse((await run('nbdinfo', ['--json', s.uris[3]!])).stdout).exports[0];
      expect(infoA).toMatchObject({ 'export-size': 16 * 1024 * 1024, is_read_only: false, description: a });
      expect(infoB).toMatchObject({ is_read_only: true });
    } finally {
      s.child.kill('SIGTERM');
    }
    expect(await s.exited).toEqual({ code: 0, signal: null });
    expect(s.stderr()).toMatch(/nbd server stopped/);
    expect(existsSync(sock)).toBe(false); // the socket file is removed
  });

  it('exits 0 on SIGINT too', async () => {
    const s = await serve(['--export', `a=${a}`, '--listen', 'tcp://127.0.0.1:0'], 1);
    s.child.kill('SIGINT');
    expect((await s.exited).code).toBe(0);
  });

  it('refuses a unix socket already served by a running server', async () => {
    const sock = join(dir.path, 'busy.sock');
    const s = await serve(['--export', `a=${a}`, '--listen', `unix://${sock}`], 1);
    try {
      const second = await cli(['nbd-serve', '--export', `a=${a}`, '--listen', `unix://${sock}`]);
      expect(second.code).toBe(1);
      expect(second.out).toMatch(/in use by a running server/);
    } finally {
      s.child.kill('SIGTERM');
      await s.exited;
    }
  });

  it('explains bad input with a clear message and a non-zero exit', async () => {
    expect(await cli(['nbd-serve'])).toMatchObject({ code: 1, out: expect.stringMatching(/nothing to serve/) });
    expect(await cli(['nbd-serve', '--export', 'x'])).toMatchObject({
      code: 1,
      out: expect.stringMatching(/NAME=FILE/),
    });
    expect(await cli(['nbd-serve', '--export', `x=${dir.path}/missing.img`])).toMatchObject({
      code: 1,
      out: expect.stringMatching(/ENOENT|no such file/i),
    });
    expect(await cli(['nbd-serve', '--export', `x=${a}`, '--listen', 'http://x'])).toMatchObject({
      code: 1,
      out: expect.stringMatching(/SLACKER_ERR_CONFIG/),
    });
    expect(await cli(['nbd-serve', '--bogus'])).toMatchObject({ code: 1, out: expect.stringMatching(/bogus/) });
    expect(await cli(['frobnicate'])).toMatchObject({ code: 2, out: expect.stringMatching(/unknown command/) });
    for (const bad of ['lots', '-1', '2000000']) {
      expect(await cli(['serve', `--device-readahead=${bad}`])).toMatchObject({
        code: 1,
        out: expect.stringMatching(/--device-readahead wants a number of KiB.*SLACKER_ERR_CONFIG/),
      });
    }
    for (const bad of ['far', '-1', '1.5', '100000']) {
      expect(await cli(['serve', `--gap-fill=${bad}`])).toMatchObject({
        code: 1,
        out: expect.stringMatching(/--gap-fill wants a number of KiB.*SLACKER_ERR_CONFIG/),
      });
    }
    expect(await cli(['nbd-serve', '--help'])).toMatchObject({
      code: 0,
      out: expect.stringMatching(/--export NAME=FILE/),
    });
  });

  it('nbd-relay exits 0 on SIGTERM at once, also with a long --idle-exit-ms', async () => {
    const listen = join(dir.path, 'relay.sock');
    const child = spawn(
      process.execPath,
      [BIN, 'nbd-relay', '--listen', listen, '--upstream', join(dir.path, 'none.sock'), '--idle-exit-ms', '600000'],
      { stdio: 'ignore' },
    );
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    for (let i = 0; i < 5000 && !existsSync(listen); i++) await new Promise((r) => setTimeout(r, 1)); // SIGTERM as soon as it binds
    expect(existsSync(listen)).toBe(true);
    const t0 = Date.now();
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(Date.now() - t0).toBeLessThan(5000); // it waited for its idle timer (10 minutes here) before
    expect(existsSync(listen)).toBe(false);
  });
});
