/**
 * convert: an image on a slacker host becomes an image of ONE marker layer, so that pulling it
 * anywhere moves only metadata and its files are fetched on first read (compare nydusify,
 * `soci create`). The image's top layer already holds its complete file system (layers are
 * full snapshots), so its published snapshot is the whole image. The new image keeps the
 * source's config (env, cmd, entrypoint, workdir, ports, healthcheck, labels...).
 *
 * With a profile (a container of SRC, run on this host until it was ready), the snapshot also
 * carries the chunks that container read first, in order: hosts pulling DST fetch them at
 * once, in parallel, instead of one round trip per page fault (volumes/read-trace.ts).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, PluginCallError } from '../common/errors.js';
import type { RunResult } from '../common/exec.js';
import { pluginRequest } from './client.js';
import { digestOf } from '../common/digests.js';
import { imageArchive } from './image-archive.js';

/** The keys of an image config's `config` section (docker image inspect shows more). */
const IMAGE_CONFIG_KEYS = [
  'User',
  'ExposedPorts',
  'Env',
  'Entrypoint',
  'Cmd',
  'Volumes',
  'WorkingDir',
  'Labels',
  'StopSignal',
  'Healthcheck',
  'OnBuild',
  'Shell',
  'ArgsEscaped',
];

/** What `docker image inspect` and `docker container inspect` say that convert uses. */
export interface ImageInspect {
  Id: string;
  Architecture: string;
  Os: string;
  Config: Record<string, unknown> | null;
  GraphDriver: { Name: string; Data: Record<string, string> | null };
  RootFS: { Layers?: string[] };
}

export interface ContainerInspect {
  Id: string;
  Image: string;
  GraphDriver: { Data: Record<string, string> | null };
}

/**
 * Where the marker comes from: the slacker daemon that stores the image publishes its top
 * layer (with the startup profile of `profile`, a container of the image, if given). The
 * graphdriver front end answers on its plugin socket (graphdriverMarkers); a daemon serving
 * containerd answers on its control API (containerd/control-service.ts).
 */
export type MarkerSource = (
  image: ImageInspect,
  profile: ContainerInspect | undefined,
) => Promise<{ tar: Buffer; prefetch: number }>;

export interface ConvertOptions {
  src: string;
  dst: string;
  push: boolean;
  /** Runs the docker client against the slacker host's dockerd. */
  docker(args: string[]): Promise<RunResult>;
  markers: MarkerSource;
  /** A container of SRC (name or id) whose first reads become the startup profile. */
  profile?: string;
}

export interface ConvertResult {
  snapshotRef: string;
  diffId: string;
  layerBytes: number;
  /** Chunks in the startup profile (0 without one). */
  prefetchChunks: number;
}

export async function convert(o: ConvertOptions): Promise<ConvertResult> {
  const [image] = JSON.parse((await o.docker(['image', 'inspect', o.src])).stdout) as ImageInspect[];
  if (!image) throw new ConfigError(`no image ${o.src}`);
  let container: ContainerInspect | undefined;
  if (o.profile) {
    [container] = JSON.parse((await o.docker(['container', 'inspect', o.profile])).stdout) as ContainerInspect[];
    if (!container) throw new ConfigError(`no container ${o.profile}`);
    if (container.Image !== image.Id) {
      throw new ConfigError(
        `container ${o.profile} runs image ${container.Image}, not ${o.src} (${image.Id}): its reads profile another image`,
      );
    }
  }
  const { tar: marker, prefetch } = await o.markers(image, container);

  const config: Record<string, unknown> = {};
  for (const key of IMAGE_CONFIG_KEYS) if (image.Config?.[key] != null) config[key] = image.Config[key];
  const archive = await imageArchive([marker], o.dst, {
    architecture: image.Architecture,
    os: image.Os,
    config,
    history: [{ created: new Date().toISOString(), created_by: `slacker-ts convert ${o.src}` }],
  });
  const dir = await mkdtemp(join(tmpdir(), 'slacker-convert-'));
  try {
    await writeFile(join(dir, 'image.tar'), archive);
    await o.docker(['load', '-i', join(dir, 'image.tar')]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  if (o.push) await o.docker(['push', o.dst]);
  const ref = /SLACKER\.snapshot=(sha256:[0-9a-f]{64})/.exec(marker.toString('latin1'))?.[1] ?? '';
  return { snapshotRef: ref, diffId: digestOf(marker), layerBytes: marker.length, prefetchChunks: prefetch };
}

/** Markers from a graphdriver plugin (its socket, /run/docker/plugins/NAME.sock). */
export function graphdriverMarkers(pluginSocket: string): MarkerSource {
  return async (image, profile) => {
    const layer = image.GraphDriver.Data?.VolumeId;
    if (!layer) {
      throw new ConfigError(
        `the image is not stored by a slacker graphdriver (storage driver ${image.GraphDriver.Name}): convert runs ` +
          'on a slacker host; docker load or pull the image there first (on the containerd image store: ' +
          '--containerd-socket)',
      );
    }
    let diff;
    if (profile) {
      const from = profile.GraphDriver.Data?.VolumeId;
      if (!from) throw new ConfigError(`container ${profile.Id} is not stored by a slacker driver: no profile`);
      diff = await pluginRequest(pluginSocket, 'Slacker.Diff', { ID: layer, ProfileFrom: from });
    } else diff = await pluginRequest(pluginSocket, 'GraphDriver.Diff', { ID: layer });
    if (diff.status !== 200) throw new PluginCallError(`Diff of ${layer}: ${diff.body.toString()}`);
    return { tar: diff.body, prefetch: Number(diff.headers['x-slacker-prefetch-chunks'] ?? 0) };
  };
}
