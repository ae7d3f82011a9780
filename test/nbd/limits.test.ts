/**
 * Backpressure and bounded memory: a peer claiming a 4 GiB write, a peer that never reads its
 * replies, and 1,000 idle connections must neither grow the server's memory without bound nor
 * stall a well-behaved client on another connection.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../block/backends/memory.js';
import { CMD, NBD_ERR, REQUEST_MAGIC } from '../../nbd-server/protocol.js';
import { DEFAULT_LIMITS } from '../../nbd-server/server.js';
import { openExport, RawClient } from '../helpers/raw-client.js';
import { startServer, type TestServer } from '../helpers/server.js';

const MiB = 1024 * 1024;

/** Round-trip latency of one 4 KiB read for a bystander client. */
async function bystanderLatency(c: RawClient, handle: bigint): Promise<number> {
  const t0 = performance.now();
  c.sendRequest({ type: CMD.READ, handle, offset: 0, length: 4096 });
  const r = await c.simpleReply(4096);
  expect(r.error).toBe(0);
  return performance.now() - t0;
}

/** Samples the process's resident memory while `work` runs; returns the peak growth. */
async function peakRssGrowth(work: () => Promise<void>): Promise<number> {
  const base = process.memoryUsage().rss;
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  return Math.max(peak, process.memoryUsage().rss) - base;
}

describe('limits', () => {
  let srv: TestServer;

  // The export is sparse memory, larger than any 32-bit write claim.
  beforeAll(async () => {
    srv = await startServer([{ name: 'big', backend: new MemoryBackend({ size: 8 * 1024 * MiB }) }]);
  });
  afterAll(async () => {
    await srv?.close();
  });

  it('streams past a 4 GiB write claim in constant memory and stays in sync', async () => {
    const c = await openExport(srv.tcp.port, 'big');
    const bystander = await openExport(srv.tcp.port, 'big');
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(CMD.WRITE, 6);
    h.writeBigUInt64BE(77n, 8);
    h.writeUInt32BE(0xffffffff, 24);
    const piece = Buffer.alloc(4 * MiB, 0xcd);
    const latencies: number[] = [];

    const growth = await peakRssGrowth(async () => {
      c.write(h);
      let left = 0xffffffff;
      let n = 0;
      while (left > 0) {
        const k = Math.min(piece.length, left);
        if (!c.socket.write(k === piece.length ? piece : piece.subarray(0, k))) {
          await new Promise((r) => c.socket.once('drain', r));
        }
        left -= k;
        if (++n % 128 === 0) latencies.push(await bystanderLatency(bystander, BigInt(n)));
        expect(srv.server.bytesInFlight).toBe(0); // nothing of the refused payload is held
      }
      const reply = await c.simpleReply();
      expect(reply).toMatchObject({ handle: 77n, error: NBD_ERR.EOVERFLOW });
    });
    await c.ping();
    expect(growth).toBeLessThan(128 * MiB);
    expect(Math.max(...latencies)).toBeLessThan(1000);
    c.destroy();
    bystander.destroy();
  });

  it('stops reading from a client that never reads its replies, without stalling others', async () => {
    const slow = await openExport(srv.tcp.port, 'big');
    const bystander = await openExport(srv.tcp.port, 'big');
    slow.socket.pause(); // never read: replies pile up in the kernel, then in the server
    const requests = 300;
    for (let i = 0; i < requests; i++) {
      slow.sendRequest({ type: CMD.READ, handle: BigInt(i), offset: (i % 512) * MiB, length: MiB });
    }
    await new Promise((r) => setTimeout(r, 500));
    // Held replies are capped by the per-connection budget, whatever the client asked for.
    expect(srv.server.bytesInFlight).toBeLessThanOrEqual(DEFAULT_LIMITS.budgetBytes);
    for (let i = 0; i < 20; i++) expect(await bystanderLatency(bystander, BigInt(i))).toBeLessThan(500);

    // Once it reads again, every reply arrives, intact and in order of completion.
    slow.socket.resume();
    const seen = new Set<bigint>();
    for (let i = 0; i < requests; i++) {
      const r = await slow.simpleReply(MiB);
      expect(r.error).toBe(0);
      seen.add(r.handle);
    }
    expect(seen.size).toBe(requests);
    slow.destroy();
    bystander.destroy();
  });

  it('holds 1,000 idle connections cheaply and still serves an active client', async () => {
    const idle: RawClient[] = [];
    const heapBefore = process.memoryUsage().heapUsed;
    try {
      for (let i = 0; i < 1000; i++) {
        // Half sit in the handshake, half in transmission.
        idle.push(
          i % 2 === 0 ? await RawClient.connect({ port: srv.tcp.port }) : await openExport(srv.tcp.port, 'big'),
        );
      }
      expect(srv.server.connectionCount).toBeGreaterThanOrEqual(1000);
      const active = await openExport(srv.tcp.port, 'big');
      for (let i = 0; i < 50; i++) expect(await bystanderLatency(active, BigInt(i))).toBeLessThan(500);
      active.destroy();
      // Per-connection state is small: well under 50 KiB a connection on the JS heap.
      expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(50 * 1024 * 1000);
    } finally {
      for (const c of idle) c.destroy();
    }
  });
});
