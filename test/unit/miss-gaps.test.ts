/**
 * MissGaps (volumes/miss-gaps.ts): which chunks a miss brings along, from the misses before it.
 */
import { describe, expect, it } from 'vitest';
import { MissGaps } from '../../volumes/miss-gaps.js';

const KiB = 1024;
const CHUNK = 128 * KiB;

describe('MissGaps', () => {
  it('fills the chunks between two misses at most the gap apart, in either order', () => {
    const gaps = new MissGaps(CHUNK, 2048 * KiB); // 16 chunks
    expect(gaps.note(2332)).toEqual([]);
    expect(gaps.note(2346)).toEqual([2333, 2334, 2335, 2336, 2337, 2338, 2339, 2340, 2341, 2342, 2343, 2344, 2345]);
    const back = new MissGaps(CHUNK, 2048 * KiB);
    back.note(300);
    expect(back.note(296)).toEqual([297, 298, 299]);
  });

  it('adds nothing for misses next to each other, far apart, or with the fill off', () => {
    const gaps = new MissGaps(CHUNK, 2048 * KiB);
    gaps.note(10);
    expect(gaps.note(11)).toEqual([]); // adjacent: nothing between
    expect(gaps.note(28)).toEqual([]); // 17 chunks from 11: beyond the gap
    expect(gaps.note(28)).toEqual([]); // the same chunk again
    const off = new MissGaps(CHUNK, 0);
    off.note(10);
    expect(off.note(14)).toEqual([]);
  });

  it('measures a miss against the last four only', () => {
    const gaps = new MissGaps(CHUNK, 2048 * KiB);
    gaps.note(100);
    for (const far of [1000, 2000, 3000, 4000]) gaps.note(far); // 100 is now five misses back
    expect(gaps.note(104)).toEqual([]);
    expect(gaps.note(3003)).toEqual([3001, 3002]);
  });

  it('fills towards every recent miss in reach, each chunk once', () => {
    const gaps = new MissGaps(CHUNK, 2048 * KiB);
    gaps.note(50);
    gaps.note(60);
    expect(gaps.note(55)).toEqual([51, 52, 53, 54, 56, 57, 58, 59]);
  });
});
