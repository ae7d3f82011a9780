/**
 * A real OCI registry for tests and benchmarks: Debian's docker-registry (distribution 2.8) on
 * loopback, its storage in a temporary directory, optionally behind htpasswd (Basic) auth or
 * token (Bearer) auth. For token auth a small token server runs beside it: it checks Basic
 * credentials and issues RS256 JWTs carrying a self-signed certificate (x5c) that the registry
 * is configured to trust. `stop` and `start` keep the port and the storage, to simulate an
 * outage; `close` stops everything and removes the directory.
 */
import { createPrivateKey, randomBytes, sign, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, startProcess, type Started } from '../common/exec.js';
import { requireTools } from './tools.js';

export interface Credentials {
  username: string;
  password: string;
}

export interface RegistryOptions {
  /** Credentials the registry accepts (Basic auth, or Basic at the token server). */
  user?: Credentials;
  /** Bearer token auth through a token server instead of Basic auth. */
  token?: boolean;
  /** Run inside this network namespace, listening on `address` (see link.ts). */
  netns?: { name: string; address: string };
}

export interface TestRegistry {
  host: string;
  port: number;
  storage: string;
  /** oci:// URL of a repository on it. */
  url(repository: string, credentials?: Credentials): string;
  /** The registry process's PID while it runs (benchmarks read its CPU time). */
  readonly pid: number | undefined;
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

export async function startRegistry(options: RegistryOptions = {}): Promise<TestRegistry> {
  await requireTools('docker-registry', ...(options.user && !options.token ? ['htpasswd'] : []));
  const dir = await mkdtemp(join(tmpdir(), 'slacker-registry-'));
  const port = await freePort();
  const host = options.netns?.address ?? '127.0.0.1';
  const storage = join(dir, 'storage');
  let auth = '';
  let tokenServer: Server | undefined;
  if (options.user && options.token) {
    const t = await startTokenServer(dir, options.user);
    tokenServer = t.server;
    auth = `auth:\n  token:\n    realm: ${t.realm}\n    service: slacker-test\n    issuer: slacker-test-issuer\n    rootcertbundle: ${t.certPath}\n`;
  } else if (options.user) {
    const { stdout } = await run('htpasswd', ['-Bbn', options.user.username, options.user.password]);
    await writeFile(join(dir, 'htpasswd'), stdout);
    auth = `auth:\n  htpasswd:\n    realm: slacker-test\n    path: ${join(dir, 'htpasswd')}\n`;
  }
  const config = join(dir, 'config.yml');
  await writeFile(
    config,
    `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: ${storage}\nhttp:\n  addr: ${host}:${port}\n${auth}`,
  );
  let proc: Started | undefined;
  const start = async (): Promise<void> => {
    // `ip netns exec` execs the registry, so the PID is the registry's own.
    proc = options.netns
      ? startProcess('ip', ['netns', 'exec', options.netns.name, 'docker-registry', 'serve', config])
      : startProcess('docker-registry', ['serve', config]);
    proc.child.stdout?.resume();
    proc.child.stderr?.resume();
    for (let i = 0; i < 100; i++) {
      const up = await fetch(`http://${host}:${port}/v2/`).then(
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
    host,
    get pid() {
      return proc?.child.pid;
    },
    url: (repository, c) =>
      `oci+http://${c ? `${encodeURIComponent(c.username)}:${encodeURIComponent(c.password)}@` : ''}${host}:${port}/${repository}`,
    start,
    stop,
    close: async () => {
      await stop();
      await new Promise<void>((r) => (tokenServer ? tokenServer.close(() => r()) : r()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A token server for Bearer auth: Basic credentials in, a JWT for the requested scope out. */
async function startTokenServer(
  dir: string,
  user: Credentials,
): Promise<{ server: Server; realm: string; certPath: string }> {
  await requireTools('openssl');
  const keyPath = join(dir, 'token.key');
  const certPath = join(dir, 'token.crt');
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    keyPath,
    '-out',
    certPath,
    '-days',
    '1',
    '-subj',
    '/CN=slacker-test-token',
  ]);
  const key = createPrivateKey(await readFile(keyPath));
  const certDer = new X509Certificate(await readFile(certPath)).raw.toString('base64');
  const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');
  const expected = `Basic ${Buffer.from(`${user.username}:${user.password}`).toString('base64')}`;
  const server = createHttpServer((req, res) => {
    if (req.headers.authorization !== expected) {
      res.writeHead(401).end();
      return;
    }
    const url = new URL(req.url ?? '/', 'http://token');
    const access = url.searchParams.getAll('scope').flatMap((scope) => {
      const [type, name, actions] = scope.split(':');
      return type && name && actions ? [{ type, name, actions: actions.split(',') }] : [];
    });
    const now = Math.floor(Date.now() / 1000);
    const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'RS256', x5c: [certDer] }));
    const claims = b64url(
      JSON.stringify({
        iss: 'slacker-test-issuer',
        sub: user.username,
        aud: url.searchParams.get('service'),
        exp: now + 300,
        nbf: now - 10,
        iat: now,
        jti: randomBytes(8).toString('hex'),
        access,
      }),
    );
    const signature = b64url(sign('RSA-SHA256', Buffer.from(`${header}.${claims}`), key));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: `${header}.${claims}.${signature}` }));
  });
  const port = await freePort();
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return { server, realm: `http://127.0.0.1:${port}/token`, certPath };
}
