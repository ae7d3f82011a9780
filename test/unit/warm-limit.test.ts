/**
 * Warming new containers' devices (LayerMounts.fillCache) is bounded: while MAX_FILLS warms are
 * still being asked for, a layer attached meanwhile starts without one; and it starts after a
 * Get's own first work on the tree (onMounted), whose reads would otherwise queue behind it.
 * Over fakes (an NBD session per device, tarfs), with devices whose warm waits on a gate.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BlockDevice, NbdTarget } from '../../attach/attacher.js';
import type { ByteRange } from '../../block/ranges.js';
import { MAX_FILLS } from '../../layers/layer-mounts.js';
import type { LayerStore } from '../../layers/layer-store.js';
import { startHost, type Host } from '../helpers/driver-conformance.js';
import { FakeAttacher, tarfs } from '../helpers/fake-layer-devices.js';
import { MemoryStore } from '../helpers/memory-store.js';
import { tempDir } from '../helpers/tmp.js';

class GatedAttacher extends FakeAttacher {
  readonly warmed: string[] = [];
  attached = 0;
  detached = 0;
  open!: () => void;
  gate = new Promise<void>((resolve) => (this.open = resolve));

  override async attach(target: NbdTarget, workDir: string, options: { readOnly: boolean }): Promise<BlockDevice> {
    const device = await super.attach(target, workDir, options);
    this.attached++;
    const fill = device.readIntoCache!.bind(device);
    const detach = device.detach.bind(device);
    return Object.assign(device, {
      detach: async () => {
        this.detached++;
        return detach();
      },
      readIntoCache: async (ranges: readonly ByteRange[]) => {
        this.warmed.push(target.exportName);
        await this.gate;
        return fill(ranges);
      },
    });
  }
}

describe('warming new layers', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let attacher: GatedAttacher;
  let host: Host;
  let layers: LayerStore;

  beforeEach(async () => {
    dir = await tempDir('slacker-warm-limit-');
    attacher = new GatedAttacher();
    host = await startHost(dir.path, new MemoryStore(), {
      attacher: () => attacher,
      filesystem: tarfs,
      store: () => new MemoryStore(),
    });
    layers = host.driver;
  });
  afterEach(async () => {
    attacher.open();
    await host?.close();
    await dir.cleanup();
  });

  /** An image whose last container read its file: the next container of it has a warm. */
  async function imageWithReads(): Promise<void> {
    await layers.create('img', undefined);
    await writeFile(join(await layers.get('img'), 'f'), 'x'.repeat(300_000));
    await layers.put('img');
    await layers.freeze('img');
    await layers.create('c0', 'img');
    expect(await readFile(join(await layers.get('c0'), 'f'), 'utf8')).toHaveLength(300_000);
    await layers.put('c0');
    await layers.remove('c0'); // its reads are what the next containers of img are warmed with
  }

  it(`warms at most ${MAX_FILLS} layers at once; the next one starts without`, async () => {
    await imageWithReads();

    const ids = ['c1', 'c2', 'c3'];
    for (const id of ids) {
      await layers.create(id, 'img');
      await layers.get(id);
    }
    expect(attacher.warmed).toEqual(ids.slice(0, MAX_FILLS));
    attacher.open();
    for (const id of ids) {
      await layers.put(id);
      await layers.remove(id); // waits for its warm
    }
    await layers.create('c4', 'img');
    await layers.get('c4');
    expect(attacher.warmed).toEqual([...ids.slice(0, MAX_FILLS), 'c4']);
    await layers.put('c4');
  });

  it("starts a layer's warm after the Get's own work on its tree, which sees the mounted tree", async () => {
    await imageWithReads();
    await layers.create('c1', 'img');
    const seen: { warmedBefore: number; file: number }[] = [];
    const dir = await layers.get('c1', {
      onMounted: async (d) => {
        seen.push({ warmedBefore: attacher.warmed.length, file: (await readFile(join(d, 'f'))).length });
      },
    });
    expect(seen).toEqual([{ warmedBefore: 0, file: 300_000 }]);
    expect(attacher.warmed).toEqual(['c1']);
    // A Get of a layer mounted already does not run it again.
    expect(await layers.get('c1', { onMounted: () => Promise.reject(new Error('ran twice')) })).toBe(dir);
    attacher.open();
    await layers.put('c1');
    await layers.put('c1');
  });

  it('a failing onMounted leaves the layer unmounted and detached, unwarmed, and the next Get starts afresh', async () => {
    await imageWithReads();
    await layers.create('c1', 'img');
    const before = { attached: attacher.attached, detached: attacher.detached };
    await expect(layers.get('c1', { onMounted: () => Promise.reject(new Error('copy failed')) })).rejects.toThrow(
      'copy failed',
    );
    expect(attacher.attached - before.attached).toBe(1);
    expect(attacher.detached - before.detached).toBe(1);
    expect(attacher.warmed).toEqual([]);
    expect(layers.mountedCount).toBe(0);
    attacher.open();
    expect(await readFile(join(await layers.get('c1'), 'f'))).toHaveLength(300_000);
    expect(attacher.warmed).toEqual(['c1']);
    await layers.put('c1');
  });
});
