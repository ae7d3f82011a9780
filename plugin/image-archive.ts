/**
 * `docker load` archives (the docker-save format: manifest.json, an image config, one
 * layer.tar per layer) built from layer tars held in memory: how `convert` hands dockerd an
 * image made of one marker layer, and how tests make layers dockerd would never make.
 */
import { digestOf, hexOf } from '../common/digests.js';
import { pack } from 'tar-stream';

export interface TarEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  data?: string | Buffer;
  linkname?: string;
  mode?: number;
}

/** A small tar made of the given entries (mtime 0, root-owned). */
export async function tarOf(entries: TarEntry[]): Promise<Buffer> {
  const p = pack();
  for (const e of entries) {
    p.entry(
      {
        name: e.name,
        type: e.type ?? 'file',
        linkname: e.linkname,
        mode: e.mode ?? (e.type === 'directory' ? 0o755 : 0o644),
        mtime: new Date(0),
      },
      e.data === undefined ? Buffer.alloc(0) : Buffer.from(e.data),
    );
  }
  p.finalize();
  const parts: Buffer[] = [];
  for await (const b of p) parts.push(b as Buffer);
  return Buffer.concat(parts);
}

export interface ImageConfigBase {
  architecture?: string;
  os?: string;
  /** The container config (Env, Cmd, Entrypoint, WorkingDir, ExposedPorts, Healthcheck, Labels...). */
  config?: Record<string, unknown>;
  history?: { created: string; created_by: string; comment?: string }[];
}

/** A `docker load` archive of an image made of `layers` (uncompressed layer tars), tagged `tag`. */
export async function imageArchive(layers: Buffer[], tag: string, base: ImageConfigBase = {}): Promise<Buffer> {
  const config = Buffer.from(
    JSON.stringify({
      architecture: base.architecture ?? 'amd64',
      os: base.os ?? 'linux',
      config: base.config ?? {},
      rootfs: { type: 'layers', diff_ids: layers.map((l) => digestOf(l)) },
      history: base.history ?? layers.map(() => ({ created: new Date(0).toISOString(), created_by: 'slacker-ts' })),
    }),
  );
  const configName = `${hexOf(digestOf(config))}.json`;
  const layerNames = layers.map((l) => `${hexOf(digestOf(l))}/layer.tar`);
  const manifest = Buffer.from(JSON.stringify([{ Config: configName, RepoTags: [tag], Layers: layerNames }]));
  return tarOf([
    { name: 'manifest.json', data: manifest },
    { name: configName, data: config },
    ...layers.flatMap((l, i) => [
      { name: `${hexOf(digestOf(l))}/`, type: 'directory' as const },
      { name: layerNames[i]!, data: l },
    ]),
  ]);
}
