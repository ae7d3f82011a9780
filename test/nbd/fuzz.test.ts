/**
 * Randomized abuse: thousands of malformed frames, in the handshake and in transmission, over
 * many connections at once. The server must stay up, keep serving a well-behaved client with
 * correct data, and release everything the abusive connections held.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../block/backends/memory.js';
import { CMD, IHAVEOPT, OPT, REQUEST_MAGIC } from '../../nbd-server/protocol.js';
import { goPayload, metaContextPayload, openExport, RawClient } from '../helpers/raw-client.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { prng, randomBytes } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
const SEED = Number(process.env.FUZZ_SEED ?? 20261122);
const CONNECTIONS = 60;
const FRAMES_PER_CONNECTION = 100;

type Rand = () => number;
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[r() % xs.length]!;

/** A request header that is usually almost valid: the interesting kind of malformed. */
function fuzzRequest(r: Rand): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(r() % 50 === 0 ? r() : REQUEST_MAGIC, 0);
  h.writeUInt16BE(r() % 4 === 0 ? r() & 0xffff : r() & 0x1f, 4);
  h.writeUInt16BE(r() % 5 === 0 ? r() & 0xffff : r() % 9, 6);
  h.writeBigUInt64BE(BigInt(r()), 8);
  const offset = pick(r, [0n, BigInt(r() % (8 * MiB)), BigInt(8 * MiB - 1), 2n ** 63n + BigInt(r()), 2n ** 64n - 1n]);
  h.writeBigUInt64BE(offset, 16);
  const length = pick(r, [0, 1, r() % 65536, r() % (2 * MiB), 33 * MiB, 0xffffffff]);
  h.writeUInt32BE(length, 24);
  // Follow it with a plausible amount of payload (or not): the server must cope either way.
  const type = h.readUInt16BE(6);
  const payload = type === CMD.WRITE && length <= 2 * MiB && r() % 3 !== 0 ? length : r() % 64;
  return Buffer.concat([h, randomBytes(payload, r())]);
}

function fuzzOption(r: Rand): Buffer {
  const option = pick(r, [
    OPT.GO,
    OPT.INFO,
    OPT.LIST,
    OPT.LIST_META_CONTEXT,
    OPT.SET_META_CONTEXT,
    OPT.STRUCTURED_REPLY,
    r() & 0xff,
    r(),
  ]);
  let data: Buffer;
  switch (r() % 4) {
    case 0:
      data = goPayload(pick(r, ['mem', 'nope', '', 'x'.repeat(r() % 5000)]), [r() & 0xffff]);
      break;
    case 1:
      data = metaContextPayload('mem', [pick(r, ['base:allocation', 'base:', '', 'x:y'])]);
      break;
    default:
      data = randomBytes(r() % 300, r());
  }
  if (r() % 6 === 0) data = data.subarray(0, r() % (data.length + 1)); // truncated
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(r() % 40 === 0 ? BigInt(r()) : IHAVEOPT, 0);
  h.writeUInt32BE(option >>> 0, 8);
  h.writeUInt32BE(r() % 10 === 0 ? r() : data.length, 12);
  return Buffer.concat([h, data]);
}

async function abuse(port: number, r: Rand): Promise<number> {
  const mode = r() % 3;
  let c: RawClient;
  try {
    if (mode === 2) {
      c = await openExport(port, 'mem', { structured: r() % 2 === 0, meta: ['base:allocation'] });
    } else {
      c = await RawClient.connect({ port });
      if (mode === 1) await c.start();
    }
  } catch {
    return 0;
  }
  c.socket.on('data', () => undefined); // drain replies, never block the server on us
  let sent = 0;
  for (let i = 0; i < FRAMES_PER_CONNECTION && !c.socket.destroyed; i++) {
    const frame = mode === 0 ? randomBytes(r() % 200, r()) : mode === 1 ? fuzzOption(r) : fuzzRequest(r);
    c.socket.write(frame);
    sent++;
    if (i % 10 === 0) await new Promise((res) => setImmediate(res));
  }
  await new Promise((res) => setTimeout(res, 20));
  c.destroy();
  return sent;
}

describe(`fuzz (seed ${SEED})`, () => {
  let srv: TestServer;
  const reference = randomBytes(MiB, 99);

  beforeAll(async () => {
    const mem = new MemoryBackend({ size: 8 * MiB });
    srv = await startServer([
      { name: 'mem', backend: mem },
      { name: 'ref', backend: new MemoryBackend({ size: 2 * MiB }) },
    ]);
    const c = await openExport(srv.tcp.port, 'ref');
    c.sendRequest({ type: CMD.WRITE, handle: 1n, offset: 0, data: reference });
    expect((await c.simpleReply()).error).toBe(0);
    c.destroy();
  });
  afterAll(async () => {
    await srv?.close();
  });

  it('survives thousands of malformed frames and keeps serving correct data', async () => {
    const r = prng(SEED);
    const seeds = Array.from({ length: CONNECTIONS }, () => r());
    const heapBefore = process.memoryUsage().heapUsed;
    const sent = await Promise.all(seeds.map((s) => abuse(srv.tcp.port, prng(s))));
    const total = sent.reduce((a, b) => a + b, 0);
    expect(total).toBeGreaterThan(2000);

    // A well-behaved client still gets exactly the right bytes.
    const good = await openExport(srv.tcp.port, 'ref', { structured: false });
    good.sendRequest({ type: CMD.READ, handle: 5n, offset: 0, length: MiB });
    const reply = await good.simpleReply(MiB);
    expect(reply.error).toBe(0);
    expect(reply.data.equals(reference)).toBe(true);
    good.destroy();

    // Everything the abusers held is released, promptly: a closing connection whose socket
    // stayed paused by backpressure once lingered until its 5 s grace timer.
    for (let i = 0; i < 40 && (srv.server.connectionCount > 0 || srv.server.bytesInFlight > 0); i++) {
      await new Promise((res) => setTimeout(res, 50));
    }
    expect(srv.server.connectionCount).toBe(0);
    expect(srv.server.bytesInFlight).toBe(0);
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(200 * MiB);
  });
});
