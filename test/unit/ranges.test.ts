/** Cutting byte ranges into blocks, and slicing a payload that arrived in pieces. */
import { describe, expect, it } from 'vitest';
import { blockPieces, vectorLength, vectorSlice } from '../../block/ranges.js';

describe('ranges', () => {
  it('cuts a range into the blocks it touches', () => {
    expect(blockPieces(4000, 5000, 4096)).toEqual([
      { index: 0, at: 4000, length: 96, pos: 0 },
      { index: 1, at: 0, length: 4096, pos: 96 },
      { index: 2, at: 0, length: 808, pos: 4192 },
    ]);
  });

  it('slices a vector of pieces by position, as views of the same memory', () => {
    const whole = Buffer.from('abcdefghijklmnopqrstuvwxyz');
    const vector = [whole.subarray(0, 5), whole.subarray(5, 6), whole.subarray(6, 20), whole.subarray(20)];
    expect(vectorLength(vector)).toBe(26);
    for (let pos = 0; pos <= 26; pos++) {
      for (let len = 0; pos + len <= 26; len++) {
        expect(Buffer.concat(vectorSlice(vector, pos, len)).toString()).toBe(whole.toString().slice(pos, pos + len));
      }
    }
    const part = vectorSlice(vector, 3, 10);
    part[0]![0] = 0x44; // 'D'
    expect(whole.toString().slice(0, 5)).toBe('abcDe'); // a view, not a copy
    expect(() => vectorSlice(vector, 20, 7)).toThrow(RangeError);
  });
});
