/**
 * Scratch directories of container init layers (STATE_ROOT/init-layers/LAYER): where an engine
 * writes its init files instead of into a block device of their own. Both front ends serve
 * Docker's init layers so (plugin/init-layers.ts, containerd/snapshotter.ts); this is where
 * they keep them.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

export class InitScratches {
  readonly dir: string;

  constructor(root: string) {
    this.dir = join(root, 'init-layers');
  }

  pathOf(layer: string): string {
    return join(this.dir, layer);
  }

  /** Whether the layer is served as its scratch directory. */
  has(layer: string): boolean {
    return existsSync(this.pathOf(layer));
  }

  /** A new, empty scratch for the layer (the directory above it is the daemon's alone). */
  async make(layer: string): Promise<string> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await mkdir(this.pathOf(layer), { mode: 0o755 });
    return this.pathOf(layer);
  }

  remove(layer: string): Promise<void> {
    return rm(this.pathOf(layer), { recursive: true, force: true });
  }
}
