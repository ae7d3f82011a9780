/** SocketReader over a real socket pair: exact reads, chunked reads, skips, backpressure, abort. */
import { createServer, connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ShutdownError } from '../../common/errors.js';
import { PeerClosedError, SocketReader } from '../../nbd-server/socket-reader.js';
import { randomBytes } from '../helpers/tmp.js';

async function pair(): Promise<{ client: Socket; server: Socket; close: () => void }> {
  let accepted!: (s: Socket) => void;
  const got = new Promise<Socket>((r) => (accepted = r));
  const srv = createServer((s) => accepted(s));
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
});
