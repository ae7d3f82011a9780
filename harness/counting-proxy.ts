/**
 * A TCP proxy on loopback that counts the bytes each way: put in front of a registry, it says
 * what a host's pulls and lazy fetches cost in transfer (what the registry served) and what its
 * pushes sent, without trusting the host's own counters.
 */
import { createConnection, createServer, type Socket } from 'node:net';

export interface CountingProxy {
  port: number;
  /** Bytes from the server to clients (served) and from clients to the server (sent) since reset. */
  readonly served: number;
  readonly sent: number;
  reset(): void;
  close(): Promise<void>;
}

/**
 * `cutAfter`: once the server has sent this many bytes through the proxy (in all), every
 * connection is cut and new ones are closed at once: a registry that goes away mid-transfer.
 */
export async function startCountingProxy(
  targetPort: number,
  targetHost = '127.0.0.1',
  options: { cutAfter?: number } = {},
): Promise<CountingProxy> {
  let served = 0;
  let sent = 0;
  const sockets = new Set<Socket>();
  const cut = (): boolean => options.cutAfter !== undefined && served >= options.cutAfter;
  const server = createServer((client) => {
    if (cut()) return void client.destroy();
    const upstream = createConnection({ port: targetPort, host: targetHost });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    upstream.on('data', (b: Buffer) => {
      served += b.length;
      if (cut()) for (const s of sockets) s.destroy();
    });
    client.on('data', (b: Buffer) => (sent += b.length));
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    get served() {
      return served;
    },
    get sent() {
      return sent;
    },
    reset: () => {
      served = sent = 0;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
