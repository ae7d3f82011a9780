/** libnbd's nbdinfo against the server: handshake, flags, block sizes, listing, multi-conn, holes. */
import { writeFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBackend } from '../../block/backends/file.js';
import { MemoryBackend } from '../../block/backends/memory.js';
import { readOnly } from '../../block/filters/read-only.js';
import { CMD, NBD_ERR } from '../../nbd-server/protocol.js';
import { openExport } from '../helpers/raw-client.js';
import { exitCode, requireTools, run } from '../helpers/tools.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { tempDir } from '../helpers/tmp.js';

const MiB = 1024 * 1024;

describe('nbdinfo', () => {
  let srv: TestServer;
  let dir: Awaited<ReturnType<typeof tempDir>>;

  beforeAll(async () => {
    await requireTools('nbdinfo');
    dir = await tempDir();
    const img = join(dir.path, 'disk.img');
    await writeFile(img, '');
    await truncate(img, 64 * MiB);
    const disk = await FileBackend.open({ path: img });
    await disk.pwrite(Buffer.alloc(MiB, 0xaa), 8 * MiB, { fua: true });
    const ro = await FileBackend.open({ path: img, readOnly: true });
    // A backend that does not promise multi-conn consistency.
    const single = new MemoryBackend({ size: MiB });
    Object.defineProperty(single, 'multiConn', { value: false });
    srv = await startServer([
      { name: 'disk', backend: disk, description: 'a sparse file' },
      { name: 'ro', backend: readOnly(ro) },
      { name: 'single', backend: single },
    ]);
  });
  afterAll(async () => {
    await srv?.close();
    await dir?.cleanup();
  });

  it('reports size, flags and block sizes (--json), over TCP and unix sockets', async () => {
    for (const via of ['tcp', 'unix'] as const) {
      const info = JSON.parse((await run('nbdinfo', ['--json', srv.uri('disk', via)])).stdout);
      expect(info.protocol).toBe('newstyle-fixed');
      expect(info.structured).toBe(true);
      const e = info.exports[0];
      expect(e['export-size']).toBe(64 * MiB);
      expect(e.description).toBe('a sparse file');
      expect(e.contexts).toContain('base:allocation');
      expect(e).toMatchObject({
        is_read_only: false,
        can_flush: true,
        can_fua: true,
        can_trim: true,
        can_zero: true,
        can_fast_zero: true,
        can_cache: true,
        can_df: true,
        can_multi_conn: true,
        block_size_minimum: 1,
        block_size_preferred: 4096,
        block_size_maximum: 32 * MiB,
      });
    }
  });

  it('shows a read-only export as read-only with no write features', async () => {
    const e = JSON.parse((await run('nbdinfo', ['--json', srv.uri('ro')])).stdout).exports[0];
    expect(e).toMatchObject({ is_read_only: true, can_trim: false, can_zero: false, can_fua: false });
  });

  it('lists every export with its description (--list)', async () => {
    const info = JSON.parse((await run('nbdinfo', ['--list', '--json', srv.uri('')])).stdout);
    const names = info.exports.map((e: { 'export-name': string }) => e['export-name']).sort();
    expect(names).toEqual(['disk', 'ro', 'single']);
    expect(info.exports.find((e: { 'export-name': string }) => e['export-name'] === 'disk').description).toBe(
      'a sparse file',
    );
  });

  it('answers --can multi-conn truthfully', async () => {
    expect(await exitCode('nbdinfo', ['--can', 'multi-conn', srv.uri('disk')])).toBe(0);
    expect(await exitCode('nbdinfo', ['--can', 'multi-conn', srv.uri('single')])).toBe(2);
    expect(await exitCode('nbdinfo', ['--can', 'trim', srv.uri('ro')])).toBe(2);
  });

  it('maps the holes of a sparse file (--map)', async () => {
    const map = JSON.parse((await run('nbdinfo', ['--map', '--json', srv.uri('disk')])).stdout) as {
      offset: number;
      length: number;
      type: number;
    }[];
    // type bit 0 = hole, bit 1 = zero
    expect(map).toEqual([
      { offset: 0, length: 8 * MiB, type: 3, description: 'hole,zero' },
      { offset: 8 * MiB, length: MiB, type: 0, description: 'data' },
      { offset: 9 * MiB, length: 55 * MiB, type: 3, description: 'hole,zero' },
    ]);
  });

  it('honours NBD_CMD_CACHE on a file export (readahead) and refuses it past the end', async () => {
    const c = await openExport(srv.tcp.port, 'disk');
    try {
      c.sendRequest({ type: CMD.CACHE, handle: 1n, offset: 8 * MiB, length: MiB });
      expect((await c.simpleReply()).error).toBe(0);
      c.sendRequest({ type: CMD.CACHE, handle: 2n, offset: 64 * MiB, length: 1 });
      expect((await c.simpleReply()).error).toBe(NBD_ERR.EINVAL);
    } finally {
      c.destroy();
    }
  });

  it('fails cleanly for an export that does not exist', async () => {
    await expect(run('nbdinfo', [srv.uri('nope')])).rejects.toThrow(/nope|unknown|export/i);
  });
});
