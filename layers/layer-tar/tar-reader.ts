/**
 * A streaming reader of layer tars that keeps every byte as it was written: names, link
 * targets and PAX values come out as bytes (names as binary strings, one char per byte), never
 * decoded as UTF-8. Why not tar-stream: it decodes PAX values as UTF-8 with no way around it,
 * so a binary `security.capability` or `user.*` xattr and a non-UTF-8 name (`caf\xe9`) were
 * corrupted or refused (issue 22); a layer must come back byte for byte.
 *
 * Formats: ustar and POSIX PAX (per-entry `x` and global `g` records: path, linkpath, size,
 * uid, gid, mtime with fractions, xattrs), GNU long names (`L`, `K`) and base-256 numbers, and
 * old v7 headers. Every header's checksum is verified. A tar that ends inside an entry, a bad
 * checksum or a malformed record is an InvalidArgumentError that says where; sparse files are
 * refused. Reading stops at the end-of-archive marker; the caller drains what follows.
 */
import { InvalidArgumentError } from '../../common/errors.js';

export const BLOCK = 512;

/** Bytes kept of one special entry (PAX records, GNU long name), as Go's archive/tar caps them. */
const MAX_SPECIAL = 1 << 20;

export type EntryType =
  'file' | 'link' | 'symlink' | 'character-device' | 'block-device' | 'directory' | 'fifo' | 'unsupported';

export interface TarHeader {
  /** The entry name's bytes as a binary (latin1) string: `Buffer.from(name, 'latin1')` gives them back. */
  name: string;
  /** Link target bytes, likewise ('' if none). */
  linkname: string;
  type: EntryType;
  /** The type flag byte as written (for messages about unsupported types). */
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Modification time: whole seconds and nanoseconds (PAX mtime keeps fractions). */
  mtime: { sec: number; nsec: number };
  devmajor: number;
  devminor: number;
  /** PAX records that apply to this entry (global, then its own): keys as binary strings, values as bytes. */
  pax: Map<string, Buffer>;
  /** Byte offset of the entry's header in the tar (for error messages). */
  offset: number;
}

export interface TarEntry {
  header: TarHeader;
  /**
   * The entry's data, in the pieces it arrived in (views of the source's buffers, which may be
   * kept). Unread data is skipped when the next entry is asked for.
   */
  data(): AsyncGenerator<Buffer>;
  /** The whole data in one Buffer (for small entries). */
  readAll(): Promise<Buffer>;
}

const TYPES: Record<string, EntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file', // contiguous file: an ordinary file everywhere that matters
  '1': 'link',
  '2': 'symlink',
  '3': 'character-device',
  '4': 'block-device',
  '5': 'directory',
  '6': 'fifo',
};

/** Buffered bytes from an async source, handed out without copying where a piece allows. */
class ByteQueue {
  private readonly pieces: Buffer[] = [];
  private head = 0; // offset into pieces[0]
  length = 0;
  /** Bytes consumed so far (the offset in the tar of the next byte). */
  consumed = 0;
  private ended = false;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  /** Waits until `n` bytes are buffered; false if the source ends first. */
  async fill(n: number): Promise<boolean> {
    while (this.length < n) {
      if (this.ended) return false;
      const r = await this.source.next();
      if (r.done) {
        this.ended = true;
        return false;
      }
      const b = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value as Uint8Array);
      if (b.length === 0) continue;
      this.pieces.push(b);
      this.length += b.length;
    }
    return true;
  }

  /** Up to `n` buffered bytes from the first piece (no copy). */
  takeSome(n: number): Buffer {
    const p = this.pieces[0]!;
    const k = Math.min(n, p.length - this.head);
    const out = p.subarray(this.head, this.head + k);
    this.advance(k);
    return out;
  }

  /** Exactly `n` buffered bytes (copied only if they span pieces). */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const p = this.pieces[0]!;
    if (p.length - this.head >= n) return this.takeSome(n);
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const part = this.takeSome(n - at);
      part.copy(out, at);
      at += part.length;
    }
    return out;
  }

  skip(n: number): void {
    while (n > 0) n -= this.takeSome(n).length;
  }

  private advance(k: number): void {
    this.head += k;
    this.length -= k;
    this.consumed += k;
    if (this.head === this.pieces[0]!.length) {
      this.pieces.shift();
      this.head = 0;
    }
  }
}

function corrupt(message: string, offset: number): InvalidArgumentError {
  return new InvalidArgumentError(`malformed layer tar at byte ${offset}: ${message}`, { context: { offset } });
}

/** A NUL-terminated field as a binary string. */
function field(b: Buffer, start: number, length: number): string {
  let end = start;
  const max = start + length;
  while (end < max && b[end] !== 0) end++;
  return b.toString('latin1', start, end);
}

/** A numeric field: octal (NUL/space padded) or GNU base-256 (high bit of the first byte set). */
function numeric(b: Buffer, start: number, length: number, what: string, offset: number): number {
  if (b[start]! & 0x80) {
    if (b[start] === 0xff) throw corrupt(`negative ${what}`, offset);
    let v = b[start]! & 0x7f;
    for (let i = start + 1; i < start + length; i++) v = v * 256 + b[i]!;
    if (!Number.isSafeInteger(v)) throw corrupt(`${what} too large`, offset);
    return v;
  }
  let v = 0;
  let i = start;
  const end = start + length;
  while (i < end && (b[i] === 0x20 || b[i] === 0)) i++; // leading padding
  for (; i < end; i++) {
    const c = b[i]!;
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) throw corrupt(`${what} is not an octal number`, offset);
    v = v * 8 + (c - 0x30);
  }
  return v;
}

function checksumOk(b: Buffer, offset: number): boolean {
  const stored = numeric(b, 148, 8, 'checksum', offset);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : b[i]!;
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  return stored === unsigned || stored === signed;
}

function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < BLOCK; i += 4) if (b.readUInt32LE(i) !== 0) return false;
  return true;
}

/** PAX records `LEN KEY=VALUE\n`: keys as binary strings, values as bytes. */
export function parsePax(data: Buffer, offset: number, into: Map<string, Buffer>): void {
  let at = 0;
  while (at < data.length) {
    if (data[at] === 0) break; // some writers pad with NULs
    const sp = data.indexOf(0x20, at);
    if (sp < 0 || sp - at > 20) throw corrupt('PAX record without a length', offset);
    const len = Number(data.toString('latin1', at, sp));
    if (!Number.isInteger(len) || len <= sp - at + 1 || at + len > data.length || data[at + len - 1] !== 0x0a)
      throw corrupt('PAX record with a bad length', offset);
    const eq = data.indexOf(0x3d, sp + 1);
    if (eq < 0 || eq >= at + len - 1) throw corrupt('PAX record without "="', offset);
    const key = data.toString('latin1', sp + 1, eq); // bytes, like names: an xattr name is passed on as it came
    const value = Buffer.from(data.subarray(eq + 1, at + len - 1)); // a copy: the data buffer is reused
    into.set(key, value);
    at += len;
  }
}

function paxNumber(pax: Map<string, Buffer>, key: string, fallback: number, offset: number): number {
  const v = pax.get(key);
  if (v === undefined) return fallback;
  const n = Number(v.toString('latin1'));
  if (!Number.isSafeInteger(n) || n < 0) throw corrupt(`PAX ${key} is not a number`, offset);
  return n;
}

function paxTime(v: Buffer, offset: number): { sec: number; nsec: number } {
  const m = /^(-?\d+)(?:\.(\d+))?$/.exec(v.toString('latin1'));
  if (!m) throw corrupt('PAX mtime is not a time', offset);
  const sec = Number(m[1]);
  const frac = (m[2] ?? '').slice(0, 9).padEnd(9, '0');
  return { sec, nsec: Number(frac) };
}

/**
 * The entries of a tar read from `source`. Consume each entry's data (or not) before asking for
 * the next. Stops at the end-of-archive marker or at the end of the source after a whole entry.
 */
export async function* readTar(source: AsyncIterable<Buffer>): AsyncGenerator<TarEntry> {
  const q = new ByteQueue(source[Symbol.asyncIterator]());
  const global = new Map<string, Buffer>();
  let pax: Map<string, Buffer> | undefined;
  let longName: string | undefined;
  let longLink: string | undefined;
  /** Data bytes (and padding) the current entry still has in the stream. */
  let remaining = 0;
  let padding = 0;
  /** Entries handed out so far: an entry's data is readable only while it is the last one. */
  let handedOut = 0;

  const skipRest = async (): Promise<void> => {
    let n = remaining + padding;
    while (n > 0) {
      if (q.length === 0 && !(await q.fill(1))) throw corrupt('the tar ends inside an entry (truncated)', q.consumed);
      n -= q.takeSome(n).length;
    }
    remaining = padding = 0;
  };

  const special = async (size: number, offset: number): Promise<Buffer> => {
    if (size > MAX_SPECIAL) throw corrupt(`a special entry of ${size} bytes (at most ${MAX_SPECIAL})`, offset);
    const whole = size + ((BLOCK - (size % BLOCK)) % BLOCK);
    if (!(await q.fill(whole))) throw corrupt('the tar ends inside an entry (truncated)', q.consumed);
    const data = Buffer.from(q.take(size));
    q.skip(whole - size);
    return data;
  };

  for (;;) {
    const offset = q.consumed;
    if (!(await q.fill(BLOCK))) {
      if (q.length === 0 && pax === undefined && longName === undefined && longLink === undefined) return; // EOF
      throw corrupt('the tar ends inside a header (truncated)', offset);
    }
    const b = q.take(BLOCK);
    if (isZeroBlock(b)) return; // end of archive; what follows is the caller's to drain
    if (!checksumOk(b, offset)) throw corrupt('header checksum mismatch (corrupt or not a tar)', offset);
    const flag = String.fromCharCode(b[156]!);
    const size = numeric(b, 124, 12, 'size', offset);
    if (flag === 'x' || flag === 'g') {
      const records = await special(size, offset);
      const into = flag === 'g' ? global : (pax ??= new Map());
      parsePax(records, offset, into);
      continue;
    }
    if (flag === 'L' || flag === 'K') {
      const value = field(await special(size, offset), 0, size);
      if (flag === 'L') longName = value;
      else longLink = value;
      continue;
    }
    const ustar = b.toString('latin1', 257, 263) === 'ustar\0';
    let name = field(b, 0, 100);
    if (ustar && b[345] !== 0) name = `${field(b, 345, 155)}/${name}`;
    const records = new Map(global);
    if (pax) for (const [k, v] of pax) records.set(k, v);
    if (longName !== undefined) name = longName;
    const p = records.get('path');
    if (p !== undefined) name = p.toString('latin1');
    let linkname = longLink ?? field(b, 157, 100);
    const lp = records.get('linkpath');
    if (lp !== undefined) linkname = lp.toString('latin1');
    pax = undefined;
    longName = longLink = undefined;

    let type = TYPES[flag] ?? 'unsupported';
    if (type === 'file' && flag !== '7' && !ustar && name.endsWith('/')) type = 'directory'; // v7 directories
    if (flag === 'S' || [...records.keys()].some((k) => k.startsWith('GNU.sparse.')))
      throw corrupt(`sparse file ${JSON.stringify(name)} (not supported in layers)`, offset);
    const mtime = records.get('mtime');
    const header: TarHeader = {
      name,
      linkname,
      type,
      typeflag: flag,
      mode: numeric(b, 100, 8, 'mode', offset) & 0o7777,
      uid: paxNumber(records, 'uid', numeric(b, 108, 8, 'uid', offset), offset),
      gid: paxNumber(records, 'gid', numeric(b, 116, 8, 'gid', offset), offset),
      size: paxNumber(records, 'size', size, offset),
      mtime: mtime ? paxTime(mtime, offset) : { sec: numeric(b, 136, 12, 'mtime', offset), nsec: 0 },
      devmajor: ustar || b.toString('latin1', 257, 263) === 'ustar ' ? numeric(b, 329, 8, 'devmajor', offset) : 0,
      devminor: ustar || b.toString('latin1', 257, 263) === 'ustar ' ? numeric(b, 337, 8, 'devminor', offset) : 0,
      pax: records,
      offset,
    };
    // Links, directories and devices carry no data in the stream whatever their size field says.
    const dataSize = type === 'file' || type === 'unsupported' ? header.size : 0;
    remaining = dataSize;
    padding = (BLOCK - (dataSize % BLOCK)) % BLOCK;

    const entry = ++handedOut;
    /** An entry without data can be read later (a peeked one); any other only while it is current. */
    const stale = (): boolean => {
      if (entry === handedOut) return false;
      if (dataSize === 0) return true;
      throw new Error(`internal: data of tar entry ${JSON.stringify(name)} read after the next entry`);
    };
    const data = async function* (): AsyncGenerator<Buffer> {
      if (stale()) return;
      while (remaining > 0) {
        if (q.length === 0 && !(await q.fill(1))) throw corrupt('the tar ends inside an entry (truncated)', q.consumed);
        const piece = q.takeSome(remaining);
        remaining -= piece.length;
        yield piece;
      }
    };
    const readAll = async (): Promise<Buffer> => {
      if (stale()) return Buffer.alloc(0);
      if (!(await q.fill(remaining))) throw corrupt('the tar ends inside an entry (truncated)', q.consumed);
      const out = q.take(remaining);
      remaining = 0;
      return out;
    };
    yield { header, data, readAll };
    await skipRest();
  }
}
