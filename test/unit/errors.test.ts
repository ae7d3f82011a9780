/**
 * The one error hierarchy: every exported error class is a SlackerError with its own stable
 * code, its own name, a context and the cause it was given; and each code maps to the NBD errno
 * a block device client should see.
 */
import { describe, expect, it } from 'vitest';
import * as errors from '../../common/errors.js';
import { SlackerError } from '../../common/errors.js';
import { toNbdErrno } from '../../nbd-server/errno.js';
import { NBD_ERR } from '../../nbd-server/protocol.js';

type Ctor = new (message: string, ...rest: never[]) => SlackerError;
const classes = (Object.entries(errors) as [string, unknown][]).filter(
  (e): e is [string, Ctor] =>
    typeof e[1] === 'function' && (e[1] === SlackerError || (e[1] as Ctor).prototype instanceof SlackerError),
);

function make(name: string, C: Ctor, cause?: unknown): SlackerError {
  const options = { cause, context: { where: 'test' } };
  if (name === 'CommandError') return new errors.CommandError('failed', 2, 'out', 'err', options);
  return new (C as unknown as new (m: string, o: errors.SlackerErrorOptions) => SlackerError)('failed', options);
}

describe('the error hierarchy', () => {
  it('has the classes the code throws', () => {
    expect(classes.map(([n]) => n)).toEqual(
      expect.arrayContaining(['SlackerError', 'IoError', 'CommandError', 'TransportError', 'TimeoutError']),
    );
  });

  it.each(classes)('%s: a SlackerError with its own name, a stable code, context and cause', (name, C) => {
    const cause = new Error('underneath');
    const e = make(name, C, cause);
    expect(e).toBeInstanceOf(Error);
    expect(e).toBeInstanceOf(SlackerError);
    expect(e.name).toBe(name);
    expect(e.code).toMatch(/^SLACKER_ERR(_[A-Z]+)*$/);
    expect(e.context).toEqual({ where: 'test' });
    expect(e.cause).toBe(cause);
  });

  it('gives every class a different code', () => {
    const codes = classes.map(([n, C]) => make(n, C).code);
    expect(new Set(codes).size).toBe(codes.length);
  });

  it('keeps what a failed command printed', () => {
    const e = new errors.CommandError('mount failed', 32, '', 'mount: wrong fs type');
    expect([e.exitCode, e.stderr, e.code]).toEqual([32, 'mount: wrong fs type', 'SLACKER_ERR_COMMAND']);
  });

  it.each([
    ['InvalidArgumentError', NBD_ERR.EINVAL],
    ['OutOfRangeError', NBD_ERR.EINVAL],
    ['ReadOnlyError', NBD_ERR.EPERM],
    ['NotSupportedError', NBD_ERR.ENOTSUP],
    ['NoSpaceError', NBD_ERR.ENOSPC],
    ['IoError', NBD_ERR.EIO],
    ['ShutdownError', NBD_ERR.ESHUTDOWN],
    ['TransportError', NBD_ERR.EIO],
    ['TimeoutError', NBD_ERR.EIO],
  ])('%s reaches an NBD client as errno %i', (name, errno) => {
    const C = classes.find(([n]) => n === name)![1];
    expect(toNbdErrno(make(name, C))).toBe(errno);
  });
});
