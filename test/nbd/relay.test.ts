/**
 * The NBD relay (nbd-relay/relay.ts) between a raw client and our real NBD server: requests pass
 * through; while the server is gone they wait and are answered once a new server has the export;
 * writes that completed but that no flush covered are replayed to the new server (a backend that
 * forgets unflushed writes at a restart, as a volume does when its process is killed, shows it);
 * bad input ends only the connection that sent it.
 */
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Backend } from '../../block/backend.js';
import { MemoryBackend } from '../../block/backends/memory.js';
import { silentLogger } from '../../common/logger.js';
import { OPT_SLACKER_ABANDON, Relay } from '../../nbd-relay/relay.js';
import { CMD, NBD_ERR, REP } from '../../nbd-server/protocol.js';
import { NbdServer } from '../../nbd-server/server.js';
import { RawClient, goPayload } from '../helpers/raw-client.js';
import { tempDir } from '../helpers/tmp.js';

const SIZE = 4 * 1024 * 1024;

/**
 * A backend over a memory one that keeps writes in a cache until FLUSH, as a volume keeps its
 * chunk map: `crash()` forgets what was not flushed.
 */
class ForgetfulBackend {
  readonly kind = 'forgetful';
  readonly size: number;
  readonly multiConn = true;
  private pending: { data: Buffer; offset: number }[] = [];
  constructor(private readonly base: MemoryBackend) {
    this.size = base.size;
  }
  get blockSizes() {
    return this.base.blockSizes;
  }
  async pread(length: number, offset: number): Promise<Buffer> {
    const out = await this.base.pread(length, offset);
    for (const w of this.pending) {
      const from = Math.max(offset, w.offset);
      const to = Math.min(offset + length, w.offset + w.data.length);
      if (from < to) w.data.copy(out, from - offset, from - w.offset, to - w.offset);
    }
    return out;
  }
  async pwrite(data: Buffer, offset: number): Promise<void> {
    this.pending.push({ data: Buffer.from(data), offset });
  }
  async flush(): Promise<void> {
    for (const w of this.pending) await this.base.pwrite(w.data, w.offset);
    this.pending = [];
  }
  crash(): void {
    this.pending = [];
  }
}

describe('NBD relay', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let server: NbdServer;
  let relay: Relay;
  let upstream: string;
  let listen: string;
  const clients: RawClient[] = [];

  const startServer = async (backend: Backend): Promise<void> => {
    server = new NbdServer({ log: silentLogger() });
    server.addExport({ name: 'disk', backend });
    await server.listen(`unix://${upstream}`);
  };
  const client = async (): Promise<RawClient> => {
    const c = await RawClient.connect({ path: listen });
    clients.push(c);
    return c;
  };

  beforeEach(async () => {
    dir = await tempDir('slacker-relay-');
    upstream = join(dir.path, 'nbd.sock');
    listen = join(dir.path, 'relay.sock');
    relay = new Relay({ listen, upstream, log: silentLogger(), idleExitMs: 60_000 });
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy();
    await relay.close();
    await server?.close();
    await dir.cleanup();
  });

  it('passes requests through, with the export size and flags of the server', async () => {
    await startServer(new MemoryBackend({ size: SIZE }));
    await relay.listen();
    const c = await client();
    const { size, flags } = await c.go('disk');
    expect(size).toBe(BigInt(SIZE));
    expect(flags & 1).toBe(1);
    const data = Buffer.alloc(65536, 7);
    c.sendRequest({ type: CMD.WRITE, offset: 4096, data, handle: 11n });
    expect(await c.simpleReply()).toMatchObject({ error: 0, handle: 11n });
    c.sendRequest({ type: CMD.READ, offset: 4096, length: data.length, handle: 12n });
    const r = await c.simpleReply(data.length);
    expect(r.handle).toBe(12n);
    expect(r.data.equals(data)).toBe(true);
    await c.ping();
  });

  it('passes read data on intact while the client is slow to take it (lent receive slabs)', async () => {
    const backend = new MemoryBackend({ size: SIZE });
    const BLOCK = 128 * 1024;
    const blocks = SIZE / BLOCK;
    for (let i = 0; i < blocks; i++) await backend.pwrite(Buffer.alloc(BLOCK, i + 1), i * BLOCK);
    await startServer(backend);
    await relay.listen();
    const c = await client();
    await c.go('disk');
    // Every block asked for at once, then nothing read for a while: the replies back up in the
    // relay's socket to the client while later ones keep landing in its receive slabs.
    c.socket.pause();
    for (let i = 0; i < blocks; i++)
      c.sendRequest({ type: CMD.READ, offset: i * BLOCK, length: BLOCK, handle: BigInt(i) });
    await new Promise((r) => setTimeout(r, 300));
    c.socket.resume();
    for (let k = 0; k < blocks; k++) {
      const r = await c.simpleReply(BLOCK);
      expect(r.error).toBe(0);
      expect(r.data.every((b) => b === Number(r.handle) + 1)).toBe(true);
    }
  });

  it('holds requests while the server is gone and answers them from the restarted one, replaying unflushed writes', async () => {
    const memory = new MemoryBackend({ size: SIZE });
    const backend = new ForgetfulBackend(memory);
    await startServer(backend as unknown as Backend);
    await relay.listen();
    const c = await client();
    await c.go('disk');
    const flushed = Buffer.alloc(4096, 1);
    const unflushed = Buffer.alloc(4096, 2);
    c.sendRequest({ type: CMD.WRITE, offset: 0, data: flushed, handle: 1n });
    await c.simpleReply();
    await c.ping(2n); // FLUSH: the first write is safe on the server
    c.sendRequest({ type: CMD.WRITE, offset: 8192, data: unflushed, handle: 3n });
    expect((await c.simpleReply()).error).toBe(0); // completed, not flushed

    // The server is killed: it forgets the unflushed write (before its close could flush it).
    backend.crash();
    await server.close();
    c.sendRequest({ type: CMD.READ, offset: 8192, length: 4096, handle: 4n });
    const answered = c.simpleReply(4096);
    let early = false;
    void answered.then(() => (early = true));
    await new Promise((r) => setTimeout(r, 300));
    expect(early).toBe(false); // held, not failed

    await startServer(backend as unknown as Backend);
    const r = await answered;
    expect(r).toMatchObject({ error: 0, handle: 4n });
    expect(r.data.equals(unflushed)).toBe(true); // replayed by the relay
    c.sendRequest({ type: CMD.READ, offset: 0, length: 4096, handle: 5n });
    expect((await c.simpleReply(4096)).data.equals(flushed)).toBe(true);
  });

  it('answers a FLUSH itself when nothing completed since the server made everything durable', async () => {
    const memory = new MemoryBackend({ size: SIZE });
    let flushes = 0;
    const counting = Object.assign(Object.create(memory) as MemoryBackend, {
      flush: async () => {
        flushes++;
        await memory.flush();
      },
    });
    await startServer(counting);
    await relay.listen();
    const c = await client();
    await c.go('disk');
    await c.ping(1n); // the first goes to the server: what came before this link is unknown
    expect(flushes).toBe(1);
    c.sendRequest({ type: CMD.WRITE, offset: 0, data: Buffer.alloc(4096, 7), handle: 2n });
    await c.simpleReply();
    await c.ping(3n);
    await c.ping(4n); // an fsync of a clean file
    await c.ping(5n);
    expect(flushes).toBe(2);
    c.sendRequest({ type: CMD.TRIM, offset: 0, length: 4096, handle: 6n });
    await c.simpleReply();
    await c.ping(7n);
    expect(flushes).toBe(3);
  });

  it.each(['the server does not know it for a while', 'the daemon abandons it', 'no server comes back in time'])(
    'held I/O of an export that does not come back fails with EIO when %s, and its clients are let go',
    async (how) => {
      relay = new Relay({
        listen,
        upstream,
        log: silentLogger(),
        idleExitMs: 60_000,
        unknownExportMs: 300,
        holdMs: how === 'no server comes back in time' ? 500 : 60_000,
      });
      await startServer(new MemoryBackend({ size: SIZE }));
      await relay.listen();
      const c = await client();
      await c.go('disk');
      await server.close();
      c.sendRequest({ type: CMD.READ, offset: 0, length: 4096, handle: 9n });
      const reply = c.simpleReply(4096);
      // A server comes back without the export (or none does).
      if (how !== 'no server comes back in time') {
        server = new NbdServer({ log: silentLogger() });
        await server.listen(`unix://${upstream}`);
      }
      if (how === 'the daemon abandons it') {
        const d = await client();
        await d.start();
        d.sendOption(OPT_SLACKER_ABANDON, Buffer.from('disk'));
        expect((await d.optionReplies())[0]!.type).toBe(REP.ACK);
      }
      expect(await reply).toMatchObject({ error: NBD_ERR.EIO, handle: 9n });
      await c.closed;
    },
  );

  it('an unknown export is refused at GO, and bad input ends only its own connection', async () => {
    await startServer(new MemoryBackend({ size: SIZE }));
    await relay.listen();
    const good = await client();
    await good.go('disk');
    const unknown = await client();
    await expect(unknown.go('nope')).rejects.toThrow(`GO refused: ${REP.ERR_UNKNOWN.toString(16)}`);
    const bad = await client();
    await bad.go('disk');
    bad.write(Buffer.alloc(28, 0xff)); // not a request
    await bad.closed;
    await good.ping();
    const raw = await client();
    await raw.start();
    raw.sendOption(7, goPayload('disk').subarray(0, 3)); // truncated GO payload
    expect((await raw.optionReplies())[0]!.type).toBe(REP.ERR_INVALID);
  });
});
