/**
 * The measurement topology, all on this machine: a registry in its own network namespace behind
 * a rate-limited link (it also holds the slacker chunk store, oci://), builder dockerds on the
 * host side (one overlay2, one slacker), and fresh worker dockerds with cold state for every
 * measurement. Everything started here is stopped by `close`, also after a failure.
 */
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../common/exec.js';
import { startDockerd, type Dockerd } from '../../harness/dockerd.js';
import { createLink, type Link } from '../../harness/link.js';
import { callPlugin, startSlackerHost, type PluginProcess } from '../../harness/plugin.js';
import { startRegistry, type TestRegistry } from '../../harness/registry.js';

export type Driver = 'overlay2' | 'slacker';

export interface Host {
  driver: Driver;
  dockerd: Dockerd;
  plugin?: PluginProcess;
  /** Bytes the slacker plugin fetched from the store so far (0 for overlay2). */
  bytesFetched(): Promise<number>;
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
}

export async function startTopology(rate: string, dirPrefix: string, options: TopologyOptions = {}): Promise<Topology> {
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
    const host = async (driver: Driver, label: string): Promise<Host> => {
      const name = `${label}-${n++}`;
      const hostDir = join(dir, name);
      // slacker: a plugin and a dockerd on it; overlay2: a dockerd alone.
      const slacker =
        driver === 'slacker'
          ? await startSlackerHost(hostDir, {
              store: storeUrl,
              size: '4G',
              pluginArgs: ['--log-level', options.logsDir ? 'debug' : 'info', ...(options.pluginArgs ?? [])],
              dockerdArgs: ['--insecure-registry', registryAddress],
            })
          : undefined;
      const plugin = slacker?.plugin;
      const dockerd =
        slacker?.dockerd ??
        (await startDockerd(join(hostDir, 'docker'), {
          storageDriver: 'overlay2',
          args: ['--insecure-registry', registryAddress],
        }));
      const driverName = (await dockerd.docker(['info', '--format', '{{.Driver}}'])).stdout.trim();
      if (driverName !== (plugin?.name ?? 'overlay2')) {
        throw new Error(`guard rail: ${label} runs storage driver ${driverName}, not ${driver}`);
      }
      const h: Host = {
        driver,
        dockerd,
        plugin,
        bytesFetched: async () => {
          if (!plugin) return 0;
          const s = await callPlugin(plugin.socket, 'GraphDriver.Status', {});
          return Number(new Map(s.body.Status as [string, string][]).get('Bytes fetched') ?? 0);
        },
        close: async () => {
          await (slacker ?? dockerd).stop();
          if (options.logsDir && plugin) await copyFile(plugin.logFile, join(options.logsDir, `${name}.log`));
          await rm(hostDir, { recursive: true, force: true });
        },
      };
      return h;
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
