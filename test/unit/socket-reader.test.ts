/** SocketReader over a real socket pair: exact reads, chunked reads, skips, backpressure, abort. */
import { createServer, connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ShutdownError } from '../../common/errors.js';
import { SLAB_BYTES, SlabPool } from '../../nbd-server/receive-slabs.js';
import { PeerClosedError, receiveIntoSlabs, SocketReader } from '../../nbd-server/socket-reader.js';
import { randomBytes } from '../helpers/tmp.js';

async function pair(pauseOnConnect = false): Promise<{ client: Socket; server: Socket; close: () => void }> {
  let accepted!: (s: Socket) => void;
  const got = new Promise<Socket>((r) => (accepted = r));
  const srv = createServer({ pauseOnConnect }, (s) => accepted(s));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  const client = connect(port, '127.0.0.1');
  const server = await got;
  return {
    client,
    server,
    close: () => {
      client.destroy();
      server.destroy();
      srv.close();
    },
  };
}

/** A pair whose server side receives into slabs of `pool`, as the NBD server's connections do. */
async function slabPair(pool: SlabPool, highWaterMark?: number) {
  const p = await pair(true);
  const { socket, reader } = receiveIntoSlabs(p.server, highWaterMark, pool);
  return {
    client: p.client,
    reader,
    close: () => {
      socket.destroy();
      p.close();
    },
  };
}

/** Resolves once the reader has `n` bytes buffered. */
async function buffered(reader: SocketReader, n: number): Promise<void> {
  while (reader.pending < n) await new Promise((r) => setTimeout(r, 5));
}

describe('SocketReader', () => {
  let close: (() => void) | undefined;
  afterEach(() => close?.());

  it('reads exact sizes across arbitrary arrival boundaries', async () => {
    const p = await pair();
    close = p.close;
    const reader = new SocketReader(p.server);
    const data = randomBytes(300_000, 1);
    for (let i = 0; i < data.length; i += 7777) p.client.write(data.subarray(i, i + 7777));
    const a = await reader.read(3);
    const b = await reader.read(200_000);
    const c = await reader.readChunks(99_997);
    expect(Buffer.concat([a, b, ...c]).equals(data)).toBe(true);
    expect(c.length).toBeGreaterThan(1); // really arrived in pieces, and was not joined
  });

  it('skips without buffering and stays in step', async () => {
    const p = await pair();
    close = p.close;
    const reader = new SocketReader(p.server, 64 * 1024);
    const skipped = reader.skip(10 * 1024 * 1024);
    const piece = Buffer.alloc(1024 * 1024, 1);
    for (let i = 0; i < 10; i++) p.client.write(piece);
    p.client.write(Buffer.from('next'));
    await skipped;
    expect(reader.pending).toBeLessThanOrEqual(4);
    expect((await reader.read(4)).toString()).toBe('next');
  });

  it('pauses the socket at the high-water mark', async () => {
    const p = await pair();
    close = p.close;
    const reader = new SocketReader(p.server, 64 * 1024);
    p.client.write(Buffer.alloc(4 * 1024 * 1024));
    await new Promise((r) => setTimeout(r, 100));
    expect(p.server.isPaused()).toBe(true);
    expect(reader.pending).toBeLessThan(4 * 1024 * 1024);
    await reader.read(2 * 1024 * 1024); // a read larger than the mark is still satisfied
  });

  it('rejects pending and later reads when the peer closes or the reader is aborted', async () => {
    const p = await pair();
    close = p.close;
    const reader = new SocketReader(p.server);
    const pending = reader.read(10);
    p.client.end(Buffer.from('abc'));
    await expect(pending).rejects.toBeInstanceOf(PeerClosedError);
    const q = await pair();
    const r2 = new SocketReader(q.server);
    const waiting = r2.readChunks(100);
    r2.abort(new ShutdownError('stop'));
    await expect(waiting).rejects.toBeInstanceOf(ShutdownError);
    await expect(r2.read(1)).rejects.toBeInstanceOf(ShutdownError);
    q.close();
  });

  describe('receiving into slabs', () => {
    it('reads exact sizes across arbitrary arrival boundaries, and lends payloads where they landed', async () => {
      const p = await slabPair(new SlabPool());
      close = p.close;
      const data = randomBytes(900_000, 2);
      for (let i = 0; i < data.length; i += 7777) p.client.write(data.subarray(i, i + 7777));
      const a = await p.reader.read(28);
      const b = await p.reader.readChunks(300_000);
      const c = await p.reader.lendChunks(600_000 - 28);
      expect(Buffer.concat([a, ...b, ...c.chunks]).equals(data.subarray(0, 900_000))).toBe(true);
      // Lent pieces are views of slabs; owned ones are not.
      expect(c.chunks.every((x) => x.buffer.byteLength === SLAB_BYTES)).toBe(true);
      expect(b.every((x) => x.buffer.byteLength !== SLAB_BYTES)).toBe(true);
      c.release();
    });

    it('never reuses a slab while a payload in it is lent, and reuses it once released', async () => {
      const pool = new SlabPool();
      const p = await slabPair(pool);
      close = p.close;
      const first = randomBytes(100_000, 3);
      p.client.write(first);
      const lent = await p.reader.lendChunks(first.length);
      // Several slabs' worth arrives and is consumed while the first payload is still lent.
      const more = randomBytes(4 * SLAB_BYTES, 4);
      p.client.write(more);
      expect((await p.reader.readChunks(more.length)).reduce((n, x) => n + x.length, 0)).toBe(more.length);
      expect(Buffer.concat(lent.chunks).equals(first)).toBe(true);
      expect(p.reader.slabsHeld).toBeGreaterThan(1);
      lent.release();
      lent.release(); // a second release changes nothing
      // Everything is released: the reader keeps its current slab only, the rest went back.
      expect(p.reader.slabsHeld).toBe(1);
      expect(pool.kept).toBeGreaterThan(0);
    });

    it('gives reads buffers of their own once a connection holds its limit of slabs', async () => {
      const p = await slabPair(new SlabPool(), 64 * 1024 * 1024);
      close = p.close;
      const data = randomBytes(20 * SLAB_BYTES, 5);
      p.client.write(data);
      await buffered(p.reader, data.length);
      const lent = [];
      for (let i = 0; i < 20; i++) lent.push(await p.reader.lendChunks(SLAB_BYTES));
      expect(p.reader.slabsHeld).toBeLessThanOrEqual(16);
      expect(Buffer.concat(lent.flatMap((l) => l.chunks)).equals(data)).toBe(true);
      for (const l of lent) l.release();
      expect(p.reader.slabsHeld).toBeLessThanOrEqual(1); // the next read may still get its own buffer
    });

    it('skips, pauses at the high-water mark and fails reads like a plain socket', async () => {
      const p = await slabPair(new SlabPool(), 64 * 1024);
      close = p.close;
      const skipped = p.reader.skip(3 * 1024 * 1024);
      p.client.write(Buffer.alloc(3 * 1024 * 1024, 1));
      p.client.write(Buffer.from('next'));
      await skipped;
      expect((await p.reader.read(4)).toString()).toBe('next');
      p.client.write(Buffer.alloc(2 * 1024 * 1024));
      await new Promise((r) => setTimeout(r, 100));
      expect(p.reader.pending).toBeLessThan(2 * 1024 * 1024);
      await p.reader.read(2 * 1024 * 1024);
      expect(p.reader.slabsHeld).toBe(1);
      const pending = p.reader.lendChunks(10);
      p.client.end(Buffer.from('abc'));
      await expect(pending).rejects.toBeInstanceOf(PeerClosedError);
    });
  });
});
