/**
 * Warming new containers' devices (LayerMounts.fillCache) is bounded: while MAX_FILLS warms are
 * still being asked for, a layer attached meanwhile starts without one. Over fakes (an NBD
 * session per device, tarfs), with devices whose warm waits on a gate.
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
  open!: () => void;
  gate = new Promise<void>((resolve) => (this.open = resolve));

  override async attach(target: NbdTarget, workDir: string, options: { readOnly: boolean }): Promise<BlockDevice> {
    const device = await super.attach(target, workDir, options);
    const fill = device.readIntoCache!.bind(device);
    return Object.assign(device, {
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

  it(`warms at most ${MAX_FILLS} layers at once; the next one starts without`, async () => {
    await layers.create('img', undefined);
    await writeFile(join(await layers.get('img'), 'f'), 'x'.repeat(300_000));
    await layers.put('img');
    await layers.freeze('img');
    await layers.create('c0', 'img');
    expect(await readFile(join(await layers.get('c0'), 'f'), 'utf8')).toHaveLength(300_000);
    await layers.put('c0');
    await layers.remove('c0'); // its reads are what the next containers of img are warmed with

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
});
