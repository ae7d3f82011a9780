/**
 * Tars written byte by byte, for tests and benchmarks that need what tar libraries will not
 * write: binary PAX values (a `security.capability` xattr), non-UTF-8 names, names of any
 * length, entries in any order, and deliberately damaged archives. ustar headers, with a PAX
 * record for whatever does not fit them.
 */

export interface RawEntry {
  /** The name's bytes (a string is taken as UTF-8). */
  name: string | Buffer;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'fifo' | 'character-device' | 'block-device' | 'other';
  data?: string | Buffer;
  linkname?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch. */
  mtime?: number;
  devmajor?: number;
  devminor?: number;
  /** Extra PAX records, values as bytes (e.g. `SCHILY.xattr.user.x`). */
  pax?: Record<string, string | Buffer>;
  /** Type flag byte for type 'other'. */
  typeflag?: string;
}

const FLAGS: Record<string, string> = {
  file: '0',
  link: '1',
  symlink: '2',
  'character-device': '3',
  'block-device': '4',
  directory: '5',
  fifo: '6',
};

const bytes = (v: string | Buffer): Buffer => (typeof v === 'string' ? Buffer.from(v, 'utf8') : v);

function octal(b: Buffer, at: number, len: number, v: number): void {
  b.write(`${v.toString(8).padStart(len - 1, '0')}\0`, at, len, 'latin1');
}

function header(name: Buffer, flag: string, size: number, e: Partial<RawEntry>, link: Buffer): Buffer {
  const b = Buffer.alloc(512);
  name.copy(b, 0, 0, Math.min(name.length, 100));
  octal(b, 100, 8, e.mode ?? (flag === '5' ? 0o755 : 0o644));
  octal(b, 108, 8, e.uid ?? 0);
  octal(b, 116, 8, e.gid ?? 0);
  octal(b, 124, 12, size);
  octal(b, 136, 12, e.mtime ?? 0);
  b.write(flag, 156, 1, 'latin1');
  link.copy(b, 157, 0, Math.min(link.length, 100));
  b.write('ustar\x0000', 257, 8, 'latin1');
  octal(b, 329, 8, e.devmajor ?? 0);
  octal(b, 337, 8, e.devminor ?? 0);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const c of b) sum += c;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
  return b;
}

function padded(data: Buffer): Buffer[] {
  const pad = (512 - (data.length % 512)) % 512;
  return pad ? [data, Buffer.alloc(pad)] : [data];
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len++;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

/** The tar of `entries`, with the end-of-archive marker unless `end` is false. */
export function rawTar(entries: RawEntry[], options: { end?: boolean } = {}): Buffer {
  const out: Buffer[] = [];
  for (const e of entries) {
    const name = bytes(e.name);
    const link = bytes(e.linkname ?? '');
    const data = bytes(e.data ?? '');
    const flag = e.type === 'other' ? (e.typeflag ?? 'V') : FLAGS[e.type ?? 'file']!;
    const records: Buffer[] = [];
    if (name.length > 100) records.push(paxRecord('path', name));
    if (link.length > 100) records.push(paxRecord('linkpath', link));
    for (const [k, v] of Object.entries(e.pax ?? {})) records.push(paxRecord(k, bytes(v)));
    if (records.length > 0) {
      const pax = Buffer.concat(records);
      out.push(header(Buffer.from('PaxHeader'), 'x', pax.length, {}, Buffer.alloc(0)), ...padded(pax));
    }
    out.push(header(name, flag, data.length, e, link), ...padded(data));
  }
  if (options.end !== false) out.push(Buffer.alloc(1024));
  return Buffer.concat(out);
}

/** `depth` nested one-letter directories (`d/d/d/...`) with a file `bottom` in the deepest. */
export function nestedDirs(depth: number): RawEntry[] {
  const entries: RawEntry[] = [];
  let path = '';
  for (let i = 0; i < depth; i++) {
    path += `${path ? '/' : ''}d`;
    entries.push({ name: `${path}/`, type: 'directory' });
  }
  entries.push({ name: `${path}/bottom`, data: 'deep' });
  return entries;
}
