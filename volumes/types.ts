/** Domain types of layer volumes (content addresses are common/digests.ts). */
/** A volume's id: Docker layer ids and snapshot names are hex or name-like strings. */
export type VolumeId = string & { readonly __brand: 'VolumeId' };
/** Index of a chunk within a volume: byte offset / chunk size. */
export type ChunkIndex = number;

const VOLUME_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export function isVolumeId(s: string): s is VolumeId {
  return VOLUME_ID.test(s);
}

export function isAllZero(buf: Buffer): boolean {
  // Compare 8 bytes at a time; chunk sizes are multiples of 8.
  const words = Math.floor(buf.length / 8);
  for (let i = 0; i < words; i++) if (buf.readBigUInt64LE(i * 8) !== 0n) return false;
  for (let i = words * 8; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Length of chunk `idx` of a volume: the last chunk may be short. */
export function chunkLength(size: number, chunkSize: number, idx: ChunkIndex): number {
  return Math.min(chunkSize, size - idx * chunkSize);
}

/** Default chunk size, chosen by measurement on a real root file system (docs/BENCHMARKS.md). */
export const DEFAULT_CHUNK_SIZE = 128 * 1024;
