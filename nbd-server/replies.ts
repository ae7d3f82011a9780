/**
 * Encoders for every frame the server sends: option replies during the handshake, simple and
 * structured replies during transmission. Pure functions from values to Buffers.
 */
import {
  INFO,
  REP_MAGIC,
  REPLY_FLAG_DONE,
  REPLY_TYPE,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './protocol.js';
import type { BlockSizes, Slice } from '../block/backend.js';

// ---- handshake ----

export function optionReply(option: number, type: number, data: Buffer = EMPTY): Buffer {
  const out = Buffer.allocUnsafe(20 + data.length);
  out.writeBigUInt64BE(REP_MAGIC, 0);
  out.writeUInt32BE(option, 8);
  out.writeUInt32BE(type, 12);
  out.writeUInt32BE(data.length, 16);
  data.copy(out, 20);
  return out;
}

/** Data of NBD_REP_SERVER: a length-prefixed export name followed by a description. */
export function serverEntry(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const out = Buffer.allocUnsafe(4 + n.length + d.length);
  out.writeUInt32BE(n.length, 0);
  n.copy(out, 4);
  d.copy(out, 4 + n.length);
  return out;
}

export function infoExport(size: number, flags: number): Buffer {
  const out = Buffer.allocUnsafe(12);
  out.writeUInt16BE(INFO.EXPORT, 0);
  out.writeBigUInt64BE(BigInt(size), 2);
  out.writeUInt16BE(flags, 10);
  return out;
}

export function infoString(type: typeof INFO.NAME | typeof INFO.DESCRIPTION, s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const out = Buffer.allocUnsafe(2 + b.length);
  out.writeUInt16BE(type, 0);
  b.copy(out, 2);
  return out;
}

export function infoBlockSize(sizes: BlockSizes): Buffer {
  const out = Buffer.allocUnsafe(14);
  out.writeUInt16BE(INFO.BLOCK_SIZE, 0);
  out.writeUInt32BE(sizes.minimum, 2);
  out.writeUInt32BE(sizes.preferred, 6);
  out.writeUInt32BE(sizes.maximum, 10);
  return out;
}

export function metaContext(id: number, name: string): Buffer {
  const b = Buffer.from(name, 'utf8');
  const out = Buffer.allocUnsafe(4 + b.length);
  out.writeUInt32BE(id, 0);
  b.copy(out, 4);
  return out;
}

/** The fixed reply to NBD_OPT_EXPORT_NAME: size, flags, and (unless NO_ZEROES) 124 zero bytes. */
export function exportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const out = Buffer.alloc(noZeroes ? 10 : 134);
  out.writeBigUInt64BE(BigInt(size), 0);
  out.writeUInt16BE(flags, 8);
  return out;
}

// ---- transmission ----

export function simpleReply(handle: Buffer, error: number): Buffer {
  const out = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  out.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  out.writeUInt32BE(error, 4);
  handle.copy(out, 8);
  return out;
}

/** A structured chunk header, with `extra` bytes reserved after it for the caller to fill. */
export function structuredHeader(
  handle: Buffer,
  type: number,
  payloadLength: number,
  done: boolean,
  extra = 0,
): Buffer {
  const out = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + extra);
  out.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  out.writeUInt16BE(done ? REPLY_FLAG_DONE : 0, 4);
  out.writeUInt16BE(type, 6);
  handle.copy(out, 8);
  out.writeUInt32BE(payloadLength, 16);
  return out;
}

/** Header plus offset of an OFFSET_DATA chunk; the data itself is written after it. */
export function offsetDataHeader(handle: Buffer, offset: number, dataLength: number, done: boolean): Buffer {
  const out = structuredHeader(handle, REPLY_TYPE.OFFSET_DATA, 8 + dataLength, done, 8);
  out.writeBigUInt64BE(BigInt(offset), STRUCTURED_HEADER_SIZE);
  return out;
}

/** How a read is answered: structured replies negotiated; fragmenting allowed (no DF flag). */
export interface ReadMode {
  structured: boolean;
  fragment: boolean;
}

/** A frame of a read reply: bytes, or a range of a file sent as it is (direct-reply.ts). */
export type ReadFrame = Buffer | Extract<Slice, { kind: 'file' }>;

/** 1 MiB of zeroes, never written to: zero runs are sent (or written) as slices of it. */
export const ZEROES = Buffer.alloc(1024 * 1024);

/**
 * A successful read reply over `data` (which starts at `offset`; Buffers are bytes already
 * read): a simple reply (header, data), or structured chunks: one OFFSET_DATA per run of data
 * and an OFFSET_HOLE per zero run, or a single OFFSET_DATA when the client forbade fragmenting
 * (DF). Buffers in, Buffers out: only file slices stay file ranges.
 */
export function readReply(
  handle: Buffer,
  offset: number,
  data: readonly (Buffer | Extract<Slice, { kind: 'zero' }>)[],
  mode: ReadMode,
): Buffer[];
export function readReply(
  handle: Buffer,
  offset: number,
  data: readonly (Slice | Buffer)[],
  mode: ReadMode,
): ReadFrame[];
export function readReply(
  handle: Buffer,
  offset: number,
  data: readonly (Slice | Buffer)[],
  mode: ReadMode,
): ReadFrame[] {
  const bytes = (d: Slice | Buffer): ReadFrame[] => (Buffer.isBuffer(d) || d.kind === 'file' ? [d] : zeroes(d.length));
  if (!mode.structured) return [simpleReply(handle, 0), ...data.flatMap(bytes)];
  if (!mode.fragment) {
    const length = data.reduce((n, d) => n + d.length, 0);
    return [offsetDataHeader(handle, offset, length, true), ...data.flatMap(bytes)];
  }
  const isZero = (d: Slice | Buffer): boolean => !Buffer.isBuffer(d) && d.kind === 'zero';
  const frames: ReadFrame[] = [];
  let at = offset;
  for (let i = 0; i < data.length;) {
    // A run of one kind: zeroes become one hole chunk, data one data chunk.
    const zero = isZero(data[i]!);
    let j = i;
    let run = 0;
    for (; j < data.length && isZero(data[j]!) === zero; j++) run += data[j]!.length;
    const done = j === data.length;
    if (zero) frames.push(offsetHole(handle, at, run, done));
    else frames.push(offsetDataHeader(handle, at, run, done), ...data.slice(i, j).flatMap(bytes));
    at += run;
    i = j;
  }
  return frames;
}

function zeroes(length: number): Buffer[] {
  const out: Buffer[] = [];
  for (let left = length; left > 0; left -= ZEROES.length) out.push(ZEROES.subarray(0, Math.min(left, ZEROES.length)));
  return out;
}

export function offsetHole(handle: Buffer, offset: number, length: number, done: boolean): Buffer {
  const out = structuredHeader(handle, REPLY_TYPE.OFFSET_HOLE, 12, done, 12);
  out.writeBigUInt64BE(BigInt(offset), STRUCTURED_HEADER_SIZE);
  out.writeUInt32BE(length, STRUCTURED_HEADER_SIZE + 8);
  return out;
}

export function structuredNone(handle: Buffer): Buffer {
  return structuredHeader(handle, REPLY_TYPE.NONE, 0, true);
}

export function structuredError(handle: Buffer, error: number, message: string): Buffer {
  // Messages are for humans; keep them within the spec's string limit.
  const msg = Buffer.from(message.slice(0, 1024), 'utf8');
  const out = structuredHeader(handle, REPLY_TYPE.ERROR, 6 + msg.length, true, 6 + msg.length);
  out.writeUInt32BE(error, STRUCTURED_HEADER_SIZE);
  out.writeUInt16BE(msg.length, STRUCTURED_HEADER_SIZE + 4);
  msg.copy(out, STRUCTURED_HEADER_SIZE + 6);
  return out;
}

export interface Descriptor {
  length: number;
  flags: number;
}

export function blockStatus(handle: Buffer, contextId: number, descriptors: Descriptor[]): Buffer {
  const payload = 4 + 8 * descriptors.length;
  const out = structuredHeader(handle, REPLY_TYPE.BLOCK_STATUS, payload, true, payload);
  let p = STRUCTURED_HEADER_SIZE;
  out.writeUInt32BE(contextId, p);
  p += 4;
  for (const d of descriptors) {
    out.writeUInt32BE(d.length, p);
    out.writeUInt32BE(d.flags, p + 4);
    p += 8;
  }
  return out;
}

const EMPTY = Buffer.alloc(0);
