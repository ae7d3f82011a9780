/** nbdcopy (libnbd, 4 connections, many requests in flight) round trip of 256 MiB, by checksum. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { writeFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBackend } from '../../block/backends/file.js';
import { requireTools, run } from '../helpers/tools.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { tempDir } from '../helpers/tmp.js';

const SIZE = 256 * 1024 * 1024;

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

describe('nbdcopy round trip', () => {
  let srv: TestServer;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let src: string;
  let target: string;

  beforeAll(async () => {
    await requireTools('nbdcopy');
    dir = await tempDir();
    src = join(dir.path, 'src.img');
    // Random data with some zero runs so both data and sparse paths are exercised.
    await run('sh', [
      '-c',
      `head -c ${SIZE} /dev/urandom > ${src} && dd if=/dev/zero of=${src} bs=1M seek=100 count=20 conv=notrunc status=none`,
    ]);
    target = join(dir.path, 'target.img');
    await writeFile(target, '');
    await truncate(target, SIZE);
    srv = await startServer([{ name: 'target', backend: await FileBackend.open({ path: target }) }]);
  });
  afterAll(async () => {
    await srv?.close();
    await dir?.cleanup();
  });

  it('copies 256 MiB in with 4 connections and back out, identical by SHA-256', async () => {
    const want = await sha256(src);
    await run('nbdcopy', ['--connections=4', '--flush', src, srv.uri('target')], { timeoutMs: 120_000 });
    expect(await sha256(target)).toBe(want);
    const back = join(dir.path, 'back.img');
    await run('nbdcopy', ['--connections=4', srv.uri('target', 'unix'), back], { timeoutMs: 120_000 });
    expect(await sha256(back)).toBe(want);
    expect(srv.server.bytesInFlight).toBe(0);
  });
});
