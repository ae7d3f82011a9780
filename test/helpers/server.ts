/** An in-process NbdServer on a random loopback port and a unix socket, for one test file. */
import { join } from 'node:path';
import type { ExportSpec } from '../../nbd-server/exports.js';
import { nbdUri, type ListenAddress } from '../../nbd-server/listen-address.js';
import { NbdServer, type NbdServerOptions } from '../../nbd-server/server.js';
import { tempDir } from './tmp.js';

export interface TestServer {
  server: NbdServer;
  tcp: ListenAddress & { kind: 'tcp' };
  unix: ListenAddress & { kind: 'unix' };
  uri(name: string, via?: 'tcp' | 'unix'): string;
  close(): Promise<void>;
}

export async function startServer(exports: ExportSpec[], options: NbdServerOptions = {}): Promise<TestServer> {
  const dir = await tempDir('slacker-nbd-');
  const server = new NbdServer(options);
  for (const e of exports) server.addExport(e);
  const tcp = (await server.listen('tcp://127.0.0.1:0')) as ListenAddress & { kind: 'tcp' };
  const unix = (await server.listen(`unix://${join(dir.path, 'nbd.sock')}`)) as ListenAddress & { kind: 'unix' };
  return {
    server,
    tcp,
    unix,
    uri: (name, via = 'tcp') => nbdUri(via === 'tcp' ? tcp : unix, name),
    close: async () => {
      await server.close();
      await Promise.all(exports.map((e) => e.backend.close?.()));
      await dir.cleanup();
    },
  };
}

/** Waits until every client connection has closed (close events may trail a client's exit). */
export async function noConnections(server: NbdServer, timeoutMs = 2000): Promise<number> {
  for (const t0 = Date.now(); server.connectionCount > 0 && Date.now() - t0 < timeoutMs;) {
    await new Promise((r) => setTimeout(r, 20));
  }
  return server.connectionCount;
}
