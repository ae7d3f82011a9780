/** The gate's size, and that it holds calls on mounts to it (layers/mount-calls.ts). */
import { describe, expect, it } from 'vitest';
import {
  mountCallCounts,
  mountCallLimit,
  onMount,
  RESERVED_THREADS,
  threadpoolSize,
} from '../../layers/mount-calls.js';

describe('the gate for calls on our own mounts', () => {
  it("reads libuv's threadpool size as libuv does", () => {
    expect(threadpoolSize({})).toBe(4);
    expect(threadpoolSize({ UV_THREADPOOL_SIZE: '16' })).toBe(16);
    expect(threadpoolSize({ UV_THREADPOOL_SIZE: '0' })).toBe(1);
    expect(threadpoolSize({ UV_THREADPOOL_SIZE: '5000' })).toBe(1024);
    expect(threadpoolSize({ UV_THREADPOOL_SIZE: 'many' })).toBe(4);
  });

  it('leaves threads for the NBD server, and lets one call through on the smallest pool', () => {
    expect(mountCallLimit(4)).toBe(4 - RESERVED_THREADS);
    expect(mountCallLimit(16)).toBe(16 - RESERVED_THREADS);
    expect(mountCallLimit(1)).toBe(1);
    expect(mountCallCounts().limit).toBe(mountCallLimit(threadpoolSize()));
  });

  it('runs no more calls at once than its limit, all of them in the end, and a failure frees its place', async () => {
    const { limit } = mountCallCounts();
    let running = 0;
    let most = 0;
    const call = async (i: number): Promise<number> => {
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setTimeout(r, 5));
      running--;
      if (i % 3 === 0) throw new Error(`call ${i} failed`);
      return i;
    };
    const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => onMount(() => call(i))));
    expect(most).toBe(limit);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(13);
    expect(results.filter((r) => r.status === 'rejected')).toHaveLength(7);
    expect(mountCallCounts()).toMatchObject({ active: 0, waiting: 0 });
  });
});
