/**
 * Fixed newstyle negotiation: greets the client, answers options until one picks an export
 * (EXPORT_NAME or GO), and returns what was agreed. Unknown options get ERR_UNSUP and parsing
 * goes on; malformed ones get ERR_INVALID; breaches that leave the stream unparseable (bad
 * magic, unknown client flags, oversized option) end the session with a ProtocolError.
 */
import type { Logger } from '../common/logger.js';
import { ProtocolError } from '../common/errors.js';
import type { Export, ExportRegistry } from './exports.js';
import { transmissionFlags } from './exports.js';
import {
  BASE_ALLOCATION,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO,
  MAX_STRING,
  NBD_MAGIC,
  OPT,
  OPTION_HEADER_SIZE,
  REP,
} from './protocol.js';
import * as replies from './replies.js';
import type { SocketReader } from './socket-reader.js';

/** Option payloads are tiny; anything larger is an attack, not a client. */
const MAX_OPTION_LENGTH = 64 * 1024;
/** The id we give base:allocation when the client selects it. */
export const BASE_ALLOCATION_ID = 1;

export interface Negotiated {
  export: Export;
  structuredReplies: boolean;
  /** 0 when no metadata context was selected. */
  metaContextId: number;
}

export interface HandshakeIo {
  reader: SocketReader;
  send(buf: Buffer): void;
  exports: ExportRegistry;
  shuttingDown(): boolean;
  log: Logger;
}

/** An option's payload is malformed: answered NBD_REP_ERR_INVALID, and the handshake goes on. */
class InvalidOption extends ProtocolError {}

/** Bounds-checked reading of an option's payload. */
class Cursor {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}
  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  string(len: number): string {
    if (len > MAX_STRING) throw new InvalidOption(`string of ${len} bytes exceeds ${MAX_STRING}`);
    this.need(len);
    const bytes = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    if (bytes.includes(0)) throw new InvalidOption('string contains NUL');
    return bytes.toString('utf8');
  }
  end(): void {
    if (this.pos !== this.buf.length) throw new InvalidOption('trailing bytes in option');
  }
  private need(n: number): void {
    if (this.pos + n > this.buf.length) throw new InvalidOption('option payload too short');
  }
}

export async function negotiate(io: HandshakeIo): Promise<Negotiated | undefined> {
  const greeting = Buffer.allocUnsafe(18);
  greeting.writeBigUInt64BE(NBD_MAGIC, 0);
  greeting.writeBigUInt64BE(IHAVEOPT, 8);
  greeting.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  io.send(greeting);

  const clientFlags = (await io.reader.read(4)).readUInt32BE(0);
  if ((clientFlags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) !== 0) {
    throw new ProtocolError('client sent unknown handshake flags', { context: { clientFlags } });
  }
  const noZeroes = (clientFlags & FLAG_C_NO_ZEROES) !== 0;

  let structuredReplies = false;
  let meta: { exportName: string; id: number } | undefined;

  for (;;) {
    const header = await io.reader.read(OPTION_HEADER_SIZE);
    if (header.readBigUInt64BE(0) !== IHAVEOPT) {
      throw new ProtocolError('bad option magic');
    }
    const option = header.readUInt32BE(8);
    const length = header.readUInt32BE(12);
    if (length > MAX_OPTION_LENGTH) {
      throw new ProtocolError('option payload too large', { context: { option, length } });
    }
    const data = await io.reader.read(length);
    const reply = (type: number, payload?: Buffer): void => io.send(replies.optionReply(option, type, payload));
    const error = (type: number, message: string): void => {
      io.log.debug({ option, reply: type, message }, 'nbd option refused');
      reply(type, Buffer.from(message, 'utf8'));
    };

    if (io.shuttingDown() && option !== OPT.ABORT) {
      if (option === OPT.EXPORT_NAME) throw new ProtocolError('server is shutting down');
      error(REP.ERR_SHUTDOWN, 'server is shutting down');
      continue;
    }

    try {
      switch (option) {
        case OPT.EXPORT_NAME: {
          // No way to report an error here: an unknown export ends the session.
          const name = new Cursor(data).string(length);
          const e = io.exports.get(name);
          if (!e) throw new ProtocolError('client asked for an unknown export', { context: { name } });
          io.send(replies.exportNameReply(e.backend.size, transmissionFlags(e, structuredReplies), noZeroes));
          return { export: e, structuredReplies, metaContextId: metaFor(meta, name) };
        }

        case OPT.ABORT:
          reply(REP.ACK);
          return undefined;

        case OPT.LIST:
          if (length !== 0) throw new InvalidOption('NBD_OPT_LIST takes no data');
          for (const e of io.exports.list()) reply(REP.SERVER, replies.serverEntry(e.name, e.description));
          reply(REP.ACK);
          break;

        case OPT.STARTTLS:
          error(REP.ERR_UNSUP, 'TLS is not supported by this server');
          break;

        case OPT.INFO:
        case OPT.GO: {
          const c = new Cursor(data);
          const name = c.string(c.u32());
          const requests = new Set<number>();
          for (let n = c.u16(); n > 0; n--) requests.add(c.u16());
          c.end();
          const e = io.exports.get(name);
          if (!e) {
            error(REP.ERR_UNKNOWN, `no export named ${JSON.stringify(name)}`);
            break;
          }
          reply(REP.INFO, replies.infoExport(e.backend.size, transmissionFlags(e, structuredReplies)));
          if (requests.has(INFO.NAME)) reply(REP.INFO, replies.infoString(INFO.NAME, e.name));
          if (requests.has(INFO.DESCRIPTION) && e.description) {
            reply(REP.INFO, replies.infoString(INFO.DESCRIPTION, e.description));
          }
          // Block sizes are sent unasked too: clients that ignore them still send valid requests
          // as long as the minimum is 1, and those that care need them.
          reply(REP.INFO, replies.infoBlockSize(e.blockSizes));
          reply(REP.ACK);
          if (option === OPT.GO) {
            return { export: e, structuredReplies, metaContextId: metaFor(meta, name) };
          }
          break;
        }

        case OPT.STRUCTURED_REPLY:
          if (length !== 0) throw new InvalidOption('NBD_OPT_STRUCTURED_REPLY takes no data');
          structuredReplies = true;
          reply(REP.ACK);
          break;

        case OPT.LIST_META_CONTEXT:
        case OPT.SET_META_CONTEXT: {
          if (!structuredReplies) throw new InvalidOption('negotiate structured replies first');
          const c = new Cursor(data);
          const name = c.string(c.u32());
          const queries: string[] = [];
          for (let n = c.u32(); n > 0; n--) queries.push(c.string(c.u32()));
          c.end();
          if (!io.exports.get(name)) {
            error(REP.ERR_UNKNOWN, `no export named ${JSON.stringify(name)}`);
            break;
          }
          const list = option === OPT.LIST_META_CONTEXT;
          // LIST with no queries lists everything; "base:" names the whole namespace.
          const matches = list
            ? queries.length === 0 || queries.some((q) => q === 'base:' || q === BASE_ALLOCATION)
            : queries.includes(BASE_ALLOCATION);
          if (!list) meta = matches ? { exportName: name, id: BASE_ALLOCATION_ID } : undefined;
          if (matches) reply(REP.META_CONTEXT, replies.metaContext(list ? 0 : BASE_ALLOCATION_ID, BASE_ALLOCATION));
          reply(REP.ACK);
          break;
        }

        default:
          error(REP.ERR_UNSUP, `option ${option} is not supported`);
      }
    } catch (err) {
      if (!(err instanceof InvalidOption)) throw err;
      // EXPORT_NAME has no error reply: a malformed name can only end the session.
      if (option === OPT.EXPORT_NAME) throw new ProtocolError(`bad export name: ${err.message}`);
      error(REP.ERR_INVALID, err.message);
    }
  }
}

/** Contexts selected for one export do not carry over to another. */
function metaFor(meta: { exportName: string; id: number } | undefined, exportName: string): number {
  return meta && meta.exportName === exportName ? meta.id : 0;
}
