/**
 * The real attach path of this machine: nbdfuse + losetup + mkfs.ext4 + mount over the server,
 * a tree of files written, everything detached, re-attached, and every byte verified.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, writeFile, truncate } from 'node:fs/promises';
import { basename, join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBackend } from '../../block/backends/file.js';
import { chooseAttacher } from '../../attach/choose-attacher.js';
import { DEFAULT_READAHEAD_KIB } from '../../attach/read-ahead.js';
import { attachExt4 } from '../../harness/attach.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { noConnections, startServer, type TestServer } from '../helpers/server.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';

async function digestTree(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.name === 'lost+found') continue;
      if (e.isDirectory()) await walk(p);
      else
        out.set(
          relative(root, p),
          createHash('sha256')
            .update(await readFile(p))
            .digest('hex'),
        );
    }
  };
  await walk(root);
  return out;
}

describe('ext4 on nbdfuse + loop over the server', () => {
  let srv: TestServer;
  let dir: Awaited<ReturnType<typeof tempDir>>;

  beforeAll(async () => {
    requireRoot();
    await requireTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4');
    dir = await tempDir();
    const img = join(dir.path, 'disk.img');
    await writeFile(img, '');
    await truncate(img, 256 * 1024 * 1024);
    srv = await startServer([{ name: 'layer', backend: await FileBackend.open({ path: img }) }]);
  });
  afterAll(async () => {
    await srv?.close();
    await dir?.cleanup();
  });

  it('survives mkfs, a tree of writes, detach and re-attach with every byte intact', async () => {
    const target = { socket: srv.unix.path, exportName: 'layer' };
    const first = await attachExt4(target, join(dir.path, 'a1'), { mkfs: true });
    let written: Map<string, string>;
    try {
      for (let d = 0; d < 8; d++) {
        const sub = join(first.mountPoint, `dir${d}`, 'nested');
        await mkdir(sub, { recursive: true });
        for (let f = 0; f < 12; f++) {
          await writeFile(join(sub, `file${f}.bin`), randomBytes(((d * 12 + f) * 7919) % 300_000, d * 100 + f));
        }
      }
      await writeFile(join(first.mountPoint, 'big.bin'), randomBytes(24 * 1024 * 1024, 42));
      written = await digestTree(first.mountPoint);
    } finally {
      await first.detach();
    }
    expect(written.size).toBe(97);

    const second = await attachExt4(target, join(dir.path, 'a2'), { readOnly: true });
    try {
      expect(await digestTree(second.mountPoint)).toEqual(written);
    } finally {
      await second.detach();
    }
    expect(await noConnections(srv.server)).toBe(0);
  });

  it("sets the device's readahead window: the configured one, else the default (the kernel's is 2560 KiB)", async () => {
    const target = { socket: srv.unix.path, exportName: 'layer' };
    const windowOf = async (device: string): Promise<number> =>
      Number(await readFile(`/sys/block/${basename(device)}/queue/read_ahead_kb`, 'utf8'));
    for (const [attacher, expected] of [
      [chooseAttacher('auto', { readaheadKib: 64 }), 64],
      [chooseAttacher('auto'), DEFAULT_READAHEAD_KIB],
    ] as const) {
      const device = await attacher.attach(target, join(dir.path, `ra${expected}`), { readOnly: true });
      try {
        expect(await windowOf(device.path)).toBe(expected);
      } finally {
        await device.detach();
      }
    }
    expect(await noConnections(srv.server)).toBe(0);
  });
});
