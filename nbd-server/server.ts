/**
 * NbdServer: listeners (TCP, loopback by default, and unix sockets), the export registry, the
 * live connections, and a graceful shutdown that lets requests in flight finish, flushes every
 * export and only then closes. The server never closes backends: whoever created them does.
 */
import { chmod, unlink } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { ConfigError, InvalidArgumentError, UnknownExportError } from '../common/errors.js';
import { silentLogger, type Logger } from '../common/logger.js';
import { ByteBudget } from './budget.js';
import { Connection, type ConnectionLimits } from './connection.js';
import { ExportRegistry, type Export, type ExportSpec } from './exports.js';
import { formatListenAddress, isLoopback, parseListenAddress, type ListenAddress } from './listen-address.js';
import { receiveIntoSlabs } from './socket-reader.js';

export interface NbdServerOptions {
  log?: Logger;
  /** Connections beyond this are refused at accept. */
  maxConnections?: number;
  /** Bytes of request payloads and replies held by all connections together. */
  memoryBudgetBytes?: number;
  limits?: Partial<ConnectionLimits>;
  /** Send cached file data with sendfile(2) where backends allow it (default true). */
  zeroCopy?: boolean;
}

export const DEFAULT_LIMITS: ConnectionLimits = {
  maxInflight: 128,
  budgetBytes: 64 * 1024 * 1024,
  handshakeTimeoutMs: 30_000,
  sendBufferBytes: 4 * 1024 * 1024,
};

/** How read replies left: sent with sendfile (direct-reply.ts), or copied through a buffer. */
export interface ReadReplyStats {
  direct: number;
  /** Bytes of direct replies the kernel could not take at once, queued behind as copies. */
  directBytesQueued: number;
  copied: number;
}

export class NbdServer {
  readonly exports = new ExportRegistry();
  readonly readReplies: ReadReplyStats = { direct: 0, directBytesQueued: 0, copied: 0 };
  private readonly log: Logger;
  private readonly listeners: { server: Server; address: ListenAddress }[] = [];
  private readonly connections = new Set<Connection>();
  private readonly budget: ByteBudget;
  private readonly limits: ConnectionLimits;
  private readonly maxConnections: number;
  private readonly zeroCopy: boolean;
  private nextId = 1;
  private closing = false;

  constructor(options: NbdServerOptions = {}) {
    this.log = options.log ?? silentLogger();
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.maxConnections = options.maxConnections ?? 4096;
    this.zeroCopy = options.zeroCopy ?? true;
    this.budget = new ByteBudget(options.memoryBudgetBytes ?? 512 * 1024 * 1024);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Bytes currently held for requests in flight across all connections. */
  get bytesInFlight(): number {
    return this.budget.inUse;
  }

  addExport(spec: ExportSpec): Export {
    return this.exports.add(spec);
  }

  /** Removes an export; refused while clients are attached unless `force`. */
  removeExport(name: string, options: { force?: boolean } = {}): Export {
    const e = this.exports.get(name);
    if (!e) throw new UnknownExportError(`no export named ${JSON.stringify(name)}`, { context: { name } });
    if (e.attached > 0 && !options.force) {
      throw new InvalidArgumentError(`export ${JSON.stringify(name)} has ${e.attached} client(s) attached`, {
        context: { name, attached: e.attached },
      });
    }
    this.exports.remove(name);
    return e;
  }

  /** Starts listening; resolves with the bound address (the real port when 0 was asked). */
  async listen(where: string | ListenAddress): Promise<ListenAddress> {
    const addr = typeof where === 'string' ? parseListenAddress(where) : where;
    if (!isLoopback(addr)) {
      this.log.warn(
        { listen: formatListenAddress(addr) },
        'NBD listener reachable from the network: exports are unauthenticated',
      );
    }
    if (addr.kind === 'unix') await removeStaleSocket(addr.path);
    // Paused, so that no byte is read before the connection moves onto its receive slabs.
    const server = createServer({ pauseOnConnect: true }, (socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (addr.kind === 'unix') server.listen(addr.path, resolve);
      else server.listen(addr.port, addr.host, resolve);
    });
    server.on('error', (err) => this.log.error({ err }, 'listener error'));
    let bound: ListenAddress = addr;
    if (addr.kind === 'unix') {
      await chmod(addr.path, 0o600); // local clients of the same user only
    } else {
      const a = server.address();
      if (a && typeof a === 'object') bound = { kind: 'tcp', host: addr.host, port: a.port };
    }
    this.listeners.push({ server, address: bound });
    this.log.info({ listen: formatListenAddress(bound) }, 'nbd server listening');
    return bound;
  }

  get addresses(): ListenAddress[] {
    return this.listeners.map((l) => l.address);
  }

  /**
   * Graceful shutdown: stop accepting, stop reading new requests, wait for those in flight,
   * flush every writable export, close. Idempotent.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // net.Server's close callback waits for every connection to end, so stop accepting first,
    // shut the connections down, and only then wait for the listeners.
    const listenersClosed = this.listeners.map(
      ({ server, address }) =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          if (address.kind === 'unix') unlink(address.path).catch(() => undefined);
        }),
    );
    await Promise.all([...this.connections].map((c) => c.shutdown()));
    await Promise.all(listenersClosed);
    for (const e of this.exports.list()) {
      try {
        await e.backend.flush?.();
      } catch (err) {
        this.log.error({ err, export: e.name }, 'flush at shutdown failed');
      }
    }
    this.log.info('nbd server stopped');
  }

  private accept(accepted: Socket): void {
    if (this.closing || this.connections.size >= this.maxConnections) {
      this.log.warn({ connections: this.connections.size }, 'connection refused: server full or closing');
      accepted.destroy();
      return;
    }
    let moved: ReturnType<typeof receiveIntoSlabs>;
    try {
      moved = receiveIntoSlabs(accepted);
    } catch (err) {
      this.log.debug({ err }, 'connection lost before it was set up');
      accepted.destroy();
      return;
    }
    const { socket, reader } = moved;
    const conn = new Connection(
      socket,
      {
        exports: this.exports,
        serverBudget: this.budget,
        limits: this.limits,
        shuttingDown: () => this.closing,
        log: this.log,
        zeroCopy: this.zeroCopy,
        stats: this.readReplies,
      },
      this.nextId++,
      reader,
    );
    this.connections.add(conn);
    socket.on('close', () => this.connections.delete(conn));
    void conn.run();
  }
}

/** A socket file left by a dead server is removed; one with a live server behind it is an error. */
async function removeStaleSocket(path: string): Promise<void> {
  const live = await new Promise<boolean>((resolve) => {
    const probe = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new ConfigError(`unix socket ${path} is in use by a running server`);
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}
