/**
 * SHA-256 of many buffers off the event loop: one libuv threadpool job per call
 * (native/digests.c), for verifying a fetched batch of chunks without hashing on the loop.
 */
import { loadAddon } from './native-addon.js';

interface DigestsAddon {
  sha256Batch(buffers: Buffer[]): Promise<Buffer>;
}

const addon = loadAddon<DigestsAddon>('digests');
const DIGEST_BYTES = 32;

/**
 * The lowercase hex SHA-256 of each buffer, in order. The buffers must not change until the
 * promise settles (they are hashed in place, on another thread).
 */
export async function sha256Hex(buffers: Buffer[]): Promise<string[]> {
  const digests = await addon.sha256Batch(buffers);
  return buffers.map((_, i) => digests.toString('hex', i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES));
}
