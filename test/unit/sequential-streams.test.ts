/**
 * SequentialStreams (volumes/sequential-streams.ts): reads that continue where a stream ended
 * extend it, others start a new one, several streams at once, the stalest forgotten.
 */
import { describe, expect, it } from 'vitest';
import { SequentialStreams } from '../../volumes/sequential-streams.js';

const KiB = 1024;

describe('SequentialStreams', () => {
  it('follows interleaved streams by where each one ends', () => {
    const streams = new SequentialStreams();
    const a = streams.note(0, 256 * KiB);
    const b = streams.note(1024 * KiB, 256 * KiB);
    expect(b).not.toBe(a);
    expect(streams.note(256 * KiB, 256 * KiB)).toBe(a);
    expect(streams.note(1280 * KiB, 128 * KiB)).toBe(b);
    expect(streams.note(512 * KiB, 256 * KiB)).toBe(a);
    expect(a).toMatchObject({ next: 768 * KiB, run: 768 * KiB });
    expect(b).toMatchObject({ next: 1408 * KiB, run: 384 * KiB });
    const jump = streams.note(4096 * KiB, 4 * KiB); // not where any stream ended: a new one
    expect(jump).toMatchObject({ next: 4100 * KiB, run: 4 * KiB });
  });

  it('forgets the least recently continued stream beyond eight', () => {
    const streams = new SequentialStreams();
    const first = streams.note(0, KiB);
    for (let i = 1; i <= 7; i++) streams.note(i * 1024 * KiB, KiB);
    expect(streams.note(KiB, KiB)).toBe(first); // eight streams: still known, and now the freshest
    streams.note(100 * 1024 * KiB, KiB); // a ninth: the stream at 1 MiB, least recent, goes
    expect(streams.note(1024 * KiB + KiB, KiB).run).toBe(KiB);
    expect(streams.note(2 * KiB, KiB)).toBe(first);
  });
});
