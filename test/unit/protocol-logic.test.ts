/** Table tests for the pure pieces of the NBD server. */
import { describe, expect, it } from 'vitest';
import {
  ConfigError,
  ConflictError,
  NotFoundError,
  InvalidArgumentError,
  IoError,
  NoSpaceError,
  NotSupportedError,
  OutOfRangeError,
  ProtocolError,
  ReadOnlyError,
  ShutdownError,
  SlackerError,
  UnknownExportError,
} from '../../common/errors.js';
import { DEFAULT_BLOCK_SIZES, type Capabilities } from '../../block/backend.js';
import { ByteBudget } from '../../nbd-server/budget.js';
import { readPieces } from '../../nbd-server/connection.js';
import { toNbdErrno } from '../../nbd-server/errno.js';
import { nbdUri, parseListenAddress } from '../../nbd-server/listen-address.js';
import { CMD, CMD_FLAG, NBD_ERR } from '../../nbd-server/protocol.js';
import { readReply, type ReadFrame } from '../../nbd-server/replies.js';
import { validateRequest, type ExportState } from '../../nbd-server/validate.js';
import { parseExportArg } from '../../cli/nbd-serve.js';

describe('error hierarchy', () => {
  const table: [SlackerError, string, number][] = [
    [new InvalidArgumentError('x'), 'SLACKER_ERR_INVALID_ARGUMENT', NBD_ERR.EINVAL],
    [new OutOfRangeError('x'), 'SLACKER_ERR_OUT_OF_RANGE', NBD_ERR.EINVAL],
    [new ReadOnlyError('x'), 'SLACKER_ERR_READ_ONLY', NBD_ERR.EPERM],
    [new NotSupportedError('x'), 'SLACKER_ERR_NOT_SUPPORTED', NBD_ERR.ENOTSUP],
    [new NoSpaceError('x'), 'SLACKER_ERR_NO_SPACE', NBD_ERR.ENOSPC],
    [new IoError('x'), 'SLACKER_ERR_IO', NBD_ERR.EIO],
    [new ShutdownError('x'), 'SLACKER_ERR_SHUTDOWN', NBD_ERR.ESHUTDOWN],
    [new ProtocolError('x'), 'SLACKER_ERR_PROTOCOL', NBD_ERR.EIO],
    [new UnknownExportError('x'), 'SLACKER_ERR_UNKNOWN_EXPORT', NBD_ERR.EIO],
    [new ConfigError('x'), 'SLACKER_ERR_CONFIG', NBD_ERR.EIO],
    [new NotFoundError('x'), 'SLACKER_ERR_NOT_FOUND', NBD_ERR.EIO],
    [new ConflictError('x'), 'SLACKER_ERR_CONFLICT', NBD_ERR.EIO],
  ];
  it.each(table)('%s has a stable code and errno', (err, code, errno) => {
    expect(err).toBeInstanceOf(SlackerError);
    expect(err.code).toBe(code);
    expect(err.name).toBe(err.constructor.name);
    expect(toNbdErrno(err)).toBe(errno);
  });

  it('maps system errors as the spec asks (EDQUOT/EFBIG fold into ENOSPC)', () => {
    const sys = (code: string): Error => Object.assign(new Error(code), { code });
    expect(toNbdErrno(sys('EDQUOT'))).toBe(NBD_ERR.ENOSPC);
    expect(toNbdErrno(sys('EFBIG'))).toBe(NBD_ERR.ENOSPC);
    expect(toNbdErrno(sys('EROFS'))).toBe(NBD_ERR.EPERM);
    expect(toNbdErrno(sys('EBADF'))).toBe(NBD_ERR.EIO);
    expect(toNbdErrno('not an error')).toBe(NBD_ERR.EIO);
  });
});

describe('validateRequest', () => {
  const caps: Capabilities = {
    write: true,
    flush: true,
    fua: true,
    trim: true,
    zero: true,
    fastZero: true,
    cache: true,
    extents: true,
    multiConn: true,
  };
  const base: ExportState = {
    size: 1 << 20,
    caps,
    readOnly: false,
    blockSizes: DEFAULT_BLOCK_SIZES,
    structuredReplies: false,
    metaContextSelected: false,
  };
  const req = (type: number, offset: number, length: number, flags = 0) => ({
    type,
    offset,
    length,
    flags,
    handle: Buffer.alloc(8),
  });
  const cases: [string, ReturnType<typeof req>, Partial<ExportState>, number][] = [
    ['read in range', req(CMD.READ, 0, 4096), {}, 0],
    ['read past the end', req(CMD.READ, (1 << 20) - 1, 2), {}, NBD_ERR.EINVAL],
    ['write past the end', req(CMD.WRITE, 1 << 20, 1), {}, NBD_ERR.ENOSPC],
    ['offset beyond 2^53', req(CMD.READ, Infinity, 1), {}, NBD_ERR.EINVAL],
    ['zero length', req(CMD.READ, 0, 0), {}, NBD_ERR.EINVAL],
    ['unknown command', req(42, 0, 1), {}, NBD_ERR.EINVAL],
    ['unknown flag', req(CMD.READ, 0, 1, 1 << 9), {}, NBD_ERR.EINVAL],
    ['DF without structured replies', req(CMD.READ, 0, 1, CMD_FLAG.DF), {}, NBD_ERR.EINVAL],
    ['DF with structured replies', req(CMD.READ, 0, 1, CMD_FLAG.DF), { structuredReplies: true }, 0],
    ['NO_HOLE on a write', req(CMD.WRITE, 0, 1, CMD_FLAG.NO_HOLE), {}, NBD_ERR.EINVAL],
    ['FUA on a read is accepted', req(CMD.READ, 0, 1, CMD_FLAG.FUA), {}, 0],
    ['write on read-only', req(CMD.WRITE, 0, 1), { readOnly: true }, NBD_ERR.EPERM],
    ['trim on read-only', req(CMD.TRIM, 0, 1), { readOnly: true }, NBD_ERR.EPERM],
    ['flush with a length', req(CMD.FLUSH, 0, 1), {}, NBD_ERR.EINVAL],
    ['flush', req(CMD.FLUSH, 0, 0), {}, 0],
    ['block status without a context', req(CMD.BLOCK_STATUS, 0, 1), {}, NBD_ERR.EINVAL],
    ['block status with a context', req(CMD.BLOCK_STATUS, 0, 1), { metaContextSelected: true }, 0],
    ['read over the maximum', req(CMD.READ, 0, 33 * 1024 * 1024), { size: 1 << 30 }, NBD_ERR.EOVERFLOW],
    ['trim over the maximum is fine', req(CMD.TRIM, 0, 33 * 1024 * 1024), { size: 1 << 30 }, 0],
    [
      'misaligned offset',
      req(CMD.READ, 1, 512),
      { blockSizes: { minimum: 512, preferred: 4096, maximum: 1 << 25 } },
      NBD_ERR.EINVAL,
    ],
    [
      'misaligned length',
      req(CMD.READ, 512, 100),
      { blockSizes: { minimum: 512, preferred: 4096, maximum: 1 << 25 } },
      NBD_ERR.EINVAL,
    ],
  ];
  it.each(cases)('%s', (_name, r, over, expected) => {
    expect(validateRequest(r, { ...base, ...over })).toBe(expected);
  });
});

describe('readPieces', () => {
  it('turns zero extents of 4 KiB or more into holes and keeps the rest as data', () => {
    const ext = [
      { offset: 0, length: 8192, hole: false, zero: false },
      { offset: 8192, length: 100, hole: true, zero: true },
      { offset: 8292, length: 10000, hole: true, zero: true },
    ];
    expect(readPieces(ext, 4096, 14196)).toEqual([
      { offset: 4096, length: 4196, zero: false },
      { offset: 8292, length: 10000, zero: true },
    ]);
  });
  it('covers a range the extents leave short with data', () => {
    expect(readPieces([{ offset: 0, length: 10, hole: false, zero: false }], 0, 100)).toEqual([
      { offset: 0, length: 100, zero: false },
    ]);
  });
});

describe('ByteBudget', () => {
  it('serves waiters in order and never exceeds its capacity', async () => {
    const b = new ByteBudget(100);
    await b.acquire(60);
    const order: number[] = [];
    const big = b.acquire(80).then(() => order.push(80));
    const small = b.acquire(10).then(() => order.push(10));
    await Promise.resolve();
    expect(order).toEqual([]); // small waits behind big: FIFO
    b.release(60);
    await Promise.all([big, small]);
    expect(order).toEqual([80, 10]);
    expect(b.inUse).toBe(90);
  });
  it('lets one oversized request through when nothing else is held', async () => {
    const b = new ByteBudget(10);
    await b.acquire(50);
    expect(b.inUse).toBe(50);
  });
});

describe('addresses and arguments', () => {
  it('parses listen URIs', () => {
    expect(parseListenAddress('tcp://127.0.0.1:0')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 0 });
    expect(parseListenAddress('tcp://[::1]:10809')).toEqual({ kind: 'tcp', host: '::1', port: 10809 });
    expect(parseListenAddress('tcp://localhost')).toEqual({ kind: 'tcp', host: 'localhost', port: 10809 });
    expect(parseListenAddress('unix:///run/x.sock')).toEqual({ kind: 'unix', path: '/run/x.sock' });
    expect(() => parseListenAddress('unix://relative')).toThrow(ConfigError);
    expect(() => parseListenAddress('http://x')).toThrow(/tcp:\/\/HOST:PORT/);
    expect(() => parseListenAddress('tcp://host:99999')).toThrow(ConfigError);
  });
  it('formats NBD URIs as libnbd and qemu accept them', () => {
    expect(nbdUri({ kind: 'tcp', host: '::1', port: 5 }, 'a b')).toBe('nbd://[::1]:5/a%20b');
    expect(nbdUri({ kind: 'unix', path: '/t/s' }, 'x')).toBe('nbd+unix:///x?socket=%2Ft%2Fs');
  });
  it('parses --export NAME=FILE[:ro]', () => {
    expect(parseExportArg('d=/a/b.img')).toEqual({ name: 'd', path: '/a/b.img', readOnly: false });
    expect(parseExportArg('d=/a:b.img:ro')).toEqual({ name: 'd', path: '/a:b.img', readOnly: true });
    expect(() => parseExportArg('=/x')).toThrow(ConfigError);
    expect(() => parseExportArg('name')).toThrow(ConfigError);
  });
});

describe('read reply frames', () => {
  const handle = Buffer.from('01234567');
  const slices = [
    { kind: 'file' as const, fd: 7, position: 100, length: 10 },
    { kind: 'zero' as const, length: 4 },
    { kind: 'zero' as const, length: 6 },
    { kind: 'file' as const, fd: 8, position: 0, length: 5 },
    { kind: 'file' as const, fd: 9, position: 50, length: 5 },
  ];
  /** Headers as [magic-or-type, offset], file ranges as their descriptor, zero fill as its length. */
  const shape = (parts: ReadFrame[]): unknown[] =>
    parts.map((p) => {
      if (!Buffer.isBuffer(p)) return `fd${p.fd}`;
      if (p.every((b) => b === 0)) return `zero${p.length}`;
      if (p.readUInt32BE(0) === 0x67446698) return ['simple', p.readUInt32BE(4)];
      return [p.readUInt16BE(6), Number(p.readBigUInt64BE(20)), p.readUInt16BE(4) & 1 ? 'done' : ''];
    });

  it('simple: one header, then data with zero runs filled in', () => {
    expect(shape(readReply(handle, 1000, slices, { structured: false, fragment: true }))).toEqual([
      ['simple', 0],
      'fd7',
      'zero4',
      'zero6',
      'fd8',
      'fd9',
    ]);
  });

  it('structured: a data chunk per run of file slices, one hole chunk per zero run, done on the last', () => {
    const parts = readReply(handle, 1000, slices, { structured: true, fragment: true });
    expect(shape(parts)).toEqual([[1, 1000, ''], 'fd7', [2, 1010, ''], [1, 1020, 'done'], 'fd8', 'fd9']);
    expect((parts[2] as Buffer).readUInt32BE(28)).toBe(10); // the hole's length
    expect((parts[3] as Buffer).readUInt32BE(16)).toBe(8 + 10); // offset + data
  });

  it('structured with DF: a single data chunk', () => {
    expect(shape(readReply(handle, 1000, slices, { structured: true, fragment: false }))).toEqual([
      [1, 1000, 'done'],
      'fd7',
      'zero4',
      'zero6',
      'fd8',
      'fd9',
    ]);
  });
});
