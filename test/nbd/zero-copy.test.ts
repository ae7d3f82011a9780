/**
 * Zero-copy read replies (nbd-server/direct-reply.ts): cached file data leaves with sendfile.
 * Those replies must carry the same bytes as the copy path, whole and correctly framed, also
 * when a client stops reading and the kernel's buffer fills in the middle of a reply; a
 * volume's holes must still be reported as holes; and a cold read of a lazily fetched volume
 * leaves from the chunks' files once they are fetched, counted once.
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBackend } from '../../block/backends/file.js';
import { CMD, REPLY_TYPE } from '../../nbd-server/protocol.js';
import { openStore } from '../../stores/open-store.js';
import { VolumeManager } from '../../volumes/manager.js';
import { publishVolume } from '../helpers/volumes.js';
import { openExport, type RawClient } from '../helpers/raw-client.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';
import { requireTools, run } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 32 * MiB;

async function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  for (const t0 = Date.now(); !cond();) {
    if (Date.now() - t0 > timeoutMs) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Payload of a one-chunk structured READ reply: its offset and data. */
async function structuredData(c: RawClient): Promise<{ handle: bigint; offset: number; data: Buffer }> {
  const [chunk, ...more] = await c.structuredReply();
  expect(more).toEqual([]);
  expect(chunk!.type).toBe(REPLY_TYPE.OFFSET_DATA);
  return { handle: chunk!.handle, offset: Number(chunk!.payload.readBigUInt64BE(0)), data: chunk!.payload.subarray(8) };
}

describe('zero-copy read replies from a file', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let src: Buffer;
  let direct: TestServer;
  let copied: TestServer;

  beforeAll(async () => {
    await requireTools('nbdcopy');
    dir = await tempDir('slacker-zc-');
    src = randomBytes(SIZE, 77);
    await writeFile(join(dir.path, 'src.img'), src); // just written: in the page cache
    const open = (): Promise<FileBackend> => FileBackend.open({ path: join(dir.path, 'src.img'), readOnly: true });
    direct = await startServer([{ name: 'src', backend: await open() }]);
    copied = await startServer([{ name: 'src', backend: await open() }], { zeroCopy: false });
  });
  afterAll(async () => {
    await direct?.close();
    await copied?.close();
    await dir?.cleanup();
  });

  it('gives nbdcopy the same bytes through sendfile as through the copy path', async () => {
    for (const [srv, out] of [
      [direct, 'direct.img'],
      [copied, 'copied.img'],
    ] as const) {
      await run('nbdcopy', ['--connections=4', srv.uri('src', 'unix'), join(dir.path, out)]);
      expect((await readFile(join(dir.path, out))).equals(src)).toBe(true);
    }
    expect(direct.server.readReplies.direct).toBeGreaterThan(0);
    expect(direct.server.readReplies.copied).toBe(0);
    expect(copied.server.readReplies.direct).toBe(0);
  });

  for (const structured of [false, true]) {
    it(`sends whole replies to a client that stops reading (${structured ? 'structured' : 'simple'})`, async () => {
      const c = await openExport(direct.tcp.port, 'src', { structured });
      const queuedBefore = direct.server.readReplies.directBytesQueued;
      c.socket.pause();
      // 1 MiB reads at odd offsets, far more than the socket buffers on both sides hold.
      const offsets = Array.from({ length: 24 }, (_, i) => i * MiB + 4096 * i + 17);
      offsets.forEach((offset, i) => c.sendRequest({ type: CMD.READ, handle: BigInt(i), offset, length: MiB }));
      await until(() => direct.server.readReplies.directBytesQueued > queuedBefore);
      c.socket.resume();
      for (let n = 0; n < offsets.length; n++) {
        let handle: bigint;
        let data: Buffer;
        if (structured) {
          const r = await structuredData(c);
          expect(r.offset).toBe(offsets[Number(r.handle)]);
          ({ handle, data } = r);
        } else {
          const r = await c.simpleReply(MiB);
          expect(r.error).toBe(0);
          ({ handle, data } = r);
        }
        const offset = offsets[Number(handle)]!;
        expect(data.equals(src.subarray(offset, offset + MiB))).toBe(true);
      }
      // Still in step after it all.
      c.sendRequest({ type: CMD.FLUSH, handle: 99n });
      if (structured) expect(await c.structuredReply()).toMatchObject([{ handle: 99n, type: REPLY_TYPE.NONE }]);
      else expect(await c.simpleReply()).toMatchObject({ handle: 99n, error: 0 });
      c.destroy();
    });
  }
});

describe('zero-copy read replies from a volume', () => {
  const CHUNK = 64 * KiB;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let host: VolumeManager;
  let srv: TestServer;
  const base = (i: number): Buffer => randomBytes(CHUNK, 500 + i);
  const own = randomBytes(CHUNK, 900);

  beforeAll(async () => {
    dir = await tempDir('slacker-zc-vol-');
    host = await VolumeManager.open(join(dir.path, 'root'));
    await host.create('base', 16 * CHUNK, { chunkSize: CHUNK });
    const b = await host.acquire('base');
    for (const i of [0, 2]) await b.pwrite!(base(i), i * CHUNK, { fua: false });
    await host.release('base');
    await host.freeze('base');
    await host.clone('base', 'top');
    const top = await host.acquire('top');
    await top.pwrite!(own, 3 * CHUNK, { fua: true }); // chunk 3 in the clone's own data file
    srv = await startServer([{ name: 'top', backend: top }]);
  });
  afterAll(async () => {
    await srv?.close();
    await host?.close();
    await dir?.cleanup();
  });

  it('sends base chunks and the clone’s own data with sendfile and reports holes as holes', async () => {
    const c = await openExport(srv.tcp.port, 'top', { structured: true });
    const before = srv.server.readReplies.direct;
    const offset = CHUNK / 2; // from the middle of chunk 0 to the middle of chunk 5
    c.sendRequest({ type: CMD.READ, handle: 9n, offset, length: 5 * CHUNK });
    const chunks = await c.structuredReply();
    const at = (k: (typeof chunks)[number]): number => Number(k.payload.readBigUInt64BE(0));
    expect(chunks.map((k) => [k.type, at(k)])).toEqual([
      [REPLY_TYPE.OFFSET_DATA, offset],
      [REPLY_TYPE.OFFSET_HOLE, CHUNK],
      [REPLY_TYPE.OFFSET_DATA, 2 * CHUNK],
      [REPLY_TYPE.OFFSET_HOLE, 4 * CHUNK],
    ]);
    expect(chunks[0]!.payload.subarray(8).equals(base(0).subarray(CHUNK / 2))).toBe(true);
    expect(chunks[1]!.payload.readUInt32BE(8)).toBe(CHUNK);
    expect(chunks[2]!.payload.subarray(8).equals(Buffer.concat([base(2), own]))).toBe(true);
    expect(chunks[3]!.payload.readUInt32BE(8)).toBe(CHUNK + CHUNK / 2);
    expect(srv.server.readReplies.direct).toBe(before + 1);
    c.destroy();
  });
});

describe('zero-copy read replies from a lazily fetched volume', () => {
  const CHUNK = 64 * KiB;
  const CHUNKS = 64;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let host: VolumeManager;
  let srv: TestServer;
  const data = (i: number): Buffer => randomBytes(CHUNK, 700 + i);
  const all = Buffer.concat(Array.from({ length: CHUNKS }, (_, i) => data(i)));

  beforeAll(async () => {
    await requireTools('nbdcopy');
    dir = await tempDir('slacker-zc-cold-');
    const store = `dir://${join(dir.path, 'store')}`;
    const origin = await VolumeManager.open(join(dir.path, 'origin'), { store: openStore(store) });
    const indexes = Array.from({ length: CHUNKS }, (_, i) => i);
    const ref = await publishVolume(origin, 'img', indexes, { size: CHUNKS * CHUNK, chunkSize: CHUNK, data });
    await origin.close();
    host = await VolumeManager.open(join(dir.path, 'host'), {
      store: openStore(store),
      fetchPolicy: { deadlineMs: 600, initialBackoffMs: 50, maxBackoffMs: 100 },
    });
    await host.openSnapshot(ref, 'img');
    srv = await startServer([{ name: 'img', backend: await host.acquire('img') }]);
  });
  afterAll(async () => {
    await srv?.close();
    await host?.close();
    await dir?.cleanup();
  });

  it('fetches a cold range, sends it with sendfile, and counts fetches and hits once each', async () => {
    const c = await openExport(srv.tcp.port, 'img', { structured: true });
    const { direct, copied } = srv.server.readReplies;
    const offset = CHUNK / 2; // three chunks: the middle of chunk 0 to the middle of chunk 3
    for (const handle of [1n, 2n]) {
      c.sendRequest({ type: CMD.READ, handle, offset, length: 3 * CHUNK });
      const r = await structuredData(c);
      expect(r.data.equals(all.subarray(offset, offset + 3 * CHUNK))).toBe(true);
    }
    expect(srv.server.readReplies).toMatchObject({ direct: direct + 2, copied });
    // The first read fetched four chunks; the second found them local.
    expect(host.stats('img').fetch).toMatchObject({ chunksFetched: 4, localHits: 4 });
    c.destroy();
  });

  it('answers EIO, within the fetch deadline, for a cold range the store cannot deliver; then recovers', async () => {
    const storeDir = join(dir.path, 'store');
    await rename(storeDir, `${storeDir}.away`);
    const c = await openExport(srv.tcp.port, 'img', { structured: false });
    const t0 = Date.now();
    c.sendRequest({ type: CMD.READ, handle: 1n, offset: 60 * CHUNK, length: CHUNK });
    expect((await c.simpleReply()).error).toBe(5); // EIO, no data
    expect(Date.now() - t0).toBeLessThan(5000);
    await rename(`${storeDir}.away`, storeDir);
    c.sendRequest({ type: CMD.READ, handle: 2n, offset: 60 * CHUNK, length: CHUNK });
    expect((await c.simpleReply(CHUNK)).data.equals(data(60))).toBe(true);
    c.destroy();
  });

  it('gives nbdcopy the whole volume from sendfile, each chunk fetched once', async () => {
    const out = join(dir.path, 'copy.img');
    const { copied } = srv.server.readReplies;
    await run('nbdcopy', ['--connections=4', srv.uri('img', 'unix'), out]);
    expect((await readFile(out)).equals(all)).toBe(true);
    expect(srv.server.readReplies.copied).toBe(copied);
    expect(host.stats('img').fetch.chunksFetched).toBe(CHUNKS);
  });
});
