/**
 * A client of the plugin protocol on a unix socket, as dockerd speaks it (JSON body, no
 * Content-Type): for `convert`, for operators poking a running plugin, and for tests.
 */
import { request, type IncomingHttpHeaders } from 'node:http';
import { PluginCallError } from '../common/errors.js';

/** One call; resolves with the status and raw body whatever the status. */
export function pluginRequest(
  socket: string,
  method: string,
  body: unknown,
): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, path: `/${method}`, method: 'POST' }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (b: Buffer) => parts.push(b));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(`${JSON.stringify(body)}\n`);
  });
}

/** A call whose answer is JSON; the plugin's `Err` becomes a PluginCallError. */
export async function pluginCall(socket: string, method: string, body: unknown): Promise<Record<string, unknown>> {
  const r = await pluginRequest(socket, method, body);
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(r.body.toString()) as Record<string, unknown>;
  } catch {
    throw new PluginCallError(`${method}: answer is not JSON (status ${r.status})`);
  }
  if (r.status !== 200 || parsed.Err) {
    throw new PluginCallError(`${method}: ${String(parsed.Err)}`, { context: { status: r.status } });
  }
  return parsed;
}
