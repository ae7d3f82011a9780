/**
 * The snapshot manifest's encoding (volumes/manifest.ts): v2 round-trips, is deterministic and
 * names each hint's shared beginning once; v1, which earlier versions published, still decodes;
 * malformed input is refused with a reason.
 */
import { describe, expect, it } from 'vitest';
import { digestOf, type Digest } from '../../common/digests.js';
import {
  decodeManifest,
  encodeManifest,
  MANIFEST_SCHEMA,
  MANIFEST_SCHEMA_V1,
  type Manifest,
} from '../../volumes/manifest.js';

const CHUNK = 128 * 1024;
const digest = (i: number): Digest => digestOf(Buffer.from(`chunk ${i}`));
const hex = (d: Digest): string => d.slice('sha256:'.length);
const pack = (p: number): string => digestOf(Buffer.from(`pack ${p}`));

/** A build step's snapshot as a packed store publishes it: 2,760 chunks in 46 packs. */
function buildStep(): Manifest {
  const chunks = new Map<number, Digest>();
  const hints = new Map<Digest, string>();
  for (let i = 0; i < 2760; i++) {
    chunks.set(i * 3, digest(i));
    hints.set(digest(i), `${pack(i % 46)}:${(i * 81_000) % 9_000_000}:${60_000 + (i % 9000)}${i % 5 ? ':br' : ''}`);
  }
  return { size: 2760 * 3 * CHUNK, chunkSize: CHUNK, chunks, hints, prefetch: [30, 0, 3] };
}

const decoded = (bytes: Buffer): Manifest => decodeManifest(digestOf(bytes), bytes);
const json = (o: object): Buffer => Buffer.from(JSON.stringify(o));

describe('snapshot manifest', () => {
  it('v2 round-trips chunks, holes, hints (some chunks without), and the prefetch list', () => {
    const m = buildStep();
    m.hints.delete(digest(7)); // a chunk without a hint
    m.hints.set(digest(8), 'elsewhere'); // a hint of another shape
    const back = decoded(encodeManifest(m));
    expect(back.size).toBe(m.size);
    expect(back.chunkSize).toBe(CHUNK);
    expect(back.chunks).toEqual(m.chunks);
    expect(back.hints).toEqual(m.hints);
    expect(back.prefetch).toEqual([30, 0, 3]);
    expect(back.hints.has(digest(7))).toBe(false);
    const noProfile = decoded(encodeManifest({ ...m, prefetch: [] }));
    expect(noProfile.prefetch).toBeUndefined();
  });

  it('is deterministic, whatever the order of the maps, and names each pack once', () => {
    const m = buildStep();
    const shuffled: Manifest = {
      ...m,
      chunks: new Map([...m.chunks].reverse()),
      hints: new Map([...m.hints].reverse()),
    };
    const bytes = encodeManifest(m);
    expect(encodeManifest(shuffled).equals(bytes)).toBe(true);
    const o = JSON.parse(bytes.toString()) as { schema: string; hintPrefixes: string[] };
    expect(o.schema).toBe(MANIFEST_SCHEMA);
    expect(o.hintPrefixes).toHaveLength(46);
    expect(bytes.toString().split(hex(digestOf(Buffer.from('pack 5')))).length - 1).toBe(1);
    // v1 spelled every digest and hint out: ~245 bytes a chunk; v2 well under half of that.
    const v1 = json({
      schema: MANIFEST_SCHEMA_V1,
      size: m.size,
      chunkSize: CHUNK,
      chunks: [...m.chunks],
      hints: Object.fromEntries(m.hints),
    });
    expect(bytes.length).toBeLessThan(0.45 * v1.length);
    expect(bytes.length / m.chunks.size).toBeLessThan(110);
  });

  it('still reads v1', () => {
    const bytes = json({
      schema: MANIFEST_SCHEMA_V1,
      size: 4 * CHUNK,
      chunkSize: CHUNK,
      chunks: [
        [1, digest(1)],
        [3, digest(3)],
      ],
      hints: { [digest(1)]: `${pack(0)}:0:100` },
      prefetch: [3],
    });
    const m = decoded(bytes);
    expect(m.chunks).toEqual(
      new Map([
        [1, digest(1)],
        [3, digest(3)],
      ]),
    );
    expect(m.hints).toEqual(new Map([[digest(1), `${pack(0)}:0:100`]]));
    expect(m.prefetch).toEqual([3]);
  });

  it('refuses what is malformed, saying what', () => {
    const base = { schema: MANIFEST_SCHEMA, size: 4 * CHUNK, chunkSize: CHUNK, hintPrefixes: ['p'] };
    const entry = (idx: unknown, d: unknown = hex(digest(1)), no: unknown = -1, rest: unknown = '') => [
      idx,
      d,
      no,
      rest,
    ];
    const cases: [object, RegExp][] = [
      [{ ...base, chunks: [entry(4)] }, /chunk index 4 out of range/],
      [{ ...base, chunks: [entry(2), entry(1)] }, /chunk 1 out of order or twice/],
      [{ ...base, chunks: [entry(1), entry(1)] }, /chunk 1 out of order or twice/],
      [{ ...base, chunks: [entry(1, 'sha256:' + hex(digest(1)))] }, /bad digest/],
      [{ ...base, chunks: [entry(1, 'XYZ')] }, /bad digest/],
      [{ ...base, chunks: [entry(1, undefined, 1, ':1')] }, /names no hint prefix 1/],
      [{ ...base, chunks: [entry(1, undefined, -1, ':1')] }, /bad hint of chunk 1/],
      [{ ...base, chunks: [entry(1, undefined, 0, 'x'.repeat(2000))] }, /bad hint of chunk 1/],
      [{ ...base, chunks: [entry(1, undefined, 0, ':1'), entry(2, undefined, 0, ':2')] }, /two hints for/],
      [{ ...base, chunks: [[1, hex(digest(1))]] }, /bad chunk entry/],
      [{ ...base, hintPrefixes: [3], chunks: [] }, /hintPrefixes is not a list of strings/],
      [{ ...base, chunks: {} }, /chunks is not a list/],
      [{ ...base, schema: 'slacker.snapshot.v9', chunks: [] }, /unknown schema/],
      [{ ...base, size: -1, chunks: [] }, /bad size/],
      [{ ...base, chunks: [entry(1)], prefetch: [2] }, /prefetch names chunk 2/],
    ];
    for (const [o, why] of cases) expect(() => decoded(json(o)), why.source).toThrow(why);
    const ok = json({ ...base, chunks: [entry(1, undefined, 0, ':1')] });
    expect(() => decodeManifest(digest(9), ok)).toThrow(/does not match the reference/);
    expect(() => decoded(Buffer.from('{'))).toThrow(/not JSON/);
    expect(decoded(ok).hints.get(digest(1))).toBe('p:1');
  });
});
