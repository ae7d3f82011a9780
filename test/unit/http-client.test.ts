/**
 * The oci:// store's HTTP client against real servers on loopback (node:http, and node:net
 * where a misbehaving peer has to be written by hand): bodies, redirects and credentials,
 * limits, cut-short answers, aborts, silence, and a keep-alive connection the server dropped.
 */
import { createServer as createHttpServer, type RequestListener, type Server } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { IoError } from '../../common/errors.js';
import { HttpClient } from '../../stores/http-client.js';

const servers: (Server | NetServer)[] = [];
const rawSockets = new Set<Socket>();
const clients: HttpClient[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const socket of rawSockets) socket.destroy(); // a raw server that never reads never sees a close
  rawSockets.clear();
  for (const s of servers.splice(0)) {
    if ('closeAllConnections' in s) s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

async function serve(handler: RequestListener): Promise<string> {
  const server = createHttpServer(handler);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`;
}

/** A raw TCP server; `onConnection` writes whatever the test needs. */
async function serveRaw(onConnection: (socket: Socket) => void): Promise<string> {
  const server = createNetServer((socket) => {
    rawSockets.add(socket);
    onConnection(socket);
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`;
}

function client(options?: ConstructorParameters<typeof HttpClient>[0]): HttpClient {
  const c = new HttpClient(options);
  clients.push(c);
  return c;
}

describe('HttpClient', () => {
  it('reads a body of known length into the buffer it is given, and one of unknown length whole', async () => {
    const payload = Buffer.alloc(300_000, 7);
    const base = await serve((req, res) => {
      if (req.url === '/chunked') {
        res.write(payload.subarray(0, 100_000)); // no Content-Length: chunked encoding
        res.end(payload.subarray(100_000));
      } else res.end(payload);
    });
    const slab = Buffer.alloc(1_000_000);
    const sizes: number[] = [];
    const known = await client().request(`${base}/known`, {
      allocate: (n) => (sizes.push(n), slab.subarray(0, n)),
    });
    expect(sizes).toEqual([payload.length]);
    expect(known.body.buffer).toBe(slab.buffer); // received in place, no copy of its own
    expect(known.body.equals(payload)).toBe(true);
    const chunked = await client().request(`${base}/chunked`);
    expect(chunked.status).toBe(200);
    expect(chunked.body.equals(payload)).toBe(true);
  });

  it('sends bodies and headers, and answers HEAD without a body', async () => {
    const base = await serve((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (p: Buffer) => parts.push(p));
      req.on('end', () => {
        res.setHeader('x-got', `${req.method} ${req.headers['x-test']} ${Buffer.concat(parts).length}`);
        res.end('abc');
      });
    });
    const put = await client().request(`${base}/x`, {
      method: 'PUT',
      body: Buffer.alloc(5000),
      headers: { 'x-test': 'yes' },
    });
    expect(put.header('x-got')).toBe('PUT yes 5000');
    const head = await client().request(`${base}/x`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body.length).toBe(0);
  });

  it('follows redirects; credentials go only to the origin they were meant for', async () => {
    const seen: { where: string; authorization?: string }[] = [];
    const other = await serve((req, res) => {
      seen.push({ where: 'other', authorization: req.headers.authorization });
      res.end('from the other origin');
    });
    const base = await serve((req, res) => {
      seen.push({ where: req.url!, authorization: req.headers.authorization });
      // Redirects and errors with bodies of declared length, as registries send them.
      if (req.url === '/blob') res.writeHead(307, { location: '/moved', 'content-length': 9 }).end('see there');
      else if (req.url === '/moved')
        res.writeHead(302, { location: `${other}/presigned?sig=1`, 'content-length': 5 }).end('there');
      else if (req.url === '/loop') res.writeHead(307, { location: '/loop' }).end();
      else res.writeHead(404, { 'content-length': 9 }).end('not found');
    });
    const c = client();
    const lent: number[] = [];
    const allocate = (n: number): Buffer => (lent.push(n), Buffer.alloc(n));
    const res = await c.request(`${base}/blob`, {
      headers: { authorization: 'Bearer secret', range: 'bytes=0-3' },
      allocate,
    });
    expect(res.status).toBe(200);
    expect(res.body.toString()).toBe('from the other origin');
    expect(lent).toEqual([res.body.length]); // the redirects' bodies were not received into it
    expect(res.url).toBe(`${other}/presigned?sig=1`);
    expect(seen).toEqual([
      { where: '/blob', authorization: 'Bearer secret' },
      { where: '/moved', authorization: 'Bearer secret' }, // same origin: kept
      { where: 'other', authorization: undefined }, // another origin: dropped
    ]);
    expect((await c.request(`${base}/nothing`, { allocate })).status).toBe(404);
    expect(lent).toHaveLength(1); // nor an error's
    const err = await c.request(`${base}/loop`).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IoError);
    expect((err as Error).message).toMatch(/more than 5 redirects/);
    // Not GET or HEAD: the redirect itself is the answer.
    expect((await c.request(`${base}/blob`, { method: 'POST' })).status).toBe(307);
  });

  it('refuses a body over the limit, declared or streamed', async () => {
    const base = await serve((req, res) => {
      if (req.url === '/declared') res.writeHead(200, { 'content-length': '5000' }).end(Buffer.alloc(5000));
      else {
        res.write(Buffer.alloc(3000));
        res.end(Buffer.alloc(3000));
      }
    });
    const c = client();
    await expect(c.request(`${base}/declared`, { maxBodyBytes: 4096 })).rejects.toThrow(/over the 4096-byte limit/);
    await expect(c.request(`${base}/streamed`, { maxBodyBytes: 4096 })).rejects.toThrow(/longer than 4096 bytes/);
    expect((await c.request(`${base}/declared`)).body.length).toBe(5000); // the client still works
  });

  it('fails an answer cut short, with an IoError naming the request', async () => {
    const base = await serveRaw((socket) => {
      socket.once('data', () => {
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n');
        socket.end(Buffer.alloc(40_000));
      });
    });
    const err = await client()
      .request(`${base}/blob`)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IoError);
    expect((err as Error).message).toContain(`GET ${base}/blob`);
  });

  it('stops at an abort signal and when the server stays silent', async () => {
    const base = await serveRaw(() => undefined); // accepts, never answers
    const c = client({ idleTimeoutMs: 300 });
    const aborted = await c.request(`${base}/a`, { signal: AbortSignal.timeout(100) }).then(
      () => new Error('it answered'),
      (e: unknown) => e as Error,
    );
    expect(aborted.name).toBe('TimeoutError');
    const t0 = Date.now();
    const silent = await c.request(`${base}/b`).then(
      () => new Error('it answered'),
      (e: unknown) => e as Error,
    );
    expect(silent).toBeInstanceOf(IoError);
    expect(silent.message).toMatch(/no answer for 300 ms/);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('sends a GET again when the kept-alive connection it reused was dropped by the server', async () => {
    let connections = 0;
    const base = await serveRaw((socket) => {
      connections++;
      let answered = 0;
      socket.on('data', () => {
        // The first request on a connection is answered and the connection kept open; the
        // second is cut off with a reset, as a server that timed the idle connection out does.
        if (answered++ === 0) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok');
        else socket.resetAndDestroy();
      });
    });
    const c = client({ maxSockets: 1 });
    expect((await c.request(`${base}/1`)).body.toString()).toBe('ok');
    expect((await c.request(`${base}/2`)).body.toString()).toBe('ok'); // reset, then sent again
    expect(connections).toBe(2);
    // A PUT is not sent twice: the reset is the caller's error.
    await expect(c.request(`${base}/3`, { method: 'PUT', body: Buffer.from('x') })).rejects.toBeInstanceOf(IoError);
  });
});
