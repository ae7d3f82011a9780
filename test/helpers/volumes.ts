/** Volume fixtures shared by the snapshot and store tests. */
import type { VolumeManager } from '../../volumes/manager.js';
import type { Digest } from '../../common/digests.js';

/**
 * Creates volume `id` on `host`, writes `data(i)` into each listed chunk, freezes and publishes
 * it; returns the snapshot reference.
 */
export async function publishVolume(
  host: VolumeManager,
  id: string,
  chunks: number[],
  o: { size: number; chunkSize: number; data: (i: number) => Buffer },
): Promise<Digest> {
  await host.create(id, o.size, { chunkSize: o.chunkSize });
  const v = await host.acquire(id);
  for (const i of chunks) await v.pwrite!(o.data(i), i * o.chunkSize, { fua: false });
  await host.release(id);
  await host.freeze(id);
  return host.publish(id);
}
