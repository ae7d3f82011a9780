/**
 * A real OCI registry for tests and benchmarks: Debian's docker-registry (distribution 2.8) on loopback, with
 * its storage in a temporary directory, optionally behind htpasswd (Basic) auth. `stop` and
 * `start` keep the port and the storage, to simulate an outage.
 */
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { run, startProcess, type Started } from '../common/exec.js';
import { requireTools } from './tools.js';

export interface TestRegistry {
  port: number;
  storage: string;
  /** oci:// URL of a repository on it. */
  url(repository: string, credentials?: { username: string; password: string }): string;
  start(): Promise<void>;
  stop(): Promise<void>;
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

export async function startRegistry(
  options: { user?: { username: string; password: string } } = {},
): Promise<TestRegistry> {
  await requireTools('docker-registry', ...(options.user ? ['htpasswd'] : []));
  const dir = { path: await mkdtemp(join(tmpdir(), 'slacker-registry-')) };
  const cleanup = (): Promise<void> => rm(dir.path, { recursive: true, force: true });
  const port = await freePort();
  const storage = join(dir.path, 'storage');
  let auth = '';
  if (options.user) {
    const { stdout } = await run('htpasswd', ['-Bbn', options.user.username, options.user.password]);
    await writeFile(join(dir.path, 'htpasswd'), stdout);
    auth = `auth:\n  htpasswd:\n    realm: slacker-test\n    path: ${join(dir.path, 'htpasswd')}\n`;
  }
  const config = join(dir.path, 'config.yml');
  await writeFile(
    config,
    `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${storage}\nhttp:\n  addr: 127.0.0.1:${port}\n${auth}`,
  );
  let proc: Started | undefined;
  const start = async (): Promise<void> => {
    proc = startProcess('docker-registry', ['serve', config]);
    proc.child.stdout?.resume();
    proc.child.stderr?.resume();
    for (let i = 0; i < 100; i++) {
      const up = await fetch(`http://127.0.0.1:${port}/v2/`).then(
        (r) => r.status === 200 || r.status === 401,
        () => false,
      );
      if (up) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`docker-registry did not come up on port ${port}`);
  };
  const stop = async (): Promise<void> => {
    await proc?.stop();
    proc = undefined;
  };
  await start();
  return {
    port,
    storage,
    url: (repository, c) =>
      `oci://${c ? `${encodeURIComponent(c.username)}:${encodeURIComponent(c.password)}@` : ''}127.0.0.1:${port}/${repository}`,
    start,
    stop,
    close: async () => {
      await stop();
      await cleanup();
    },
  };
}
