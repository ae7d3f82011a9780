/**
 * kill -9 of a volume server in the middle of writes: everything acknowledged after FLUSH or
 * FUA must survive, the metadata must be consistent, and the volume must work afterwards. And
 * in the middle of lazy reads: every fetched chunk the metadata records in the cache segments
 * must be there, intact; the rest is fetched again.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, openSync, readSync, closeSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CMD, CMD_FLAG } from '../../nbd-server/protocol.js';
import { RawClient } from '../helpers/raw-client.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';
import { run } from '../helpers/tools.js';

const BIN = join(import.meta.dirname, '../../dist/cli/main.js');
const CHUNK = 64 * 1024;

/** Starts `volume serve`; resolves with the child once it listens. */
async function serve(root: string, sock: string, more: string[] = []) {
  const args = [BIN, 'volume', 'serve', 'v', '--root', root, '--listen', `unix://${sock}`, ...more];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', () => resolve());
    void exited.then(() => reject(new Error('volume serve exited early')));
  });
  return { child, exited };
}

async function connect(sock: string): Promise<RawClient> {
  const c = await RawClient.connect({ path: sock });
  await c.go('v');
  return c;
}

describe('kill -9 during writes', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run npm run build (npm test does)`);
    dir = await tempDir('slacker-crash-');
  });
  afterAll(async () => {
    await dir?.cleanup();
  });

  it('keeps flushed writes and consistent metadata', async () => {
    const root = join(dir.path, 'state');
    const sock = join(dir.path, 'nbd.sock');
    await run(process.execPath, [BIN, 'volume', 'create', 'v', '64M', '--chunk-size', '64K', '--root', root]);

    const first = await serve(root, sock);
    const c = await connect(sock);
    // Acknowledged and made durable: chunks 0..31, half by FLUSH, the last by FUA.
    for (let i = 0; i < 32; i++) {
      c.sendRequest({ type: CMD.WRITE, handle: BigInt(i), offset: i * CHUNK, data: randomBytes(CHUNK, 10 + i) });
      expect((await c.simpleReply()).error).toBe(0);
      if (i === 15) await c.ping(); // FLUSH
    }
    c.sendRequest({
      type: CMD.WRITE,
      flags: CMD_FLAG.FUA,
      handle: 99n,
      offset: 40 * CHUNK,
      data: randomBytes(CHUNK, 99),
    });
    expect((await c.simpleReply()).error).toBe(0);
    await c.ping();
    // Not flushed: writes still streaming in when the server dies.
    for (let i = 0; i < 200; i++) {
      c.sendRequest({
        type: CMD.WRITE,
        handle: BigInt(1000 + i),
        offset: (100 + i) * CHUNK + 7,
        data: randomBytes(5000, i),
      });
    }
    first.child.kill('SIGKILL');
    await first.exited;
    c.destroy();

    // The metadata database is consistent after the crash.
    const db = new Database(join(root, 'metadata.db'));
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
    db.close();

    const second = await serve(root, sock);
    try {
      const d = await connect(sock);
      for (let i = 0; i < 32; i++) {
        d.sendRequest({ type: CMD.READ, handle: BigInt(i), offset: i * CHUNK, length: CHUNK });
        expect((await d.simpleReply(CHUNK)).data.equals(randomBytes(CHUNK, 10 + i))).toBe(true);
      }
      d.sendRequest({ type: CMD.READ, handle: 99n, offset: 40 * CHUNK, length: CHUNK });
      expect((await d.simpleReply(CHUNK)).data.equals(randomBytes(CHUNK, 99))).toBe(true);
      // Still fully usable.
      d.sendRequest({
        type: CMD.WRITE,
        flags: CMD_FLAG.FUA,
        handle: 7n,
        offset: 50 * CHUNK,
        data: Buffer.from('after'),
      });
      expect((await d.simpleReply()).error).toBe(0);
      d.sendRequest({ type: CMD.READ, handle: 8n, offset: 50 * CHUNK, length: 5 });
      expect((await d.simpleReply(5)).data.toString()).toBe('after');
      d.destroy();
    } finally {
      second.child.kill('SIGTERM');
      await second.exited;
    }
    expect(second.child.exitCode).toBe(0);
    // And it still freezes into a consistent snapshot.
    await run(process.execPath, [BIN, 'volume', 'freeze', 'v', '--root', root]);
    const stats = JSON.parse(
      (await run(process.execPath, [BIN, 'volume', 'stats', 'v', '--json', '--root', root])).stdout,
    );
    expect(stats.frozen).toBe(true);
    expect(stats.chunks).toBeGreaterThanOrEqual(34);
  });

  it('keeps the fetched-chunk cache consistent: what it records is intact, the rest is fetched again', async () => {
    const store = `dir://${join(dir.path, 'store')}`;
    const origin = join(dir.path, 'origin');
    const root = join(dir.path, 'lazy');
    const sock = join(dir.path, 'lazy.sock');
    const CHUNKS = 64;
    const data = (i: number): Buffer => randomBytes(CHUNK, 500 + i);
    const cli = (...args: string[]) => run(process.execPath, [BIN, 'volume', ...args, '--store', store]);
    // A published volume, opened on another root: everything it reads is fetched.
    await cli('create', 'v', `${CHUNKS * 64}K`, '--chunk-size', '64K', '--root', origin);
    const writer = await serve(origin, sock, ['--store', store]);
    const w = await connect(sock);
    for (let i = 0; i < CHUNKS; i++) {
      w.sendRequest({ type: CMD.WRITE, handle: BigInt(i), offset: i * CHUNK, data: data(i) });
      expect((await w.simpleReply()).error).toBe(0);
    }
    await w.ping();
    w.destroy();
    writer.child.kill('SIGTERM');
    await writer.exited;
    await cli('freeze', 'v', '--root', origin);
    const ref = (await cli('publish', 'v', '--root', origin)).stdout.trim();
    await cli('open', ref, 'v', '--root', root);

    const first = await serve(root, sock, ['--store', store]);
    const c = await connect(sock);
    const read = async (client: RawClient, i: number) => {
      client.sendRequest({ type: CMD.READ, handle: BigInt(i), offset: i * CHUNK, length: CHUNK });
      expect((await client.simpleReply(CHUNK)).data.equals(data(i))).toBe(true);
    };
    for (let i = 0; i < CHUNKS / 2; i++) await read(c, i);
    await new Promise((r) => setTimeout(r, 6_000)); // past the segments' sync interval (5 s)
    for (let i = CHUNKS / 2; i < CHUNKS; i++) {
      c.sendRequest({ type: CMD.READ, handle: BigInt(i), offset: i * CHUNK, length: CHUNK });
    }
    await new Promise((r) => setTimeout(r, 50)); // some of these land, unrecorded
    first.child.kill('SIGKILL');
    await first.exited;
    c.destroy();

    // Every recorded chunk is in its segment and hashes to its digest.
    const db = new Database(join(root, 'metadata.db'), { readonly: true });
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
    const rows = db.prepare('SELECT digest, segment, offset, length FROM segment_chunks').all() as {
      digest: string;
      segment: number;
      offset: number;
      length: number;
    }[];
    db.close();
    expect(rows.length).toBeGreaterThanOrEqual(CHUNKS / 2); // the first half was synced and recorded
    const segDir = join(root, 'chunks', 'segments');
    for (const r of rows) {
      const fd = openSync(join(segDir, `${String(r.segment).padStart(8, '0')}.seg`), 'r');
      const buf = Buffer.alloc(r.length);
      expect(readSync(fd, buf, 0, r.length, r.offset)).toBe(r.length);
      closeSync(fd);
      expect(`sha256:${createHash('sha256').update(buf).digest('hex')}`).toBe(r.digest);
    }

    // Restarted: every chunk reads back right, and the space of unrecorded chunks was freed.
    const second = await serve(root, sock, ['--store', store]);
    try {
      let allocated = 0;
      for (const name of await readdir(segDir)) allocated += (await stat(join(segDir, name))).blocks * 512;
      expect(allocated).toBe(rows.length * CHUNK);
      const d = await connect(sock);
      for (let i = 0; i < CHUNKS; i++) await read(d, i);
      d.destroy();
    } finally {
      second.child.kill('SIGTERM');
      await second.exited;
    }
    expect(second.child.exitCode).toBe(0);
    // Every fetched chunk is evictable, also those the crash kept the cache's LRU from saving.
    const cache = JSON.parse((await cli('cache', '--json', '--root', root)).stdout);
    expect(cache.chunks).toBe(CHUNKS);
  });
});
