/** qemu's NBD client (qemu-io, qemu-img) against the server: patterns, zeroes, discard, map, convert. */
import { readFile, writeFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBackend } from '../../block/backends/file.js';
import { MemoryBackend } from '../../block/backends/memory.js';
import { requireTools, run } from '../helpers/tools.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { tempDir } from '../helpers/tmp.js';

const MiB = 1024 * 1024;

async function qemuIo(uri: string, ...commands: string[]): Promise<string> {
  // qemu-io exits non-zero when a pattern check fails, so success means every check held.
  const args = ['-f', 'raw'];
  for (const c of commands) args.push('-c', c);
  const { stdout } = await run('qemu-io', [...args, uri]);
  expect(stdout).not.toMatch(/failed|error/i);
  return stdout;
}

describe.each(['memory', 'file'] as const)('qemu-io and qemu-img on a %s export', (kind) => {
  let srv: TestServer;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let uri: string;

  beforeAll(async () => {
    await requireTools('qemu-io', 'qemu-img');
    dir = await tempDir();
    let backend;
    if (kind === 'memory') backend = new MemoryBackend({ size: 64 * MiB });
    else {
      const img = join(dir.path, 'disk.img');
      await writeFile(img, '');
      await truncate(img, 64 * MiB);
      backend = await FileBackend.open({ path: img });
    }
    srv = await startServer([{ name: 'disk', backend }]);
    uri = srv.uri('disk');
  });
  afterAll(async () => {
    await srv?.close();
    await dir?.cleanup();
  });

  it('writes and reads back unaligned ranges that cross page and chunk boundaries', async () => {
    await qemuIo(
      uri,
      'write -P 0x11 1 1',
      'write -P 0x22 65535 3', // across the memory backend's 64 KiB pages
      'write -P 0x33 1048000 200000', // across 1 MiB
      'write -P 0x44 67108863 1', // last byte of the device
      'read -P 0x11 1 1',
      'read -P 0x00 0 1',
      'read -P 0x22 65535 3',
      'read -P 0x33 1048000 200000',
      'read -P 0x00 1248000 1000',
      'read -P 0x44 67108863 1',
    );
  });

  it('keeps many requests in flight (aio) and flushes', async () => {
    const cmds: string[] = [];
    for (let i = 0; i < 32; i++) cmds.push(`aio_write -P ${i + 1} ${8 * MiB + i * 65536} 65536`);
    cmds.push('aio_flush');
    for (let i = 0; i < 32; i++) cmds.push(`aio_read -P ${i + 1} ${8 * MiB + i * 65536} 65536`);
    cmds.push('aio_flush');
    await qemuIo(uri, ...cmds);
  });

  it('zeroes (write -z, with and without unmap) and discards', async () => {
    await qemuIo(
      uri,
      `write -P 0x55 ${16 * MiB} ${4 * MiB}`,
      `write -z ${16 * MiB + 100} 5000`,
      `read -P 0 ${16 * MiB + 100} 5000`,
      `read -P 0x55 ${16 * MiB} 100`,
      `write -z -u ${17 * MiB} ${MiB}`,
      `read -P 0 ${17 * MiB} ${MiB}`,
      `write -f ${18 * MiB} 4096`, // FUA
      `discard ${19 * MiB} ${MiB}`,
    );
  });

  it('qemu-img map shows written data and zeroed holes', async () => {
    await qemuIo(uri, `write -P 0x66 ${32 * MiB} ${MiB}`, `write -z -u ${33 * MiB} ${MiB}`);
    const map = JSON.parse((await run('qemu-img', ['map', '-f', 'raw', '--output=json', uri])).stdout) as {
      start: number;
      length: number;
      data: boolean;
      zero: boolean;
    }[];
    const at = (o: number) => map.find((m) => m.start <= o && o < m.start + m.length)!;
    expect(at(32 * MiB)).toMatchObject({ data: true, zero: false });
    expect(at(33 * MiB)).toMatchObject({ data: false, zero: true });
    expect(at(60 * MiB)).toMatchObject({ data: false, zero: true });
    expect(map.reduce((s, m) => s + m.length, 0)).toBe(64 * MiB);
  });

  it('qemu-img convert copies the export byte for byte', async () => {
    const out = join(dir.path, 'copy.raw');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]);
    const copy = await readFile(out);
    const { stdout } = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri, out]);
    expect(stdout).toMatch(/identical/i);
    expect(copy.length).toBe(64 * MiB);
    expect(copy[32 * MiB]).toBe(0x66);
  });
});
