/**
 * harness/interrupt.ts with real signals: a child process registers cleanups, the test sends it
 * SIGTERM or SIGINT and checks what ran, in which order, and how the process ended.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/tmp.js';

// The compiled module: `npm test` builds dist/ before running the tests.
const MODULE = join(import.meta.dirname, '../../dist/harness/interrupt.js');

let dir: Awaited<ReturnType<typeof tempDir>>;
beforeEach(async () => (dir = await tempDir('slacker-interrupt-')));
afterEach(() => dir.cleanup());

/**
 * Runs `body` in a child node process (with `onInterrupt`, `log(line)` and `sleep(ms)` in
 * scope), sends `signal` when it prints `signal-me`, and returns its exit code and log.
 */
async function interrupted(body: string, signal: NodeJS.Signals): Promise<{ code: number | null; log: string[] }> {
  const logFile = join(dir.path, 'log');
  const script = `
    import { appendFileSync } from 'node:fs';
    import { onInterrupt } from ${JSON.stringify(MODULE)};
    const log = (line) => appendFileSync(${JSON.stringify(logFile)}, line + '\\n');
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    setInterval(() => undefined, 1000); // stays alive until a signal ends it
    ${body}`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d: Buffer) => {
    if (d.toString().includes('signal-me')) child.kill(signal);
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  const log = (await readFile(logFile, 'utf8').catch(() => '')).split('\n').filter(Boolean);
  return { code, log };
}

describe('onInterrupt', () => {
  it('runs every registered cleanup at SIGTERM, the most recent first, waits for them, exits 143', async () => {
    const { code, log } = await interrupted(
      `
      onInterrupt(async () => log('outer closed'));
      onInterrupt(async () => { await sleep(300); log('inner closed'); });
      console.log('signal-me');`,
      'SIGTERM',
    );
    expect(code).toBe(143);
    expect(log).toEqual(['inner closed', 'outer closed']);
  });

  it('lets a cleanup already running finish instead of running it twice or cutting it short (SIGINT: 130)', async () => {
    const { code, log } = await interrupted(
      `
      const stop = onInterrupt(async () => { log('closing'); await sleep(400); log('closed'); });
      void stop();
      console.log('signal-me');`,
      'SIGINT',
    );
    expect(code).toBe(130);
    expect(log).toEqual(['closing', 'closed']);
  });

  it('forgets a cleanup once it has run; a failing one does not stop the others', async () => {
    const { code, log } = await interrupted(
      `
      const first = onInterrupt(async () => log('first closed'));
      await first();
      onInterrupt(async () => log('second closed'));
      onInterrupt(async () => { throw new Error('cannot close'); });
      console.log('signal-me');`,
      'SIGTERM',
    );
    expect(code).toBe(143);
    expect(log).toEqual(['first closed', 'second closed']);
  });
});
