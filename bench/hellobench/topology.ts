/**
 * The measurement topology, all on this machine: a registry in its own network namespace behind
 * a rate-limited link (it also holds the slacker chunk store, oci://), builder dockerds on the
 * host side (one overlay2, one slacker), and fresh worker dockerds with cold state for every
 * measurement. Everything started here is stopped by `close`, also after a failure.
 *
 * Two engines: `graphdriver` is Docker 20.10 with overlay2 against the slacker graphdriver
 * plugin; `containerd` is Docker 26 on the containerd image store (containerd 1.7), its
 * overlayfs snapshotter (called overlay2 in the results) against the slacker snapshotter and
 * differ. Each host has its own containerd.
 */
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../common/exec.js';
import { startDockerd, type Dockerd } from '../../harness/dockerd.js';
import { createLink, type Link } from '../../harness/link.js';
import { callPlugin, convertImage, startSlackerHost, type PluginProcess } from '../../harness/plugin.js';
import {
  convertOnContainerd,
  startContainerd,
  startDockerd26,
  startSlackerContainerd,
} from '../../harness/containerd.js';
import { ControlClient } from '../../containerd/control-service.js';
import type { HostReport } from '../../layers/layer-store.js';
import { startRegistry, type TestRegistry } from '../../harness/registry.js';

export type Driver = 'overlay2' | 'slacker';
export type Engine = 'graphdriver' | 'containerd';
export const ENGINES: Engine[] = ['graphdriver', 'containerd'];

export interface Host {
  driver: Driver;
  dockerd: Dockerd;
  plugin?: PluginProcess;
  /** Bytes the slacker daemon fetched from the store so far (0 for overlay2). */
  bytesFetched(): Promise<number>;
  /**
   * Bytes of the snapshot `image` (pulled here) is: fetching them all would mean nothing was
   * lazy. Slacker hosts only.
   */
  snapshotBytes(image: string): Promise<number>;
  /** `slacker-ts convert SRC DST --push` on this (slacker) host. */
  convert(src: string, dst: string, options?: { profile?: string }): Promise<{ prefetchChunks: number }>;
  close(): Promise<void>;
}

export interface Topology {
  link: Link;
  registry: TestRegistry;
  /** host:port of the registry as dockerd reaches it (over the link). */
  registryAddress: string;
  storeUrl: string;
  builders: Record<Driver, Host>;
  /** A fresh host with cold state (new data root and plugin root, page cache dropped). */
  worker(driver: Driver): Promise<Host>;
  close(): Promise<void>;
}

export interface TopologyOptions {
  /** Extra `slacker-ts serve` arguments for every slacker host. */
  pluginArgs?: string[];
  /** Keep each slacker host's plugin log (debug level) here, named after the host. */
  logsDir?: string;
  /** Default graphdriver. */
  engine?: Engine;
}

export async function startTopology(rate: string, dirPrefix: string, options: TopologyOptions = {}): Promise<Topology> {
  if (options.engine && !ENGINES.includes(options.engine)) {
    throw new Error(`unknown engine ${String(options.engine)} (known: ${ENGINES.join(', ')})`);
  }
  const dir = await mkdtemp(join(tmpdir(), dirPrefix));
  const closers: (() => Promise<unknown>)[] = [async () => rm(dir, { recursive: true, force: true })];
  const close = async (): Promise<void> => {
    for (let c = closers.pop(); c; c = closers.pop()) await c().catch(() => undefined);
  };
  try {
    if (options.logsDir) await mkdir(options.logsDir, { recursive: true });
    const link = await createLink(rate);
    closers.push(() => link.close());
    const registry = await startRegistry({ netns: { name: link.netns, address: link.nsAddress } });
    closers.push(() => registry.close());
    const registryAddress = `${link.nsAddress}:${registry.port}`;
    const storeUrl = registry.url('slacker/chunks');
    let n = 0;
    const slackerArgs = ['--log-level', options.logsDir ? 'debug' : 'info', ...(options.pluginArgs ?? [])];
    const host = async (driver: Driver, label: string): Promise<Host> => {
      const name = `${label}-${n++}`;
      const hostDir = join(dir, name);
      const h =
        options.engine === 'containerd'
          ? await containerdHost(driver, hostDir, registryAddress, storeUrl, slackerArgs)
          : await graphdriverHost(driver, hostDir, registryAddress, storeUrl, slackerArgs);
      const expected =
        driver === 'slacker'
          ? (h.plugin?.name ?? 'slacker')
          : options.engine === 'containerd'
            ? 'overlayfs'
            : 'overlay2';
      const driverName = (await h.dockerd.docker(['info', '--format', '{{.Driver}}'])).stdout.trim();
      if (driverName !== expected) {
        await h.close();
        throw new Error(`guard rail: ${label} runs storage driver ${driverName}, not ${expected}`);
      }
      return {
        ...h,
        close: async () => {
          await h.close();
          if (options.logsDir && h.logFile) await copyFile(h.logFile, join(options.logsDir, `${name}.log`));
          await rm(hostDir, { recursive: true, force: true });
        },
      };
    };
    const overlay2 = await host('overlay2', 'builder');
    closers.push(() => overlay2.close());
    const slacker = await host('slacker', 'builder');
    closers.push(() => slacker.close());
    const builders = { overlay2, slacker };
    return {
      link,
      registry,
      registryAddress,
      storeUrl,
      builders,
      worker: async (driver) => {
        await run('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
        return host(driver, `worker-${driver}`);
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

type BareHost = Host & { logFile?: string };

/** An anchor host (overlay2 or overlayfs): no lazy fetches, no convert. */
function anchorHost(dockerd: Dockerd, close: () => Promise<unknown>): BareHost {
  const noSlacker = async (): Promise<never> => {
    throw new Error('not a slacker host');
  };
  return {
    driver: 'overlay2',
    dockerd,
    bytesFetched: async () => 0,
    snapshotBytes: noSlacker,
    convert: noSlacker,
    close: async () => void (await close()),
  };
}

/** Docker 20.10: overlay2, or the slacker graphdriver plugin. */
async function graphdriverHost(
  driver: Driver,
  hostDir: string,
  registryAddress: string,
  storeUrl: string,
  slackerArgs: string[],
): Promise<BareHost> {
  if (driver === 'overlay2') {
    const dockerd = await startDockerd(join(hostDir, 'docker'), {
      storageDriver: 'overlay2',
      args: ['--insecure-registry', registryAddress],
    });
    return anchorHost(dockerd, () => dockerd.stop());
  }
  const slacker = await startSlackerHost(hostDir, {
    store: storeUrl,
    size: '4G',
    pluginArgs: slackerArgs,
    dockerdArgs: ['--insecure-registry', registryAddress],
  });
  const plugin = slacker.plugin;
  return {
    driver,
    dockerd: slacker.dockerd,
    plugin,
    logFile: plugin.logFile,
    bytesFetched: async () => {
      const s = await callPlugin(plugin.socket, 'GraphDriver.Status', {});
      return Number(new Map(s.body.Status as [string, string][]).get('Bytes fetched') ?? 0);
    },
    snapshotBytes: async (image) => {
      const [img] = JSON.parse((await slacker.dockerd.docker(['image', 'inspect', image])).stdout) as {
        GraphDriver: { Data: Record<string, string> };
      }[];
      return Number(img!.GraphDriver.Data.Chunks) * Number(img!.GraphDriver.Data.ChunkSize);
    },
    convert: (src, dst, o) => convertImage(slacker, src, dst, o),
    close: () => slacker.stop(),
  };
}

/** Docker 26 on the containerd image store: containerd's overlayfs snapshotter, or slacker's. */
async function containerdHost(
  driver: Driver,
  hostDir: string,
  registryAddress: string,
  storeUrl: string,
  slackerArgs: string[],
): Promise<BareHost> {
  const insecureRegistries = [registryAddress];
  if (driver === 'overlay2') {
    const containerd = await startContainerd(join(hostDir, 'containerd'));
    try {
      const dockerd = await startDockerd26(join(hostDir, 'docker'), {
        containerd,
        snapshotter: 'overlayfs',
        insecureRegistries,
      });
      return anchorHost(dockerd, async () => {
        await dockerd.stop();
        await containerd.stop();
      });
    } catch (err) {
      await containerd.stop();
      throw err;
    }
  }
  const slacker = await startSlackerContainerd(hostDir, {
    name: 'slacker',
    size: '4G',
    store: storeUrl,
    extraArgs: slackerArgs,
  });
  let dockerd: Dockerd;
  try {
    dockerd = await startDockerd26(join(hostDir, 'docker'), {
      containerd: slacker.containerd,
      snapshotter: 'slacker',
      insecureRegistries,
    });
  } catch (err) {
    await slacker.stop();
    throw err;
  }
  const report = async (): Promise<HostReport> => {
    const control = new ControlClient(slacker.snap.socket);
    try {
      return JSON.parse((await control.status()).report_json) as HostReport;
    } finally {
      control.close();
    }
  };
  return {
    driver,
    dockerd,
    logFile: slacker.snap.logFile,
    bytesFetched: async () => (await report()).fetch.bytes,
    // The lazily opened image snapshots on this worker (it pulls one image).
    snapshotBytes: async () =>
      (await report()).layers
        .filter((l) => l.frozen && l.snapshotRef !== null)
        .reduce((n, l) => Math.max(n, l.chunks * l.chunkSize), 0),
    convert: (src, dst, o) => convertOnContainerd(slacker.snap.socket, dockerd.socket, src, dst, o),
    close: async () => {
      await dockerd.stop();
      await slacker.stop();
    },
  };
}
