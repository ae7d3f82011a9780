/**
 * `slacker-ts convert SRC DST`: see plugin/convert.ts. The marker comes from the graphdriver
 * plugin (--name) or, for a Docker on the containerd image store, from the containerd front
 * end's control API (--containerd-socket). With --store, SRC and DST are images in registries
 * and no dockerd is involved (convert/registry-convert.ts).
 */
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { chainIdOf, isDigest, type Digest } from '../common/digests.js';
import { ConfigError, NotSupportedError } from '../common/errors.js';
import { createLogger } from '../common/logger.js';
import { parseSize } from '../common/units.js';
import { parsePlatform, type Platform } from '../convert/image-ref.js';
import { convertFromRegistry } from '../convert/registry-convert.js';
import { run } from '../common/exec.js';
import { ControlClient } from '../containerd/control-service.js';
import { convert, graphdriverMarkers, type MarkerSource } from '../plugin/convert.js';

export const CONVERT_HELP = `usage: slacker-ts convert SRC DST [options]
       slacker-ts convert REGISTRY/REPO:TAG REGISTRY/REPO:NEWTAG --store URL [options]

Turns image SRC, present on this slacker host, into image DST made of a single marker layer:
pulling DST on another slacker host sharing the backing store moves only metadata, and its files
are fetched on first read. DST keeps SRC's config (env, cmd, entrypoint, workdir, exposed ports,
healthcheck, labels). Prints the snapshot reference and the layer's DiffID.

options:
  --push              docker push DST afterwards (DST names a registry: HOST:PORT/REPO:TAG)
  --profile CONTAINER a container of SRC, run on this host until ready (it may have exited):
                      the chunks it read first become DST's startup profile, fetched at once
                      and in parallel by every host that pulls DST
  --name NAME         the plugin's name (default slacker)
  --socket-dir DIR    where its socket is (default /run/docker/plugins)
  --containerd-socket PATH
                      for a Docker on the containerd image store: the socket slacker-ts
                      serve --containerd-socket listens on (instead of --name)
  --namespace NS      the containerd namespace of the images (default moby, Docker's)
  --host URI          dockerd to talk to (default $DOCKER_HOST or the docker client's default)
  --docker-bin PATH   docker client to run (default docker)

from a registry, without dockerd (--store given): SRC's layers are read straight from its
registry (a manifest list: the --platform image), applied in order and verified against their
digests; the snapshot's chunks go to the store, and DST is pushed to its registry. Registry
credentials come from Docker's config.json. Runs as root (it mounts the layers it builds).
  --store URL         the backing store of the slacker hosts that will pull DST (dir://, oci://)
  --platform P        OS/ARCH[/VARIANT] to take from a manifest list (default linux/amd64)
  --size SIZE         virtual size of the image's file system (default 10G)
  --docker-config F   Docker config.json with registry credentials
  --work-dir DIR      where the temporary layers are built (default the OS temp directory)
  --json              print the result as JSON (default: a summary line)
  --profile-cmd CMD   not supported without dockerd: convert on a slacker host with --profile
`;

export async function convertCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      push: { type: 'boolean', default: false },
      profile: { type: 'string' },
      name: { type: 'string', default: 'slacker' },
      'socket-dir': { type: 'string', default: '/run/docker/plugins' },
      'containerd-socket': { type: 'string' },
      namespace: { type: 'string', default: 'moby' },
      host: { type: 'string' },
      'docker-bin': { type: 'string', default: 'docker' },
      store: { type: 'string' },
      platform: { type: 'string', default: 'linux/amd64' },
      size: { type: 'string', default: '10G' },
      'docker-config': { type: 'string' },
      'work-dir': { type: 'string' },
      json: { type: 'boolean', default: false },
      'profile-cmd': { type: 'string' },
    },
    strict: true,
  });
  const [src, dst] = positionals;
  if (!src || !dst || positionals.length !== 2) throw new ConfigError('usage: slacker-ts convert SRC DST [--push]');
  if (values.store) {
    if (values['profile-cmd'] !== undefined || values.profile !== undefined) {
      throw new NotSupportedError(
        'a startup profile cannot be recorded without dockerd yet: convert from the registry, pull DST on a ' +
          'slacker host, and run `slacker-ts convert DST DST --profile CONTAINER --push` there',
      );
    }
    return registryConvert(src, dst, values.store, {
      platform: parsePlatform(values.platform),
      layerSize: parseSize(values.size),
      dockerConfig: values['docker-config'],
      workDir: values['work-dir'],
      json: values.json,
    });
  }
  const hostArgs = values.host ? ['--host', values.host] : [];
  const socket = values['containerd-socket'];
  const control = socket ? new ControlClient(socket) : undefined;
  try {
    const result = await convert({
      src,
      dst,
      push: values.push,
      docker: (args) => run(values['docker-bin'], [...hostArgs, ...args], { timeoutMs: 3_600_000 }),
      markers: control
        ? containerdMarkers(control, values.namespace)
        : graphdriverMarkers(join(values['socket-dir'], `${values.name}.sock`)),
      profile: values.profile,
    });
    process.stdout.write(`${JSON.stringify({ image: dst, ...result })}\n`);
    return 0;
  } finally {
    control?.close();
  }
}

async function registryConvert(
  src: string,
  dst: string,
  store: string,
  o: { platform: Platform; layerSize: number; dockerConfig?: string; workDir?: string; json: boolean },
): Promise<number> {
  const tty = process.stderr.isTTY === true;
  const mb = (n: number): string => `${(n / 1e6).toFixed(1)} MB`;
  const result = await convertFromRegistry({
    src,
    dst,
    store,
    platform: o.platform,
    layerSize: o.layerSize,
    dockerConfig: o.dockerConfig,
    workDir: o.workDir,
    log: createLogger({ level: 'warn' }),
    progress: (e) => {
      let line: string;
      if (e.kind === 'manifest') line = `${src}: ${e.layers} layers, ${mb(e.bytes)} to read (${e.platform})`;
      else if (e.kind === 'layer') {
        if (!e.done && !tty) return; // a log gets one line per layer
        line = `layer ${e.index + 1}/${e.layers}: ${mb(e.bytesRead)} of ${mb(e.size)} read, ${mb(e.tarBytes)} applied`;
        if (!e.done) return void process.stderr.write(`\r${line}\x1b[K`);
      } else if (e.kind === 'publish') line = 'publishing the snapshot to the store';
      else if (e.kind === 'published')
        line = `published ${e.chunks} chunks: ${e.uploaded} uploaded, ${e.skipped} already in the store`;
      else line = `pushing ${dst}`;
      process.stderr.write(`${tty ? '\r' : ''}${line}${tty ? '\x1b[K' : ''}\n`);
    },
  });
  if (o.json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else {
    process.stdout.write(
      `${dst}: ${result.layers} layers of ${src} (${mb(result.tarBytes)}) as snapshot ${result.snapshotRef} ` +
        `(${result.chunks} chunks in the store: ${result.uploaded} uploaded, ${result.skipped} already there), ` +
        `in ${result.seconds.toFixed(1)} s\n`,
    );
  }
  return 0;
}

/** Markers from a daemon serving containerd: the image's snapshot is named by its chain ID. */
function containerdMarkers(control: ControlClient, namespace: string): MarkerSource {
  return async (image, profile) => {
    const diffIds = image.RootFS.Layers ?? [];
    if (diffIds.length === 0 || !diffIds.every(isDigest)) throw new ConfigError('the image has no layers to convert');
    const r = await control.publish({
      namespace,
      name: chainIdOf(diffIds as Digest[]),
      profile_from: profile?.Id ?? '',
    });
    return { tar: r.marker, prefetch: r.prefetch_chunks };
  };
}
