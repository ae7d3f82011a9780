/**
 * The one place every transmission request is checked before any backend sees it (as nbdkit's
 * validate_request). Returns 0 when the request may run, else the NBD errno to answer with.
 */
import type { BlockSizes, Capabilities } from '../block/backend.js';
import { CMD, CMD_FLAG, NBD_ERR } from './protocol.js';

export interface Request {
  flags: number;
  type: number;
  handle: Buffer;
  offset: number; // > 2^53 is clamped to Infinity by the parser: always out of range
  length: number;
}

export interface ExportState {
  size: number;
  caps: Capabilities;
  readOnly: boolean;
  blockSizes: BlockSizes;
  structuredReplies: boolean;
  metaContextSelected: boolean;
}

/** Which command flags each command accepts (FUA is accepted everywhere once advertised). */
function allowedFlags(type: number, s: ExportState): number {
  let allowed = s.caps.fua ? CMD_FLAG.FUA : 0;
  if (type === CMD.READ && s.structuredReplies) allowed |= CMD_FLAG.DF;
  if (type === CMD.WRITE_ZEROES) allowed |= CMD_FLAG.NO_HOLE | (s.caps.fastZero ? CMD_FLAG.FAST_ZERO : 0);
  if (type === CMD.BLOCK_STATUS) allowed |= CMD_FLAG.REQ_ONE;
  return allowed;
}

export function validateRequest(r: Request, s: ExportState): number {
  const writes = r.type === CMD.WRITE || r.type === CMD.TRIM || r.type === CMD.WRITE_ZEROES;
  switch (r.type) {
    case CMD.READ:
    case CMD.WRITE:
    case CMD.CACHE:
      break;
    case CMD.TRIM:
      if (!s.caps.trim && !s.readOnly) return NBD_ERR.EINVAL;
      break;
    case CMD.WRITE_ZEROES:
      break;
    case CMD.FLUSH:
      // Allowed even when not advertised: with nothing cached it is a harmless no-op.
      if (r.offset !== 0 || r.length !== 0) return NBD_ERR.EINVAL;
      break;
    case CMD.BLOCK_STATUS:
      if (!s.metaContextSelected) return NBD_ERR.EINVAL;
      break;
    default:
      return NBD_ERR.EINVAL;
  }

  if ((r.flags & ~allowedFlags(r.type, s)) !== 0) return NBD_ERR.EINVAL;
  if (writes && s.readOnly) return NBD_ERR.EPERM;
  if (r.type === CMD.FLUSH) return 0;

  if (r.length === 0) return NBD_ERR.EINVAL;
  if (r.offset + r.length > s.size) return writes ? NBD_ERR.ENOSPC : NBD_ERR.EINVAL;

  const { minimum, maximum } = s.blockSizes;
  if (minimum > 1 && (r.offset % minimum !== 0 || r.length % minimum !== 0)) return NBD_ERR.EINVAL;
  // Only requests that carry or return a payload are bounded by the maximum.
  if ((r.type === CMD.READ || r.type === CMD.WRITE) && r.length > maximum) return NBD_ERR.EOVERFLOW;
  return 0;
}
