/**
 * The NBD relay: what lets attached layers outlive a restart of the slacker daemon (issue 20).
 * The NBD clients that back block devices (nbdfuse, the kernel's nbd-client) connect here, not
 * to the daemon's NBD server; the relay keeps their connections while the server is gone.
 *
 *   client ──(its connection, kept)──▶ relay ──(one upstream connection per export)──▶ server
 *
 * When the upstream connection breaks (the daemon was stopped or killed), the relay holds every
 * request, reconnects (the restarted daemon re-adds the export when it adopts the attachment),
 * and then sends them again. A request whose reply never came is sent again: every NBD command
 * is idempotent when repeated in full. Writes that completed but that no flush has covered yet
 * are kept too (the write log) and replayed first, in the order they completed: the server
 * makes writes durable at FLUSH, so a killed server forgets what came after the last one, while
 * the file system above has been told they are done. A completed FLUSH empties the log of the
 * writes that completed before it was asked for; when the log grows past its limit, the relay
 * asks for a FLUSH itself. A client's FLUSH with no change completed since the server completed
 * one is answered here: everything it covers is durable already.
 *
 * The relay terminates both handshakes (fixed newstyle, NBD_OPT_GO/INFO) and speaks simple
 * replies only on both sides, so that it can track every request by its handle. It knows
 * nothing of volumes or Docker: an export name is opaque. It is one small process per state
 * root, started by the daemon and detached from it; it exits when nobody is connected.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { rm } from 'node:fs/promises';
import { ProtocolError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import {
  CMD,
  CMD_NAMES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO,
  NBD_ERR,
  NBD_MAGIC,
  OPT,
  OPTION_HEADER_SIZE,
  REP,
  REP_MAGIC,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  TFLAG,
} from '../nbd-server/protocol.js';
import { SocketReader, type Lent } from '../nbd-server/socket-reader.js';

export interface RelayOptions {
  /** Unix socket the clients connect to. */
  listen: string;
  /** Unix socket of the NBD server. */
  upstream: string;
  log: Logger;
  /** Exit (onIdle) once nobody has been connected for this long (default 500 ms). */
  idleExitMs?: number;
  /**
   * A server that answers but does not know an export for this long has not adopted it: its
   * held requests fail with EIO and its clients are disconnected (default 10 s).
   */
  unknownExportMs?: number;
  /**
   * How long requests are held for a server that does not come back at all (default 5 min);
   * then they fail with EIO, as a kernel NBD client's timeout would. Without a bound, one dead
   * daemon would hang every sync(2) on the machine.
   */
  holdMs?: number;
  /** Bytes of unflushed completed writes per export before the relay asks for a FLUSH (64 MiB). */
  logLimitBytes?: number;
  onIdle?: () => void;
}

/** Flags the relay passes on: none that structured replies or meta contexts would need. */
const PASSED_FLAGS =
  TFLAG.HAS_FLAGS |
  TFLAG.READ_ONLY |
  TFLAG.SEND_FLUSH |
  TFLAG.SEND_FUA |
  TFLAG.ROTATIONAL |
  TFLAG.SEND_TRIM |
  TFLAG.SEND_WRITE_ZEROES |
  TFLAG.CAN_MULTI_CONN |
  TFLAG.SEND_CACHE |
  TFLAG.SEND_FAST_ZERO;
/** Commands that change the export: kept in the write log until a flush covers them. */
const CHANGES = new Set<number>([CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES]);
const MAX_OPTION = 64 * 1024;
const MAX_PAYLOAD = 64 * 1024 * 1024;
const RECONNECT_MS = [20, 50, 100, 200, 500, 1000];
/**
 * Our own option, sent by the daemon on a connection of its own: give up export NAME (data:
 * the name). A daemon that restarted and did not adopt an attachment says so at once, rather
 * than let its I/O wait for unknownExportMs. Not an NBD option: "SLK" and 1.
 */
export const OPT_SLACKER_ABANDON = 0x534c4b01;

/** The server answered the handshake but refused the export. */
class RefusedExport extends ProtocolError {}

interface Request {
  type: number;
  flags: number;
  offset: bigint;
  length: number;
  /** A write's data, in the pieces it arrived in (never joined: no copy). */
  payload?: Buffer[];
}

interface Pending extends Request {
  /** The client's handle, echoed in its reply; undefined for the relay's own requests. */
  client?: { conn: ClientConn; handle: Buffer };
  /** For a FLUSH: the event count when it was asked for (what it covers). */
  askedAt: number;
  /** For a FLUSH: how many changes had completed when it was sent (what it makes durable). */
  covers?: number;
  /** A write log entry sent again after a reconnect. */
  replay?: boolean;
  /** Told the reply's error (-1: the connection was lost first). */
  done?: (error: number) => void;
}

interface LogEntry extends Request {
  completedAt: number;
}

class ExportLink {
  size = 0n;
  flags = 0;
  readonly clients = new Set<ClientConn>();
  private socket: Socket | undefined;
  private state: 'down' | 'connecting' | 'replaying' | 'up' = 'down';
  private readonly inflight = new Map<bigint, Pending>();
  /** Requests waiting for the upstream connection, in arrival order. */
  private queue: Pending[] = [];
  private readonly writeLog: LogEntry[] = [];
  private logBytes = 0;
  private nextHandle = 1n;
  /** Counts completions and flush requests: orders "completed before asked for". */
  private events = 0;
  private flushing = false;
  /** Changes (writes, trims, zeroes) answered by the server, replays included. */
  private changesDone = 0;
  /**
   * changesDone as of the last FLUSH the server completed: all those are durable. -1 until the
   * first: what was written before this link (another connection, an earlier relay) is unknown.
   */
  private durable = -1;
  private attempt = 0;
  private closed = false;

  constructor(
    readonly name: string,
    private readonly o: RelayOptions,
  ) {}

  /** The first connection: rejects if the server does not answer or does not know the export. */
  async open(): Promise<void> {
    await this.connect(false);
  }

  submit(p: Pending): void {
    if (p.type === CMD.FLUSH && p.client && this.state === 'up' && this.durable === this.changesDone) {
      // Nothing completed since a FLUSH the server made durable: a file system asks for one on
      // every fsync, also of clean files, and this answer spares the hop (docs/BENCHMARKS.md).
      p.client.conn.reply(p.client.handle, 0, undefined);
      return;
    }
    if (p.type === CMD.FLUSH) p.askedAt = ++this.events;
    if (this.state === 'up') this.send(p);
    else this.queue.push(p);
  }

  /** Gives the export up: what waits fails with EIO and its clients are disconnected. */
  abandon(): void {
    const clients = [...this.clients];
    this.stop(NBD_ERR.EIO);
    for (const c of clients) c.disconnect();
    this.onAbandon?.();
  }

  onAbandon: (() => void) | undefined;

  close(): void {
    this.stop(NBD_ERR.ESHUTDOWN);
  }

  /** No more upstream: every request sent or waiting is answered with `error`. */
  private stop(error: number): void {
    this.closed = true;
    this.socket?.destroy();
    for (const p of [...this.inflight.values(), ...this.queue]) p.client?.conn.reply(p.client.handle, error, undefined);
    this.inflight.clear();
    this.queue = [];
  }

  private send(p: Pending): void {
    if (p.type === CMD.FLUSH) p.covers = this.changesDone;
    const handle = this.nextHandle++;
    this.inflight.set(handle, p);
    const h = Buffer.alloc(REQUEST_HEADER_SIZE);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(p.flags, 4);
    h.writeUInt16BE(p.type, 6);
    h.writeBigUInt64BE(handle, 8);
    h.writeBigUInt64BE(p.offset, 16);
    h.writeUInt32BE(p.length, 24);
    writeAll(this.socket!, h, p.payload);
  }

  /** Connects until it works (or, the first time, fails), replays the write log, sends what waited. */
  private async connect(retry: boolean): Promise<void> {
    this.state = 'connecting';
    let unknownSince: number | undefined;
    const downSince = Date.now();
    for (;;) {
      if (this.closed) return;
      try {
        const { socket, reader, size, flags } = await handshakeUpstream(this.o.upstream, this.name);
        if (this.size !== 0n && size !== this.size) {
          socket.destroy();
          throw new ProtocolError(`export ${this.name} came back with size ${size}, not ${this.size}`);
        }
        this.size = size;
        this.flags = flags;
        this.socket = socket;
        this.attempt = 0;
        socket.on('error', () => undefined);
        void this.readReplies(socket, reader);
      } catch (err) {
        if (!retry) throw err;
        if (err instanceof RefusedExport) {
          unknownSince ??= Date.now();
          if (Date.now() - unknownSince > (this.o.unknownExportMs ?? 10_000)) {
            this.o.log.warn({ export: this.name }, 'relay: the server does not know the export any more: abandoned');
            this.abandon();
            return;
          }
        } else unknownSince = undefined;
        if (Date.now() - downSince > (this.o.holdMs ?? 300_000)) {
          this.o.log.error({ export: this.name }, 'relay: the server did not come back in time: export abandoned');
          this.abandon();
          return;
        }
        const wait = RECONNECT_MS[Math.min(this.attempt++, RECONNECT_MS.length - 1)]!;
        if (this.attempt === 1 || this.attempt % 20 === 0) {
          this.o.log.info({ export: this.name, err: (err as Error).message }, 'relay: waiting for the server');
        }
        await new Promise((r) => setTimeout(r, wait));
        continue;
      }
      // Completed writes no flush covered yet, in the order they completed, one at a time.
      this.state = 'replaying';
      let lost = false;
      for (const e of [...this.writeLog]) {
        const error = await new Promise<number>((done) => this.send({ ...e, askedAt: 0, replay: true, done }));
        if (error < 0) {
          lost = true;
          break;
        }
        if (error !== 0)
          this.o.log.error({ export: this.name, error, type: CMD_NAMES[e.type] }, 'relay: replay failed');
      }
      if (lost) continue;
      const waiting = this.queue;
      this.queue = [];
      this.state = 'up';
      for (const p of waiting) this.send(p);
      if (retry) {
        this.o.log.info(
          { export: this.name, replayed: this.writeLog.length, resent: waiting.length },
          'relay: the server is back',
        );
      }
      return;
    }
  }

  private async readReplies(socket: Socket, reader: SocketReader): Promise<void> {
    try {
      for (;;) {
        const r = await reader.read(SIMPLE_REPLY_SIZE);
        if (r.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new ProtocolError('relay: not a simple reply');
        const error = r.readUInt32BE(4);
        const handle = r.readBigUInt64BE(8);
        const p = this.inflight.get(handle);
        if (!p) throw new ProtocolError(`relay: reply for unknown handle ${handle}`);
        // Read data is lent where it landed in the receive slab until the client has it.
        const data = p.type === CMD.READ && error === 0 ? await reader.lendChunks(p.length) : undefined;
        this.inflight.delete(handle);
        this.completed(p, error, data);
      }
    } catch (err) {
      socket.destroy();
      if (this.socket !== socket || this.closed) return;
      this.socket = undefined;
      this.o.log.warn({ export: this.name, err: (err as Error).message }, 'relay: lost the server; holding requests');
      // What was sent and not answered goes again, before what arrived since; a replay of the
      // log is started over by the connect loop.
      const sent = [...this.inflight.values()];
      this.inflight.clear();
      this.queue = [...sent.filter((p) => !p.replay), ...this.queue];
      this.flushing = this.queue.some((p) => !p.client && p.type === CMD.FLUSH);
      const replaying = this.state === 'replaying';
      this.state = 'down';
      for (const p of sent) if (p.replay) p.done!(-1);
      if (!replaying) void this.connect(true);
    }
  }

  private completed(p: Pending, error: number, data: Lent | undefined): void {
    const at = ++this.events;
    if (CHANGES.has(p.type)) this.changesDone++; // failed too: part of it may have landed
    if (error === 0 && p.type === CMD.FLUSH) this.durable = Math.max(this.durable, p.covers ?? 0);
    if (error === 0 && CHANGES.has(p.type) && !p.replay) {
      this.writeLog.push({
        type: p.type,
        flags: p.flags,
        offset: p.offset,
        length: p.length,
        payload: p.payload,
        completedAt: at,
      });
      if (p.payload) this.logBytes += p.length;
    }
    if (error === 0 && p.type === CMD.FLUSH) {
      let drop = 0;
      while (drop < this.writeLog.length && this.writeLog[drop]!.completedAt < p.askedAt) {
        this.logBytes -= this.writeLog[drop]!.payload ? this.writeLog[drop]!.length : 0;
        drop++;
      }
      this.writeLog.splice(0, drop);
    }
    if (p.type === CMD.FLUSH && !p.client) this.flushing = false;
    p.done?.(error);
    if (p.client) p.client.conn.reply(p.client.handle, error, data);
    else data?.release();
    if (this.logBytes > (this.o.logLimitBytes ?? 64 * 2 ** 20) && !this.flushing && this.state === 'up') {
      this.flushing = true;
      this.submit({ type: CMD.FLUSH, flags: 0, offset: 0n, length: 0, askedAt: 0 });
    }
  }
}

/**
 * A header and its data in one go, without joining them (cork: one writev); `written` runs once
 * the socket is done with the data (sent, or the socket gone).
 */
function writeAll(socket: Socket, header: Buffer, data: Buffer[] | undefined, written?: () => void): void {
  if (!data || data.length === 0) {
    socket.write(header);
    written?.();
    return;
  }
  socket.cork();
  socket.write(header);
  data.forEach((piece, i) => socket.write(piece, i === data.length - 1 ? () => written?.() : undefined));
  socket.uncork();
}

/** One client's connection: the handshake, then its requests passed to the export's link. */
class ClientConn {
  private link: ExportLink | undefined;
  private inflight = 0;
  private disconnecting = false;

  constructor(
    private readonly socket: Socket,
    private readonly relay: Relay,
    private readonly log: Logger,
  ) {}

  async serve(): Promise<void> {
    const reader = new SocketReader(this.socket);
    try {
      const greeting = Buffer.alloc(18);
      greeting.writeBigUInt64BE(NBD_MAGIC, 0);
      greeting.writeBigUInt64BE(IHAVEOPT, 8);
      greeting.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
      this.socket.write(greeting);
      await reader.read(4); // client flags
      if (!(await this.options(reader))) return;
      for (;;) {
        const h = await reader.read(REQUEST_HEADER_SIZE);
        if (h.readUInt32BE(0) !== REQUEST_MAGIC) throw new ProtocolError('relay: bad request magic');
        const flags = h.readUInt16BE(4);
        const type = h.readUInt16BE(6);
        const handle = Buffer.from(h.subarray(8, 16));
        const offset = h.readBigUInt64BE(16);
        const length = h.readUInt32BE(24);
        if (type === CMD.DISC) {
          this.disconnecting = true;
          if (this.inflight === 0) this.socket.end();
          return;
        }
        if (length > MAX_PAYLOAD && (type === CMD.WRITE || type === CMD.READ)) {
          throw new ProtocolError(`relay: a ${CMD_NAMES[type]} of ${length} bytes`);
        }
        const payload = type === CMD.WRITE ? await reader.readChunks(length) : undefined;
        this.inflight++;
        this.link!.submit({ type, flags, offset, length, payload, askedAt: 0, client: { conn: this, handle } });
      }
    } catch (err) {
      if (!this.socket.destroyed) this.log.debug({ err: (err as Error).message }, 'relay: client connection ended');
      this.socket.destroy();
    } finally {
      this.relay.detach(this, this.link);
    }
  }

  disconnect(): void {
    this.socket.destroy();
  }

  /** Answers a request; lent read data is released once the client's socket is done with it. */
  reply(handle: Buffer, error: number, data: Lent | undefined): void {
    this.inflight--;
    if (this.socket.destroyed) {
      data?.release();
      return;
    }
    const r = Buffer.alloc(SIMPLE_REPLY_SIZE);
    r.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
    r.writeUInt32BE(error < 0 ? NBD_ERR.EIO : error, 4);
    handle.copy(r, 8);
    writeAll(this.socket, r, data?.chunks, data?.release);
    if (this.disconnecting && this.inflight === 0) this.socket.end();
  }

  /** The option haggling; true once NBD_OPT_GO succeeded (transmission follows). */
  private async options(reader: SocketReader): Promise<boolean> {
    for (;;) {
      const h = await reader.read(OPTION_HEADER_SIZE);
      if (h.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolError('relay: bad option magic');
      const opt = h.readUInt32BE(8);
      const len = h.readUInt32BE(12);
      if (len > MAX_OPTION) throw new ProtocolError(`relay: an option of ${len} bytes`);
      const data = await reader.read(len);
      if (opt === OPT.ABORT) {
        this.optionReply(opt, REP.ACK);
        this.socket.end();
        return false;
      }
      if (opt === OPT_SLACKER_ABANDON) {
        this.relay.abandon(data.toString('utf8'));
        this.optionReply(opt, REP.ACK);
        continue;
      }
      if (opt !== OPT.GO && opt !== OPT.INFO) {
        this.optionReply(opt, REP.ERR_UNSUP);
        continue;
      }
      const nameLen = data.length >= 4 ? data.readUInt32BE(0) : -1;
      if (nameLen < 0 || 4 + nameLen + 2 > data.length) {
        this.optionReply(opt, REP.ERR_INVALID);
        continue;
      }
      const name = data.toString('utf8', 4, 4 + nameLen);
      let link: ExportLink;
      try {
        link = await this.relay.link(name);
      } catch (err) {
        this.log.info({ export: name, err: (err as Error).message }, 'relay: export not available');
        this.optionReply(opt, REP.ERR_UNKNOWN);
        continue;
      }
      const info = Buffer.alloc(12);
      info.writeUInt16BE(INFO.EXPORT, 0);
      info.writeBigUInt64BE(link.size, 2);
      info.writeUInt16BE((link.flags & PASSED_FLAGS) | TFLAG.HAS_FLAGS, 10);
      this.optionReply(opt, REP.INFO, info);
      this.optionReply(opt, REP.ACK);
      if (opt === OPT.GO) {
        this.link = link;
        link.clients.add(this);
        return true;
      }
      this.relay.release(link);
    }
  }

  private optionReply(opt: number, type: number, data = Buffer.alloc(0)): void {
    const r = Buffer.alloc(20);
    r.writeBigUInt64BE(REP_MAGIC, 0);
    r.writeUInt32BE(opt, 8);
    r.writeUInt32BE(type, 12);
    r.writeUInt32BE(data.length, 16);
    this.socket.write(Buffer.concat([r, data]));
  }
}

/** The client side of a handshake with the NBD server: fixed newstyle, NBD_OPT_GO, simple replies. */
async function handshakeUpstream(
  path: string,
  name: string,
): Promise<{ socket: Socket; reader: SocketReader; size: bigint; flags: number }> {
  // Replies land in receive slabs (nbd-server/receive-slabs.ts): read data is passed on from there.
  const reader = new SocketReader();
  const socket = createConnection({ path, onread: reader.onread });
  reader.attach(socket);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  try {
    const greeting = await reader.read(18);
    if (greeting.readBigUInt64BE(0) !== NBD_MAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) {
      throw new ProtocolError('relay: the server is not a newstyle NBD server');
    }
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(greeting.readUInt16BE(16) & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    const nameBytes = Buffer.from(name, 'utf8');
    const opt = Buffer.alloc(OPTION_HEADER_SIZE + 4 + nameBytes.length + 2);
    opt.writeBigUInt64BE(IHAVEOPT, 0);
    opt.writeUInt32BE(OPT.GO, 8);
    opt.writeUInt32BE(4 + nameBytes.length + 2, 12);
    opt.writeUInt32BE(nameBytes.length, 16);
    nameBytes.copy(opt, 20);
    socket.write(Buffer.concat([clientFlags, opt]));
    let size: bigint | undefined;
    let flags = 0;
    for (;;) {
      const h = await reader.read(20);
      const type = h.readUInt32BE(12);
      const data = await reader.read(h.readUInt32BE(16));
      if (type === REP.INFO && data.readUInt16BE(0) === INFO.EXPORT) {
        size = data.readBigUInt64BE(2);
        flags = data.readUInt16BE(10);
      } else if (type === REP.ACK) {
        if (size === undefined) throw new ProtocolError('relay: the server sent no export info');
        return { socket, reader, size, flags };
      } else if (type & 0x80000000) {
        throw new RefusedExport(`relay: the server refused export ${name} (${type & 0x7fffffff})`);
      }
    }
  } catch (err) {
    socket.destroy();
    throw err;
  }
}

export class Relay {
  private server: Server | undefined;
  private readonly links = new Map<string, ExportLink>();
  private readonly opening = new Map<string, Promise<ExportLink>>();
  private readonly clients = new Set<ClientConn>();
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(private readonly o: RelayOptions) {}

  async listen(): Promise<void> {
    await rm(this.o.listen, { force: true });
    const server = createServer((socket) => {
      this.clearIdle();
      const conn = new ClientConn(socket, this, this.o.log);
      this.clients.add(conn);
      socket.on('error', () => undefined);
      void conn.serve();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.o.listen, resolve);
    });
    this.server = server;
    this.armIdle();
    this.o.log.info({ listen: this.o.listen, upstream: this.o.upstream }, 'nbd relay listening');
  }

  /** The link of export `name`, opened (or joined) for a client. */
  async link(name: string): Promise<ExportLink> {
    // Once open, a link's size and flags are known, whether the server is there now or not.
    const known = this.links.get(name);
    if (known) return known;
    let opening = this.opening.get(name);
    if (!opening) {
      const l = new ExportLink(name, this.o);
      l.onAbandon = () => {
        if (this.links.get(name) === l) this.links.delete(name);
      };
      opening = l.open().then(() => {
        this.links.set(name, l);
        return l;
      });
      opening.finally(() => this.opening.delete(name)).catch(() => undefined);
      this.opening.set(name, opening);
    }
    return opening;
  }

  /** The daemon did not adopt export `name`: its link gives up. */
  abandon(name: string): void {
    const l = this.links.get(name);
    if (!l) return;
    this.links.delete(name);
    l.abandon();
    this.o.log.info({ export: name }, 'relay: export abandoned by the daemon');
  }

  /** A client went away: its export's link closes with its last client. */
  detach(conn: ClientConn, link: ExportLink | undefined): void {
    this.clients.delete(conn);
    if (link) {
      link.clients.delete(conn);
      this.release(link);
    }
    this.armIdle();
  }

  /** A link closes with its last client (which flushed what it wanted kept, or did not). */
  release(link: ExportLink): void {
    if (link.clients.size > 0) return;
    link.close();
    this.links.delete(link.name);
  }

  async close(): Promise<void> {
    // A pending idle exit would keep the process alive after close (for --idle-exit-ms long).
    this.clearIdle();
    for (const l of this.links.values()) l.close();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    await rm(this.o.listen, { force: true });
  }

  private clearIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  private armIdle(): void {
    this.clearIdle();
    if (this.clients.size > 0) return;
    this.idleTimer = setTimeout(() => {
      if (this.clients.size === 0) this.o.onIdle?.();
    }, this.o.idleExitMs ?? 500);
  }
}
