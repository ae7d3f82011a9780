/**
 * Warming the attach path (attach/warm.ts): the programs run, and a missing or failing one
 * is ignored, since a warm-up is only a hint and must never keep a daemon from starting.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { warmPrograms } from '../../attach/warm.js';
import { tempDir } from '../helpers/tmp.js';

describe('warmPrograms', () => {
  it('runs every program once, in parallel, and ignores those that fail or do not exist', async () => {
    const dir = await tempDir('slacker-warm-');
    try {
      const marker = join(dir.path, 'ran');
      await expect(
        warmPrograms([['sh', '-c', `echo ok > ${marker}`], ['false'], ['slacker-no-such-program-here', '--version']]),
      ).resolves.toBeUndefined();
      expect((await readFile(marker, 'utf8')).trim()).toBe('ok');
    } finally {
      await dir.cleanup();
    }
  });
});
