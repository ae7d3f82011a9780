/**
 * The oci:// store's HTTP client against real servers on loopback (node:http and node:https,
 * and node:net where a peer has to be written by hand): bodies, redirects and credentials,
 * limits, cut-short answers, aborts, silence, a keep-alive connection the server dropped, and
 * the framings and oddities of HTTP/1.1 answers (interim answers, chunk extensions and
 * trailers, answers ended by closing, servers speaking out of turn).
 */
import { readFile } from 'node:fs/promises';
import { createServer as createHttpServer, type RequestListener, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { run } from '../../common/exec.js';
import { InvalidArgumentError, IoError } from '../../common/errors.js';
import { HttpClient } from '../../stores/http-client.js';
import { tempDir } from '../helpers/tmp.js';

const servers: (Server | NetServer)[] = [];
const rawSockets = new Set<Socket>();
const clients: HttpClient[] = [];
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const socket of rawSockets) socket.destroy(); // a raw server that never reads never sees a close
  rawSockets.clear();
  for (const s of servers.splice(0)) {
    if ('closeAllConnections' in s) s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  for (const cleanup of cleanups.splice(0)) await cleanup();
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

  it('receives over TLS, in place', async () => {
    const { path: dir, cleanup } = await tempDir('slacker-https-');
    cleanups.push(cleanup);
    await run('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ]); // prettier-ignore
    const cert = await readFile(join(dir, 'cert.pem'));
    const payload = Buffer.alloc(1_000_000);
    for (let i = 0; i < payload.length; i++) payload[i] = i % 251;
    const server = createHttpsServer({ key: await readFile(join(dir, 'key.pem')), cert }, (req, res) =>
      res.end(payload),
    );
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `https://127.0.0.1:${(server.address() as { port: number }).port}/blob`;
    const slab = Buffer.alloc(2_000_000);
    const res = await client({ ca: cert }).request(url, { allocate: (n) => slab.subarray(0, n) });
    expect(res.body.buffer).toBe(slab.buffer);
    expect(res.body.equals(payload)).toBe(true);
    // Not trusted without the certificate: a clear error, not an answer.
    await expect(client().request(url)).rejects.toThrow(/self-signed certificate/);
  });

  it('reads every framing: interim answers, chunk extensions and trailers, an answer ended by closing', async () => {
    const answers: Record<string, string> = {
      '/interim': 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello',
      '/chunked':
        'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' +
        '3;name=value\r\nabc\r\n' +
        'A\r\n0123456789\r\n' +
        '0\r\nx-trailer: yes\r\n\r\n',
      // Both framings: chunked wins and the connection is not reused (RFC 9112 6.3).
      '/both': 'HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
      '/close': 'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end',
      '/empty': 'HTTP/1.1 204 No Content\r\nx-a: 1\r\nX-A: 2\r\n\r\n',
    };
    let connections = 0;
    const base = await serveRaw((socket) => {
      connections++;
      socket.on('data', (d: Buffer) => {
        const path = /^GET (\S+)/.exec(d.toString('latin1'))![1]!;
        // Dribbled a few bytes at a time: heads and chunk lines arrive cut anywhere.
        const bytes = Buffer.from(answers[path]!, 'latin1');
        for (let i = 0; i < bytes.length; i += 7) socket.write(bytes.subarray(i, i + 7));
        if (path === '/close') socket.end();
      });
    });
    const c = client({ maxSockets: 1 });
    expect((await c.request(`${base}/interim`)).body.toString()).toBe('hello');
    expect((await c.request(`${base}/chunked`)).body.toString()).toBe('abc0123456789');
    expect(connections).toBe(1); // kept alive across both
    expect((await c.request(`${base}/both`)).body.toString()).toBe('ok');
    expect((await c.request(`${base}/close`)).body.toString()).toBe('until the end');
    const empty = await c.request(`${base}/empty`);
    expect([empty.status, empty.body.length, empty.header('x-a')]).toEqual([204, 0, '1, 2']);
    expect(connections).toBe(3); // a new one after /both and after /close
  });

  it('refuses malformed answers with a clear error, and drops a connection that speaks out of turn', async () => {
    const answers: Record<string, string> = {
      '/status': 'HTTP/2 200 OK\r\n\r\n',
      '/header': 'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n',
      '/length': 'HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n',
      '/chunk': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
      '/huge': `HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`,
      '/ok': 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
    };
    let connections = 0;
    const base = await serveRaw((socket) => {
      connections++;
      socket.on('data', (d: Buffer) => {
        const path = /^GET (\S+)/.exec(d.toString('latin1'))![1]!;
        socket.write(answers[path]!);
        // Then, unasked, the start of another answer: the client must not take it for the next one.
        if (path === '/ok') setTimeout(() => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad'), 20);
      });
    });
    const c = client({ maxSockets: 1 });
    const failure = (path: string) =>
      c.request(`${base}${path}`).then(
        () => new Error('answered'),
        (e: Error) => e,
      );
    expect((await failure('/status')).message).toMatch(/not an HTTP\/1.x status line/);
    expect((await failure('/header')).message).toMatch(/malformed header line/);
    expect((await failure('/length')).message).toMatch(/malformed Content-Length/);
    expect((await failure('/chunk')).message).toMatch(/malformed chunk size line/);
    expect((await failure('/huge')).message).toMatch(/answer head longer than 16384 bytes/);
    for (const path of ['/status', '/header', '/length', '/chunk', '/huge'])
      expect(await failure(path)).toBeInstanceOf(IoError);
    expect((await c.request(`${base}/ok`)).body.toString()).toBe('ok');
    const before = connections;
    await new Promise((r) => setTimeout(r, 100)); // the unasked bytes arrive
    expect((await c.request(`${base}/ok`)).body.toString()).toBe('ok'); // not 'bad'
    expect(connections).toBe(before + 1); // on a new connection: the old one's stream was out of step
    // Header values that would split the request are refused before anything is sent.
    await expect(c.request(`${base}/ok`, { headers: { 'x-a': 'b\r\nx-c: d' } })).rejects.toThrow(InvalidArgumentError);
  });

  it('reuses an idle connection only while the client and the server both keep it', async () => {
    let connections = 0;
    const base = await serveRaw((socket) => {
      connections++;
      socket.on('data', (d: Buffer) => {
        const announce = d.toString('latin1').startsWith('GET /announce') ? 'Keep-Alive: timeout=1\r\n' : '';
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\n${announce}\r\nok`);
      });
    });
    const c = client({ maxSockets: 1, keepAliveMs: 300 });
    await c.request(`${base}/a`);
    await c.request(`${base}/a`);
    expect(connections).toBe(1); // reused at once
    await new Promise((r) => setTimeout(r, 400));
    await c.request(`${base}/announce`);
    expect(connections).toBe(2); // idle past keepAliveMs: a new connection
    await c.request(`${base}/a`);
    expect(connections).toBe(3); // the server keeps it 1 s: less the second of margin, never reused
    await c.request(`${base}/a`);
    expect(connections).toBe(3);
  });
});
