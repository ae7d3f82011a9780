/**
 * Where the server listens, written as a URI: `tcp://HOST:PORT` (loopback unless said
 * otherwise) or `unix:///ABSOLUTE/PATH`, and the NBD URI clients use to reach an export there.
 */
import { isIPv6 } from 'node:net';
import { ConfigError } from '../common/errors.js';

export type ListenAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export const DEFAULT_NBD_PORT = 10809;

export function parseListenAddress(uri: string): ListenAddress {
  if (uri.startsWith('unix://')) {
    const path = uri.slice('unix://'.length);
    if (!path.startsWith('/')) throw new ConfigError(`unix socket path must be absolute: ${uri}`);
    return { kind: 'unix', path };
  }
  if (uri.startsWith('tcp://')) {
    const rest = uri.slice('tcp://'.length);
    const m = /^(\[[^\]]+\]|[^:/[\]]+)(?::(\d+))?$/.exec(rest);
    if (!m) throw new ConfigError(`bad tcp address ${JSON.stringify(uri)}: want tcp://HOST:PORT`);
    const host = m[1]!.replace(/^\[|\]$/g, '');
    const port = m[2] === undefined ? DEFAULT_NBD_PORT : Number(m[2]);
    if (port > 65535) throw new ConfigError(`bad port in ${uri}`);
    return { kind: 'tcp', host, port };
  }
  throw new ConfigError(`unsupported listen address ${JSON.stringify(uri)}: use tcp://HOST:PORT or unix:///PATH`);
}

export function isLoopback(addr: ListenAddress): boolean {
  if (addr.kind === 'unix') return true;
  return addr.host === 'localhost' || addr.host === '::1' || /^127\./.test(addr.host);
}

/** The NBD URI (as libnbd, qemu and nbdfuse accept it) for an export at a bound address. */
export function nbdUri(addr: ListenAddress, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (addr.kind === 'unix') return `nbd+unix:///${name}?socket=${encodeURIComponent(addr.path)}`;
  const host = isIPv6(addr.host) ? `[${addr.host}]` : addr.host;
  return `nbd://${host}:${addr.port}/${name}`;
}

export function formatListenAddress(addr: ListenAddress): string {
  return addr.kind === 'unix'
    ? `unix://${addr.path}`
    : `tcp://${isIPv6(addr.host) ? `[${addr.host}]` : addr.host}:${addr.port}`;
}
