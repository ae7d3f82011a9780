/**
 * A deliberately low-level NBD client for protocol tests: it sends exactly the bytes a test
 * asks for (valid or not) and decodes what comes back. Real clients (libnbd, qemu) are used
 * everywhere else; this one exists to send what they never would.
 */
import { connect, type Socket } from 'node:net';
import {
  CMD,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  IHAVEOPT,
  OPT,
  REP,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
} from '../../nbd-server/protocol.js';
import { SocketReader } from '../../nbd-server/socket-reader.js';

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  handle: bigint;
  payload: Buffer;
}

export interface RequestSpec {
  type: number;
  flags?: number;
  handle?: bigint;
  offset?: bigint | number;
  length?: number;
  data?: Buffer;
}

export class RawClient {
  readonly reader: SocketReader;
  private readonly closedPromise: Promise<void>;

  private constructor(readonly socket: Socket) {
    this.reader = new SocketReader(socket);
    this.closedPromise = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static async connect(target: { port: number; host?: string } | { path: string }): Promise<RawClient> {
    const socket = 'path' in target ? connect(target.path) : connect(target.port, target.host ?? '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.on('error', () => undefined); // tests look at `closed`, not at errors
    return new RawClient(socket);
  }

  /** Reads the server greeting; returns its handshake flags. */
  async greeting(): Promise<number> {
    const g = await this.reader.read(18);
    return g.readUInt16BE(16);
  }

  /** Greeting plus client flags: the usual start of a fixed-newstyle session. */
  async start(clientFlags = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES): Promise<void> {
    await this.greeting();
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags);
    this.write(f);
  }

  write(buf: Buffer): void {
    this.socket.write(buf);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), magic = IHAVEOPT): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(magic, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([h, data]));
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.reader.read(20);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.reader.read(len) };
  }

  /** Replies up to and including the final one (ACK or an error). */
  async optionReplies(): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type === REP.ACK || (r.type & 0x80000000) !== 0) return out;
    }
  }

  /** Full fixed-newstyle negotiation ending in NBD_OPT_GO. Returns size and transmission flags. */
  async go(
    name: string,
    options: { structured?: boolean; meta?: string[] } = {},
  ): Promise<{ size: bigint; flags: number }> {
    await this.start();
    if (options.structured) {
      this.sendOption(OPT.STRUCTURED_REPLY);
      const [r] = await this.optionReplies();
      if (r?.type !== REP.ACK) throw new Error('structured replies refused');
    }
    if (options.meta) {
      this.sendOption(OPT.SET_META_CONTEXT, metaContextPayload(name, options.meta));
      await this.optionReplies();
    }
    this.sendOption(OPT.GO, goPayload(name));
    const replies = await this.optionReplies();
    const last = replies[replies.length - 1]!;
    if (last.type !== REP.ACK) throw new Error(`GO refused: ${last.type.toString(16)} ${last.data.toString()}`);
    const info = replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 0)!;
    return { size: info.data.readBigUInt64BE(2), flags: info.data.readUInt16BE(10) };
  }

  sendRequest(r: RequestSpec): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(r.flags ?? 0, 4);
    h.writeUInt16BE(r.type, 6);
    h.writeBigUInt64BE(r.handle ?? 1n, 8);
    h.writeBigUInt64BE(BigInt(r.offset ?? 0), 16);
    h.writeUInt32BE(r.length ?? r.data?.length ?? 0, 24);
    this.write(r.data ? Buffer.concat([h, r.data]) : h);
  }

  /** A simple reply; `dataLength` bytes follow it when it answers a successful READ. */
  async simpleReply(dataLength = 0): Promise<{ error: number; handle: bigint; data: Buffer }> {
    const h = await this.reader.read(16);
    if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error(`not a simple reply: ${h.toString('hex')}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? await this.reader.read(dataLength) : Buffer.alloc(0);
    return { error, handle: h.readBigUInt64BE(8), data };
  }

  async chunk(): Promise<Chunk> {
    const h = await this.reader.read(20);
    if (h.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC) throw new Error(`not a structured reply: ${h.toString('hex')}`);
    return {
      flags: h.readUInt16BE(4),
      type: h.readUInt16BE(6),
      handle: h.readBigUInt64BE(8),
      payload: await this.reader.read(h.readUInt32BE(16)),
    };
  }

  /** All chunks of one structured reply (assumes no other reply is interleaved). */
  async structuredReply(): Promise<Chunk[]> {
    const out: Chunk[] = [];
    for (;;) {
      const c = await this.chunk();
      out.push(c);
      if (c.flags & 1) return out;
    }
  }

  /** A round trip that proves the session is still alive and in sync. */
  async ping(handle = 0xfeedn): Promise<void> {
    this.sendRequest({ type: CMD.FLUSH, handle });
    const r = await this.simpleReply();
    if (r.error !== 0 || r.handle !== handle) throw new Error(`ping failed: ${JSON.stringify(r)}`);
  }

  get closed(): Promise<void> {
    return this.closedPromise;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export function goPayload(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

export function metaContextPayload(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    return b;
  };
  parts.push(u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length));
  for (const q of queries) parts.push(u32(Buffer.byteLength(q)), Buffer.from(q));
  return Buffer.concat(parts);
}

/** Connects to a test server's TCP listener and negotiates an export with GO. */
export async function openExport(
  port: number,
  name: string,
  options: { structured?: boolean; meta?: string[] } = {},
): Promise<RawClient> {
  const c = await RawClient.connect({ port });
  await c.go(name, options);
  return c;
}
