/**
 * The one place where errors become NBD wire error values. Backends throw SlackerErrors or raw
 * node:fs system errors; both land here.
 */
import { SlackerError, systemErrorCode } from '../common/errors.js';
import { NBD_ERR, type NbdErrno } from './protocol.js';

const BY_SLACKER_CODE: Record<string, NbdErrno> = {
  SLACKER_ERR_INVALID_ARGUMENT: NBD_ERR.EINVAL,
  SLACKER_ERR_OUT_OF_RANGE: NBD_ERR.EINVAL,
  SLACKER_ERR_READ_ONLY: NBD_ERR.EPERM,
  SLACKER_ERR_NOT_SUPPORTED: NBD_ERR.ENOTSUP,
  SLACKER_ERR_NO_SPACE: NBD_ERR.ENOSPC,
  SLACKER_ERR_IO: NBD_ERR.EIO,
  SLACKER_ERR_SHUTDOWN: NBD_ERR.ESHUTDOWN,
};

// The spec asks servers to fold EDQUOT and EFBIG into ENOSPC.
const BY_SYSTEM_CODE: Record<string, NbdErrno> = {
  EPERM: NBD_ERR.EPERM,
  EACCES: NBD_ERR.EPERM,
  EROFS: NBD_ERR.EPERM,
  EIO: NBD_ERR.EIO,
  ENOMEM: NBD_ERR.ENOMEM,
  EINVAL: NBD_ERR.EINVAL,
  ENOSPC: NBD_ERR.ENOSPC,
  EDQUOT: NBD_ERR.ENOSPC,
  EFBIG: NBD_ERR.ENOSPC,
  EOVERFLOW: NBD_ERR.EOVERFLOW,
  EOPNOTSUPP: NBD_ERR.ENOTSUP,
  ENOTSUP: NBD_ERR.ENOTSUP,
  ESHUTDOWN: NBD_ERR.ESHUTDOWN,
};

/** Anything unknown is an I/O error: the safest thing to tell a block device client. */
export function toNbdErrno(err: unknown): NbdErrno {
  if (err instanceof SlackerError) return BY_SLACKER_CODE[err.code] ?? NBD_ERR.EIO;
  const code = systemErrorCode(err);
  return (code && BY_SYSTEM_CODE[code]) || NBD_ERR.EIO;
}

export function errnoName(value: number): string {
  return Object.entries(NBD_ERR).find(([, v]) => v === value)?.[0] ?? `errno ${value}`;
}
