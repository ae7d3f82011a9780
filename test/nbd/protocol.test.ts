/**
 * Protocol conformance on raw sockets: the handshake corners, malformed and hostile requests,
 * ordering, and shutdown. After every abuse the server must still serve other connections.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../../block/backend.js';
import { MemoryBackend } from '../../block/backends/memory.js';
import { readOnly } from '../../block/filters/read-only.js';
import {
  CMD,
  CMD_FLAG,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  INFO,
  NBD_ERR,
  OPT,
  REP,
  REPLY_TYPE,
  STATE_HOLE,
  STATE_ZERO,
  TFLAG,
} from '../../nbd-server/protocol.js';
import { goPayload, metaContextPayload, openExport, RawClient } from '../helpers/raw-client.js';
import { startServer, type TestServer } from '../helpers/server.js';

const MiB = 1024 * 1024;

/** Memory backend whose reads at offset 0 take `delayMs`: lets a test force out-of-order replies. */
function slowAtZero(delayMs: number): Backend {
  const mem = new MemoryBackend({ size: 4 * MiB });
  const pread = mem.pread.bind(mem);
  mem.pread = async (length, offset) => {
    if (offset === 0) await new Promise((r) => setTimeout(r, delayMs));
    return pread(length, offset);
  };
  return mem;
}

describe('NBD protocol on raw sockets', () => {
  let srv: TestServer;
  const clients: RawClient[] = [];
  const connect = async (): Promise<RawClient> => {
    const c = await RawClient.connect({ port: srv.tcp.port });
    clients.push(c);
    return c;
  };
  const open = async (name = 'mem', options: { structured?: boolean; meta?: string[] } = {}) => {
    const c = await openExport(srv.tcp.port, name, options);
    clients.push(c);
    return c;
  };
  /** A fresh, well-behaved session still works: the server survived. */
  const serverStillServes = async (): Promise<void> => {
    const c = await open();
    c.sendRequest({ type: CMD.READ, handle: 7n, offset: 0, length: 512 });
    expect((await c.simpleReply(512)).error).toBe(0);
  };

  beforeAll(async () => {
    srv = await startServer([
      { name: 'mem', backend: new MemoryBackend({ size: 4 * MiB }), description: 'scratch' },
      { name: 'big', backend: new MemoryBackend({ size: 64 * MiB }) },
      { name: 'ro', backend: readOnly(new MemoryBackend({ size: MiB })) },
      { name: 'aligned', backend: new MemoryBackend({ size: MiB, blockSizes: { minimum: 512 } }) },
      { name: 'slow', backend: slowAtZero(300) },
      { name: '', backend: new MemoryBackend({ size: 12345 }) },
    ]);
  });
  afterEach(() => {
    for (const c of clients.splice(0)) c.destroy();
  });
  afterAll(async () => {
    await srv?.close();
  });

  describe('handshake', () => {
    it('greets with fixed newstyle and NO_ZEROES', async () => {
      const c = await connect();
      expect(await c.greeting()).toBe(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    });

    it('serves an EXPORT_NAME-only client (as nbd-client -g and the kernel do)', async () => {
      const c = await connect();
      await c.start(0); // not even fixed newstyle, and zeroes wanted
      c.sendOption(OPT.EXPORT_NAME, Buffer.from('mem'));
      const r = await c.reader.read(134);
      expect(r.readBigUInt64BE(0)).toBe(BigInt(4 * MiB));
      expect(r.readUInt16BE(8) & TFLAG.HAS_FLAGS).toBe(TFLAG.HAS_FLAGS);
      expect(r.subarray(10).every((b) => b === 0)).toBe(true);
      c.sendRequest({ type: CMD.WRITE, handle: 1n, offset: 100, data: Buffer.from('hello') });
      expect((await c.simpleReply()).error).toBe(0);
      c.sendRequest({ type: CMD.READ, handle: 2n, offset: 100, length: 5 });
      expect((await c.simpleReply(5)).data.toString()).toBe('hello');
    });

    it('serves the default export for an empty name', async () => {
      const c = await connect();
      const { size } = await c.go('');
      expect(size).toBe(12345n);
    });

    it('ends the session on EXPORT_NAME for an unknown export (it has no error reply)', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(OPT.EXPORT_NAME, Buffer.from('nope'));
      await c.closed;
      await serverStillServes();
    });

    it('answers unknown options with ERR_UNSUP and keeps negotiating', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(4242, Buffer.from('junk data'));
      expect((await c.optionReply()).type).toBe(REP.ERR_UNSUP);
      c.sendOption(OPT.STARTTLS);
      const tls = await c.optionReply();
      expect(tls.type).toBe(REP.ERR_UNSUP);
      expect(tls.data.toString()).toMatch(/TLS/);
      c.sendOption(OPT.GO, goPayload('mem'));
      expect((await c.optionReplies()).at(-1)!.type).toBe(REP.ACK);
    });

    it('lists exports with descriptions', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(OPT.LIST);
      const replies = await c.optionReplies();
      const names = replies
        .filter((r) => r.type === REP.SERVER)
        .map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
      expect(names.sort()).toEqual(['', 'aligned', 'big', 'mem', 'ro', 'slow']);
      c.sendOption(OPT.LIST, Buffer.from('x'));
      expect((await c.optionReply()).type).toBe(REP.ERR_INVALID);
    });

    it('answers INFO with the requested items, and ERR_UNKNOWN for a missing export', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(OPT.INFO, goPayload('mem', [INFO.NAME, INFO.DESCRIPTION, INFO.BLOCK_SIZE]));
      const replies = await c.optionReplies();
      const infos = new Map(
        replies.filter((r) => r.type === REP.INFO).map((r) => [r.data.readUInt16BE(0), r.data.subarray(2)]),
      );
      expect(infos.get(INFO.NAME)!.toString()).toBe('mem');
      expect(infos.get(INFO.DESCRIPTION)!.toString()).toBe('scratch');
      expect(infos.get(INFO.BLOCK_SIZE)!.readUInt32BE(8)).toBe(32 * MiB);
      c.sendOption(OPT.INFO, goPayload('missing'));
      expect((await c.optionReply()).type).toBe(REP.ERR_UNKNOWN);
      // INFO does not end negotiation: GO still works.
      c.sendOption(OPT.GO, goPayload('mem'));
      expect((await c.optionReplies()).at(-1)!.type).toBe(REP.ACK);
    });

    it('refuses malformed option payloads with ERR_INVALID', async () => {
      const c = await connect();
      await c.start();
      const bad = goPayload('mem');
      bad.writeUInt32BE(1000, 0); // name length past the payload
      c.sendOption(OPT.GO, bad);
      expect((await c.optionReply()).type).toBe(REP.ERR_INVALID);
      c.sendOption(OPT.GO, Buffer.concat([goPayload('mem'), Buffer.from([1])])); // trailing byte
      expect((await c.optionReply()).type).toBe(REP.ERR_INVALID);
      c.sendOption(OPT.STRUCTURED_REPLY, Buffer.from([0]));
      expect((await c.optionReply()).type).toBe(REP.ERR_INVALID);
      c.sendOption(OPT.SET_META_CONTEXT, metaContextPayload('mem', ['base:allocation']));
      expect((await c.optionReply()).type).toBe(REP.ERR_INVALID); // structured replies first
      const long = metaContextPayload('x'.repeat(5000), []);
      c.sendOption(OPT.STRUCTURED_REPLY);
      await c.optionReply();
      c.sendOption(OPT.LIST_META_CONTEXT, long); // string over 4096 bytes
      expect((await c.optionReply()).type).toBe(REP.ERR_INVALID);
    });

    it('lists and selects base:allocation', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(OPT.STRUCTURED_REPLY);
      await c.optionReply();
      c.sendOption(OPT.LIST_META_CONTEXT, metaContextPayload('mem', []));
      const listed = await c.optionReplies();
      expect(listed[0]!.type).toBe(REP.META_CONTEXT);
      expect(listed[0]!.data.subarray(4).toString()).toBe('base:allocation');
      c.sendOption(OPT.SET_META_CONTEXT, metaContextPayload('mem', ['base:allocation', 'x-other:thing']));
      const set = await c.optionReplies();
      expect(set.map((r) => r.type)).toEqual([REP.META_CONTEXT, REP.ACK]);
      expect(set[0]!.data.readUInt32BE(0)).not.toBe(0);
    });

    it('acknowledges ABORT and closes', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(OPT.ABORT);
      expect((await c.optionReply()).type).toBe(REP.ACK);
      await c.closed;
    });

    it('disconnects on bad option magic, unknown client flags, and huge options', async () => {
      const a = await connect();
      await a.start();
      a.sendOption(OPT.GO, goPayload('mem'), 0x1234n);
      await a.closed;
      const b = await connect();
      await b.start(1 << 7);
      await b.closed;
      const c = await connect();
      await c.start();
      const h = Buffer.alloc(16);
      h.writeBigUInt64BE(0x49484156454f5054n, 0);
      h.writeUInt32BE(OPT.GO, 8);
      h.writeUInt32BE(0xffffffff, 12);
      c.write(h);
      await c.closed;
      await serverStillServes();
    });

    it('cuts off a client that never finishes the handshake', async () => {
      const quick = await startServer([{ name: 'm', backend: new MemoryBackend({ size: 4096 }) }], {
        limits: { handshakeTimeoutMs: 200 },
      });
      try {
        const c = await RawClient.connect({ port: quick.tcp.port });
        const t0 = Date.now();
        await c.closed;
        expect(Date.now() - t0).toBeLessThan(5000);
      } finally {
        await quick.close();
      }
    });
  });

  describe('transmission', () => {
    it('answers errors with the spec errno and stays in sync', async () => {
      const c = await open();
      const cases: [Parameters<RawClient['sendRequest']>[0], number][] = [
        [{ type: CMD.READ, offset: 4 * MiB - 1, length: 2 }, NBD_ERR.EINVAL],
        [{ type: CMD.READ, offset: 2n ** 63n, length: 1 }, NBD_ERR.EINVAL],
        [{ type: CMD.WRITE, offset: 4 * MiB, data: Buffer.alloc(10) }, NBD_ERR.ENOSPC],
        [{ type: CMD.WRITE_ZEROES, offset: 4 * MiB - 1, length: 2 }, NBD_ERR.ENOSPC],
        [{ type: CMD.READ, offset: 0, length: 0 }, NBD_ERR.EINVAL],
        [{ type: 99, offset: 0, length: 1 }, NBD_ERR.EINVAL],
        [{ type: CMD.READ, flags: 1 << 12, offset: 0, length: 1 }, NBD_ERR.EINVAL],
        [{ type: CMD.READ, flags: CMD_FLAG.DF, offset: 0, length: 1 }, NBD_ERR.EINVAL],
        [{ type: CMD.BLOCK_STATUS, offset: 0, length: 1 }, NBD_ERR.EINVAL],
        [{ type: CMD.FLUSH, offset: 1, length: 0 }, NBD_ERR.EINVAL],
      ];
      let handle = 100n;
      for (const [req, errno] of cases) {
        c.sendRequest({ ...req, handle: ++handle });
        const r = await c.simpleReply();
        expect({ req: req.type, error: r.error, handle: r.handle }).toEqual({ req: req.type, error: errno, handle });
      }
      await c.ping();
    });

    it('refuses writes on a read-only export with EPERM, consuming the payload', async () => {
      const c = await open('ro');
      c.sendRequest({ type: CMD.WRITE, handle: 1n, offset: 0, data: Buffer.alloc(70_000, 1) });
      expect((await c.simpleReply()).error).toBe(NBD_ERR.EPERM);
      c.sendRequest({ type: CMD.TRIM, handle: 2n, offset: 0, length: 4096 });
      expect((await c.simpleReply()).error).toBe(NBD_ERR.EPERM);
      await c.ping();
    });

    it('refuses misaligned requests on an export with a 512-byte minimum', async () => {
      const c = await open('aligned');
      c.sendRequest({ type: CMD.READ, handle: 1n, offset: 1, length: 512 });
      expect((await c.simpleReply()).error).toBe(NBD_ERR.EINVAL);
      c.sendRequest({ type: CMD.WRITE, handle: 2n, offset: 512, data: Buffer.alloc(100) });
      expect((await c.simpleReply()).error).toBe(NBD_ERR.EINVAL);
      c.sendRequest({ type: CMD.READ, handle: 3n, offset: 1024, length: 512 });
      expect((await c.simpleReply(512)).error).toBe(0);
    });

    it('answers a write over the maximum with EOVERFLOW and skips its payload', async () => {
      const c = await open('big');
      const big = 33 * MiB;
      c.sendRequest({ type: CMD.WRITE, handle: 9n, offset: 0, length: big });
      c.write(Buffer.alloc(big, 0x5a));
      expect((await c.simpleReply()).error).toBe(NBD_ERR.EOVERFLOW);
      await c.ping();
      c.sendRequest({ type: CMD.READ, handle: 10n, offset: 0, length: 16 });
      expect((await c.simpleReply(16)).data.every((b) => b === 0)).toBe(true); // nothing was written
    });

    it('disconnects on a bad request magic and on a truncated frame, serving others meanwhile', async () => {
      const a = await open();
      const bystander = await open();
      a.write(Buffer.alloc(28, 0xee));
      await a.closed;
      const b = await open();
      b.write(Buffer.alloc(13, 0)); // half a header, then gone
      b.socket.end();
      await b.closed;
      await bystander.ping();
    });

    it('survives a client dropping mid-write and mid-read', async () => {
      const a = await open();
      a.sendRequest({ type: CMD.WRITE, handle: 1n, offset: 0, length: MiB });
      a.write(Buffer.alloc(1000));
      a.destroy();
      const b = await open();
      for (let i = 0; i < 16; i++) b.sendRequest({ type: CMD.READ, handle: BigInt(i), offset: 0, length: MiB });
      b.destroy();
      await new Promise((r) => setTimeout(r, 100));
      await serverStillServes();
      expect(srv.server.bytesInFlight).toBe(0);
    });

    it('replies out of order when a request is slow, never interleaving', async () => {
      const c = await open('slow');
      c.sendRequest({ type: CMD.READ, handle: 1n, offset: 0, length: 4096 });
      c.sendRequest({ type: CMD.READ, handle: 2n, offset: 65536, length: 4096 });
      const first = await c.simpleReply(4096);
      const second = await c.simpleReply(4096);
      expect([first.handle, second.handle]).toEqual([2n, 1n]);
    });

    it('finishes requests in flight before honouring DISC', async () => {
      const c = await open('slow');
      c.sendRequest({ type: CMD.READ, handle: 1n, offset: 0, length: 4096 });
      c.sendRequest({ type: CMD.DISC, handle: 2n });
      const r = await c.simpleReply(4096);
      expect(r.handle).toBe(1n);
      await c.closed;
    });

    it('uses structured replies: data and hole chunks for reads, error chunks for failures', async () => {
      const c = await open('mem', { structured: true, meta: ['base:allocation'] });
      c.sendRequest({ type: CMD.WRITE, handle: 1n, offset: 2 * MiB, data: Buffer.alloc(65536, 0x77) });
      expect((await c.chunk()).type).toBe(REPLY_TYPE.NONE);
      c.sendRequest({ type: CMD.READ, handle: 2n, offset: 2 * MiB - 65536, length: 3 * 65536 });
      const chunks = await c.structuredReply();
      expect(chunks.map((k) => k.type)).toEqual([
        REPLY_TYPE.OFFSET_HOLE,
        REPLY_TYPE.OFFSET_DATA,
        REPLY_TYPE.OFFSET_HOLE,
      ]);
      expect(chunks[1]!.payload.readBigUInt64BE(0)).toBe(BigInt(2 * MiB));
      expect(chunks[1]!.payload.subarray(8).every((b) => b === 0x77)).toBe(true);
      expect(chunks[2]!.flags & 1).toBe(1);
      // DF: one content chunk, holes included as zeroes
      c.sendRequest({ type: CMD.READ, flags: CMD_FLAG.DF, handle: 3n, offset: 2 * MiB - 65536, length: 3 * 65536 });
      const df = await c.structuredReply();
      expect(df.map((k) => k.type)).toEqual([REPLY_TYPE.OFFSET_DATA]);
      expect(df[0]!.payload.length).toBe(8 + 3 * 65536);
      // an error carries a message
      c.sendRequest({ type: CMD.READ, handle: 4n, offset: 4 * MiB, length: 1 });
      const [err] = await c.structuredReply();
      expect(err!.type).toBe(REPLY_TYPE.ERROR);
      expect(err!.payload.readUInt32BE(0)).toBe(NBD_ERR.EINVAL);
      expect(err!.payload.subarray(6).toString()).toMatch(/EINVAL/);
    });

    it('reports block status from the backend, honouring REQ_ONE', async () => {
      const c = await open('mem', { structured: true, meta: ['base:allocation'] });
      c.sendRequest({ type: CMD.WRITE, handle: 1n, offset: MiB, data: Buffer.alloc(65536, 1) });
      await c.chunk();
      c.sendRequest({ type: CMD.BLOCK_STATUS, handle: 2n, offset: MiB - 65536, length: 3 * 65536 });
      const [bs] = await c.structuredReply();
      expect(bs!.type).toBe(REPLY_TYPE.BLOCK_STATUS);
      const descriptors = [];
      for (let p = 4; p < bs!.payload.length; p += 8) {
        descriptors.push([bs!.payload.readUInt32BE(p), bs!.payload.readUInt32BE(p + 4)]);
      }
      expect(descriptors).toEqual([
        [65536, STATE_HOLE | STATE_ZERO],
        [65536, 0],
        [65536, STATE_HOLE | STATE_ZERO],
      ]);
      c.sendRequest({
        type: CMD.BLOCK_STATUS,
        flags: CMD_FLAG.REQ_ONE,
        handle: 3n,
        offset: MiB - 65536,
        length: 3 * 65536,
      });
      const [one] = await c.structuredReply();
      expect(one!.payload.length).toBe(4 + 8);
    });

    it('accepts a request of exactly the 32 MiB maximum', async () => {
      const c = await open('big');
      const data = Buffer.alloc(32 * MiB, 0x42);
      c.sendRequest({ type: CMD.WRITE, handle: 1n, offset: MiB, data });
      expect((await c.simpleReply()).error).toBe(0);
      c.sendRequest({ type: CMD.READ, handle: 2n, offset: MiB, length: 32 * MiB });
      const r = await c.simpleReply(32 * MiB);
      expect(r.error).toBe(0);
      expect(r.data.equals(data)).toBe(true);
    });

    it('makes a write flushed on one connection visible on another (CAN_MULTI_CONN)', async () => {
      const a = await open('big');
      const b = await open('big');
      a.sendRequest({ type: CMD.WRITE, handle: 1n, offset: 40 * MiB, data: Buffer.from('shared') });
      expect((await a.simpleReply()).error).toBe(0);
      await a.ping(); // FLUSH
      b.sendRequest({ type: CMD.READ, handle: 2n, offset: 40 * MiB, length: 6 });
      expect((await b.simpleReply(6)).data.toString()).toBe('shared');
    });

    it('fails FAST_ZERO only where zeroing would be slow, and honours NO_HOLE', async () => {
      const c = await open();
      c.sendRequest({ type: CMD.WRITE, handle: 1n, offset: 0, data: Buffer.alloc(8192, 3) });
      await c.simpleReply();
      c.sendRequest({
        type: CMD.WRITE_ZEROES,
        flags: CMD_FLAG.FAST_ZERO | CMD_FLAG.NO_HOLE,
        handle: 2n,
        offset: 0,
        length: 8192,
      });
      expect((await c.simpleReply()).error).toBe(0);
      c.sendRequest({ type: CMD.READ, handle: 3n, offset: 0, length: 8192 });
      expect((await c.simpleReply(8192)).data.every((b) => b === 0)).toBe(true);
    });
  });

  describe('graceful shutdown', () => {
    it('lets requests in flight finish, then refuses new options with ERR_SHUTDOWN and closes', async () => {
      const s = await startServer([{ name: 'slow', backend: slowAtZero(300) }]);
      const c = await openExport(s.tcp.port, 'slow');
      const negotiating = await RawClient.connect({ port: s.tcp.port });
      await negotiating.start();
      c.sendRequest({ type: CMD.READ, handle: 1n, offset: 0, length: 4096 });
      await new Promise((r) => setTimeout(r, 50));
      const closing = s.close();
      const r = await c.simpleReply(4096);
      expect(r.error).toBe(0);
      negotiating.sendOption(OPT.LIST);
      expect((await negotiating.optionReply()).type).toBe(REP.ERR_SHUTDOWN);
      negotiating.destroy();
      await c.closed;
      await closing;
    });
  });
});
