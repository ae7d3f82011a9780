/**
 * `slacker-ts convert SRC DST`: see plugin/convert.ts. The marker comes from the graphdriver
 * plugin (--name) or, for a Docker on the containerd image store, from the containerd front
 * end's control API (--containerd-socket).
 */
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { chainIdOf, isDigest, type Digest } from '../common/digests.js';
import { ConfigError } from '../common/errors.js';
import { run } from '../common/exec.js';
import { ControlClient } from '../containerd/control-service.js';
import { convert, graphdriverMarkers, type MarkerSource } from '../plugin/convert.js';

export const CONVERT_HELP = `usage: slacker-ts convert SRC DST [options]

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
    },
    strict: true,
  });
  const [src, dst] = positionals;
  if (!src || !dst || positionals.length !== 2) throw new ConfigError('usage: slacker-ts convert SRC DST [--push]');
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
