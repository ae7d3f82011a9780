/**
 * The oci:// backing store against a real registry (Debian's docker-registry on loopback):
 * publish on one host, open on another, lazy verified reads through HTTP Range requests (a long
 * sequential reader's pack fetched ahead), tampering, an outage, and Basic auth from the URL or
 * Docker's config.json.
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { IoError } from '../../common/errors.js';
import { OciStore, parseOciUrl } from '../../stores/oci-store.js';
import { MEDIA, Registry } from '../../stores/registry.js';
import { openStore } from '../../stores/open-store.js';
import { decodeManifest } from '../../volumes/manifest.js';
import { VolumeManager } from '../../volumes/manager.js';
import { digestOf, type Digest } from '../../common/digests.js';
import { startRegistry, type TestRegistry } from '../../harness/registry.js';
import { randomBytes, tempDir } from '../helpers/tmp.js';
import { publishVolume } from '../helpers/volumes.js';

const CHUNK = 64 * 1024;
const MiB = 1024 * 1024;
const chunkData = (i: number): Buffer => randomBytes(CHUNK, 2000 + i);

describe('parseOciUrl', () => {
  it('uses HTTP for loopback, HTTPS elsewhere, and reads credentials', () => {
    expect(parseOciUrl('oci://127.0.0.1:5000/a/b')).toMatchObject({ base: 'http://127.0.0.1:5000', repository: 'a/b' });
    expect(parseOciUrl('oci://registry.example:443/x')).toMatchObject({ base: 'https://registry.example:443' });
    expect(parseOciUrl('oci+http://10.0.0.1:5000/x').base).toBe('http://10.0.0.1:5000');
    expect(parseOciUrl('oci://u:p%40ss@localhost:5000/x').credentials).toEqual({ username: 'u', password: 'p@ss' });
    expect(() => parseOciUrl('oci://host')).toThrow(/want oci:\/\/host/);
    expect(() => parseOciUrl('oci://host/UPPER')).toThrow(/bad repository/);
  });
});

describe('oci:// store on a real registry', () => {
  let registry: TestRegistry;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let hostA: VolumeManager;
  let hostB: VolumeManager;

  beforeAll(async () => {
    registry = await startRegistry();
  });
  afterAll(async () => {
    await registry?.close();
  });
  beforeEach(async () => {
    dir = await tempDir('slacker-oci-');
    const url = registry.url(`slacker/t${Date.now()}`);
    hostA = await VolumeManager.open(join(dir.path, 'a'), { store: openStore(url) });
    hostB = await VolumeManager.open(join(dir.path, 'b'), {
      store: openStore(url),
      readahead: 0,
      fetchPolicy: { deadlineMs: 800, initialBackoffMs: 50, maxBackoffMs: 200 },
    });
  });
  afterEach(async () => {
    await hostA.close();
    await hostB.close();
    await dir.cleanup();
  });

  const published = (id: string, chunks: number[]): Promise<Digest> =>
    publishVolume(hostA, id, chunks, { size: 16 * MiB, chunkSize: CHUNK, data: chunkData });

  it('publishes packs and opens the snapshot elsewhere, reading chunks lazily by range', async () => {
    const ref = await published('img', [0, 3, 7, 200]);
    await hostB.openSnapshot(ref, 'img-b');
    const v = await hostB.acquire('img-b');
    expect((await v.pread(CHUNK, 7 * CHUNK)).equals(chunkData(7))).toBe(true);
    expect((await v.pread(10, 200 * CHUNK + 5)).equals(chunkData(200).subarray(5, 15))).toBe(true);
    expect(hostB.stats('img-b').fetch).toMatchObject({ chunksFetched: 2, bytesFetched: 2 * CHUNK });
    await hostB.release('img-b');
    // A clone publishes only its new chunk: one more small pack.
    await hostA.clone('img', 'app');
    const w = await hostA.acquire('app');
    await w.pwrite!(chunkData(9), 9 * CHUNK, { fua: false });
    await hostA.release('app');
    await hostA.freeze('app');
    const appRef = await hostA.publish('app');
    // Snapshots are per repository: another repository does not have it.
    await expect(new OciStore(registry.url('other/repo')).getManifest(ref)).rejects.toThrow(/404/);
    await hostB.openSnapshot(appRef, 'app-b');
    const a = await hostB.acquire('app-b');
    expect((await a.pread(CHUNK, 9 * CHUNK)).equals(chunkData(9))).toBe(true);
    expect((await a.pread(CHUNK, 3 * CHUNK)).equals(chunkData(3))).toBe(true);
    await hostB.release('app-b');
  });

  it("asks each pack's size once: later publishes name the same packs without asking the registry again", async () => {
    const ref = await published('img', [0, 3, 7, 200]);
    await hostB.openSnapshot(ref, 'img-b');
    const sizes = vi.spyOn(Registry.prototype, 'blobSize');
    try {
      const publishClone = async (id: string, chunk: number) => {
        await hostB.clone('img-b', id);
        const w = await hostB.acquire(id);
        await w.pwrite!(chunkData(chunk), chunk * CHUNK, { fua: false });
        await hostB.release(id);
        await hostB.freeze(id);
        return hostB.publish(id);
      };
      const first = await publishClone('c1', 9);
      expect(sizes).toHaveBeenCalledTimes(1); // the image's pack; the clone's own was just put
      const second = await publishClone('c2', 10);
      expect(sizes).toHaveBeenCalledTimes(1);
      // Both manifests describe every pack with its true size.
      const registryOf = new Registry({ ...parseOciUrl(hostB.store!.url), label: 'test' });
      for (const snapshot of [first, second]) {
        const { body } = await registryOf.getManifest(snapshot.replace(':', '-'), [MEDIA.ociManifest]);
        const layers = (JSON.parse(body.toString()) as { layers: { digest: Digest; size: number }[] }).layers;
        expect(layers).toHaveLength(2);
        for (const l of layers) expect(l.size).toBe((await registryOf.getBlob(l.digest)).length);
      }
      registryOf.close();
    } finally {
      sizes.mockRestore();
    }
  });

  it("uploads a publish's last pack and its manifest's blob together, and names the manifest only once both are in", async () => {
    const events: string[] = [];
    const putBlob = Registry.prototype.putBlob;
    const putManifest = Registry.prototype.putManifest;
    const blobs = vi.spyOn(Registry.prototype, 'putBlob').mockImplementation(async function (this: Registry, d, data) {
      events.push(`start ${d}`);
      await new Promise((r) => setTimeout(r, 50)); // each upload long enough to see them overlap
      const put = await putBlob.call(this, d, data);
      events.push(`end ${d}`);
      return put;
    });
    const tags = vi.spyOn(Registry.prototype, 'putManifest').mockImplementation(async function (
      this: Registry,
      reference,
      body,
      mediaType,
    ) {
      events.push(`tag ${reference}`);
      return putManifest.call(this, reference, body, mediaType);
    });
    try {
      const ref = await published('img', [0, 3, 7]);
      const pack = events.find((e) => e.startsWith('start') && !e.endsWith(ref))!.slice('start '.length);
      expect(events.slice(0, 2).sort()).toEqual([`start ${pack}`, `start ${ref}`].sort()); // together
      expect(events.at(-1)).toBe(`tag ${ref.replace(':', '-')}`); // after both ended
      expect(events.filter((e) => e.startsWith('end'))).toHaveLength(2);
    } finally {
      blobs.mockRestore();
      tags.mockRestore();
    }
  });

  it('a pack that fails to upload fails its publish: no manifest named, nothing recorded as stored, and a retry uploads it', async () => {
    const putBlob = Registry.prototype.putBlob;
    const packs: string[] = [];
    const failing = vi.spyOn(Registry.prototype, 'putBlob').mockImplementation(async function (
      this: Registry,
      d,
      data,
    ) {
      // The pack holds the three chunks (random: stored raw); the manifest's blob is far smaller.
      if (data.length >= 3 * CHUNK) {
        packs.push(d);
        throw new IoError('registry refused the pack');
      }
      return putBlob.call(this, d, data);
    });
    const tags = vi.spyOn(Registry.prototype, 'putManifest');
    try {
      await expect(published('img', [0, 3, 7])).rejects.toThrow(/refused the pack/);
      expect(packs).toHaveLength(1);
      expect(tags).not.toHaveBeenCalled();
    } finally {
      failing.mockRestore();
      tags.mockRestore();
    }
    const ref = await hostA.publish('img'); // frozen by the failed attempt; its chunks go up now
    await hostB.openSnapshot(ref, 'img-b');
    const v = await hostB.acquire('img-b');
    expect((await v.pread(CHUNK, 3 * CHUNK)).equals(chunkData(3))).toBe(true);
    await hostB.release('img-b');
  });

  it('fetches the rest of its pack for a long sequential reader, and nothing more for a short one', async () => {
    const ref = await published('img', [...Array(48).keys()]); // one pack of 48 chunks (3 MiB)
    await hostB.openSnapshot(ref, 'img-b');
    const v = await hostB.acquire('img-b');
    const fetched = (): number => hostB.stats('img-b').fetch.chunksFetched;
    const READ = 256 * 1024;
    for (let i = 0; i < 3; i++) await v.localize!(i * READ, READ);
    await new Promise((r) => setTimeout(r, 100));
    expect(fetched()).toBe(12); // 768 KiB in a row: only what it read
    await v.localize!(3 * READ, READ); // 1 MiB in a row: the rest of the pack is fetched ahead
    await expect.poll(fetched).toBe(48);
    await hostB.release('img-b');
  });

  it('packs chunks in volume order, whatever order they were written in', async () => {
    // Written last to first, 3 packs' worth: freeze hashes them in that order.
    const chunks = [...Array(150).keys()].reverse();
    const ref = await published('img', chunks);
    const m = decodeManifest(ref, await hostA.store!.getManifest(ref));
    const at = (idx: number) => m.hints.get(m.chunks.get(idx)!)!.split(':');
    const packs: string[] = [];
    for (let idx = 0; idx < 150; idx++) {
      const [, pack, offset] = at(idx);
      if (packs[packs.length - 1] !== pack) packs.push(pack!);
      // Each chunk follows the one before it in its pack: a sequential reader wants whole packs.
      if (idx > 0 && at(idx - 1)[1] === pack) expect(Number(offset)).toBeGreaterThan(Number(at(idx - 1)[2]));
    }
    expect(packs).toHaveLength(3); // each pack a run of the volume, entered once
  });

  it('packs a startup profile on its own, in profile order, so it is fetched in one range', async () => {
    await published('img', [0, 3, 7, 200]);
    const ref = await hostA.publish('img', { prefetch: [200, 0, 7] });
    const m = decodeManifest(ref, await hostA.store!.getManifest(ref));
    expect(m.prefetch).toEqual([200, 0, 7]);
    const at = (idx: number) => m.hints.get(m.chunks.get(idx)!)!.split(':');
    const [hot200, hot0, hot7, cold3] = [at(200), at(0), at(7), at(3)];
    expect(hot200[1]).toBe(hot0[1]); // one pack ...
    expect(hot0[1]).toBe(hot7[1]);
    expect(hot200[1]).not.toBe(cold3[1]); // ... of its own
    expect([Number(hot200[2]), Number(hot0[2]), Number(hot7[2])]).toEqual(
      [Number(hot200[2]), Number(hot0[2]), Number(hot7[2])].sort((a, b) => a - b),
    ); // in profile order
    await hostB.openSnapshot(ref, 'img-b');
    const deadline = Date.now() + 5_000;
    while (hostB.stats('img-b').fetch.chunksFetched < 3 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(hostB.stats('img-b').fetch.chunksFetched).toBe(3);
    const v = await hostB.acquire('img-b');
    expect((await v.pread(CHUNK, 200 * CHUNK)).equals(chunkData(200))).toBe(true);
    expect((await v.pread(CHUNK, 3 * CHUNK)).equals(chunkData(3))).toBe(true); // from the original pack
    await hostB.release('img-b');
  });

  it('refuses a tampered pack with EIO and never returns its bytes', async () => {
    const ref = await published('img', [1]);
    const blobs = join(registry.storage, 'docker/registry/v2/blobs/sha256');
    // The pack is the blob holding exactly the chunk's bytes.
    for (const prefix of await readdir(blobs)) {
      for (const hex of await readdir(join(blobs, prefix))) {
        const path = join(blobs, prefix, hex, 'data');
        const data = await readFile(path);
        if (data.equals(chunkData(1))) {
          data[7]! ^= 0x01;
          await writeFile(path, data);
        }
      }
    }
    await hostB.openSnapshot(ref, 'img-b');
    const v = await hostB.acquire('img-b');
    const err = await v.pread(CHUNK, CHUNK).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IoError);
    expect((err as Error).message).toMatch(/failed verification/);
    await hostB.release('img-b');
  });

  it('fails reads with EIO in bounded time while the registry is down, and recovers', async () => {
    const ref = await published('img', [2]);
    await hostB.openSnapshot(ref, 'img-b');
    const v = await hostB.acquire('img-b');
    await registry.stop();
    try {
      const t0 = Date.now();
      await expect(v.pread(16, 2 * CHUNK)).rejects.toThrow(/did not deliver chunk/);
      expect(Date.now() - t0).toBeLessThan(4000);
    } finally {
      await registry.start();
    }
    expect((await v.pread(16, 2 * CHUNK)).equals(chunkData(2).subarray(0, 16))).toBe(true);
    await hostB.release('img-b');
  });
});

describe('oci:// store chunk compression', () => {
  let registry: TestRegistry;
  beforeAll(async () => {
    registry = await startRegistry();
  });
  afterAll(async () => {
    await registry?.close();
  });
  const text = (i: number): Buffer =>
    Buffer.from(`line ${i}: the quick brown fox jumps over the lazy dog\n`.repeat(4000));

  it('stores compressible chunks brotli-compressed and reads back exactly the original', async () => {
    const store = new OciStore(registry.url('z/compressed'));
    const chunks = [0, 1, 2].map((i) => ({ data: text(i), digest: digestOf(text(i)) }));
    const random = { data: randomBytes(100_000, 7), digest: digestOf(randomBytes(100_000, 7)) };
    const hints = await store.putChunks([...chunks, random]);
    for (const c of chunks) expect(hints.get(c.digest)).toMatch(/:br$/);
    expect(hints.get(random.digest)).not.toMatch(/:br$/); // incompressible: stored as it is
    const pack = hints.get(chunks[0]!.digest)!.split(':').slice(0, 2).join(':') as Digest;
    const head = await fetch(`http://${registry.host}:${registry.port}/v2/z/compressed/blobs/${pack}`, {
      method: 'HEAD',
    });
    const raw = chunks.reduce((n, c) => n + c.data.length, 0) + random.data.length;
    expect(Number(head.headers.get('content-length'))).toBeLessThan(raw / 2);
    const got = await store.getChunks(
      [...chunks, random].map((c) => ({ digest: c.digest, hint: hints.get(c.digest)! })),
    );
    got.forEach((g, i) => expect(g.equals([...chunks, random][i]!.data)).toBe(true));
  });

  it('stores a chunk raw when compressing saves too little to pay for decoding it', async () => {
    const store = new OciStore(registry.url('z/marginal'));
    // A quarter zeros, the rest random: brotli gets it to about 0.76 of its size.
    const data = Buffer.concat([Buffer.alloc(32 * 1024), randomBytes(96 * 1024, 11)]);
    const hints = await store.putChunks([{ data, digest: digestOf(data) }]);
    expect(hints.get(digestOf(data))).not.toMatch(/:br$/);
    const [got] = await store.getChunks([{ digest: digestOf(data), hint: hints.get(digestOf(data))! }]);
    expect(got!.equals(data)).toBe(true);
  });

  it('stores chunks raw when compression is off', async () => {
    const store = new OciStore(registry.url('z/raw'), { compression: 'none' });
    const data = text(5);
    const hints = await store.putChunks([{ data, digest: digestOf(data) }]);
    expect(hints.get(digestOf(data))).not.toMatch(/:br$/);
  });

  it('counts the chunks of a pack the registry already has as skipped, and uploads nothing again', async () => {
    const store = new OciStore(registry.url('z/again'));
    const chunks = [6, 7].map((i) => ({ data: text(i), digest: digestOf(text(i)) }));
    const first = { skipped: 0 };
    const hints = await store.putChunks(chunks, first);
    const second = { skipped: 0 };
    expect(await store.putChunks(chunks, second)).toEqual(hints); // the same pack, where it was
    expect([first.skipped, second.skipped]).toEqual([0, 2]);
  });

  it('refuses a tampered compressed chunk at once, as a verification failure', async () => {
    const dir = await tempDir('slacker-oci-z-');
    const url = registry.url('z/tamper');
    const a = await VolumeManager.open(join(dir.path, 'a'), { store: openStore(url) });
    const b = await VolumeManager.open(join(dir.path, 'b'), {
      store: openStore(url),
      fetchPolicy: { deadlineMs: 5000, initialBackoffMs: 1000, maxBackoffMs: 1000 },
    });
    try {
      await a.create('v', 4 * MiB, { chunkSize: CHUNK });
      const w = await a.acquire('v');
      await w.pwrite!(text(9).subarray(0, CHUNK), 0, { fua: false });
      await a.release('v');
      await a.freeze('v');
      const ref = await a.publish('v');
      // Corrupt every blob that is not the manifest: the compressed pack.
      const blobs = join(registry.storage, 'docker/registry/v2/blobs/sha256');
      for (const prefix of await readdir(blobs)) {
        for (const hex of await readdir(join(blobs, prefix))) {
          const path = join(blobs, prefix, hex, 'data');
          const bytes = await readFile(path);
          if (bytes[0] !== 0x7b /* '{' */) {
            bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
            await writeFile(path, bytes);
          }
        }
      }
      await b.openSnapshot(ref, 'v');
      const v = await b.acquire('v');
      const t0 = Date.now();
      await expect(v.pread(16, 0)).rejects.toThrow(/failed verification/);
      expect(Date.now() - t0).toBeLessThan(1000); // not retried like a store outage
      await b.release('v');
    } finally {
      await a.close();
      await b.close();
      await dir.cleanup();
    }
  });
});

describe('oci:// store with Basic auth', () => {
  const user = { username: 'slacker', password: 's3cret:pw' };
  let registry: TestRegistry;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    registry = await startRegistry({ user });
    dir = await tempDir('slacker-oci-auth-');
  });
  afterAll(async () => {
    await registry?.close();
    await dir?.cleanup();
  });

  const roundTrip = async (store: OciStore): Promise<void> => {
    const data = randomBytes(5000, 1);
    const digest = digestOf(data);
    const hints = await store.putChunks([{ digest, data }]);
    const [got] = await store.getChunks([{ digest, hint: hints.get(digest)! }]);
    expect(got!.equals(data)).toBe(true);
  };

  it('says clearly that credentials are missing', async () => {
    const anonymous = new OciStore(registry.url('auth/test'), { dockerConfig: join(dir.path, 'none.json') });
    await expect(roundTrip(anonymous)).rejects.toThrow(/wants credentials and none are configured/);
  });

  it('authenticates with credentials from the URL', async () => {
    await roundTrip(new OciStore(registry.url('auth/test', user)));
  });

  it('authenticates with credentials from Docker config.json', async () => {
    const config = join(dir.path, 'config.json');
    const auth = Buffer.from(`${user.username}:${user.password}`).toString('base64');
    await writeFile(config, JSON.stringify({ auths: { [`127.0.0.1:${registry.port}`]: { auth } } }));
    await roundTrip(new OciStore(registry.url('auth/test'), { dockerConfig: config }));
  });

  it('reports wrong credentials as an I/O error with the status', async () => {
    const wrong = new OciStore(registry.url('auth/test', { username: 'slacker', password: 'nope' }));
    await expect(roundTrip(wrong)).rejects.toThrow(/401/);
  });
});

describe('oci:// store with Bearer token auth', () => {
  const user = { username: 'slacker', password: 'token-pw' };
  let registry: TestRegistry;
  beforeAll(async () => {
    registry = await startRegistry({ user, token: true });
  });
  afterAll(async () => {
    await registry?.close();
  });

  it("answers the registry's Bearer challenge with a token from its token server", async () => {
    const data = randomBytes(7000, 3);
    const digest = digestOf(data);
    const store = new OciStore(registry.url('bearer/test', user));
    const hints = await store.putChunks([{ digest, data }]);
    const [got] = await store.getChunks([{ digest, hint: hints.get(digest)! }]);
    expect(got!.equals(data)).toBe(true);
    const ref = await store.putManifest(Buffer.from('{"schema":"x"}'));
    expect((await store.getManifest(ref)).toString()).toBe('{"schema":"x"}');
  });

  it('fails clearly when the token server refuses the credentials', async () => {
    const store = new OciStore(registry.url('bearer/test', { username: 'slacker', password: 'wrong' }));
    await expect(store.getManifest(('sha256:' + '1'.repeat(64)) as Digest)).rejects.toThrow(
      /token request .* failed: 401/,
    );
  });
});
