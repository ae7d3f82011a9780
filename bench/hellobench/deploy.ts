/**
 * One deployment on a worker, timed the HelloBench way: pull, create, then run until ready
 * (the hello run exits with its output, a log line appears, or the first HTTP response, polled
 * every 10 ms). The container is removed afterwards.
 */
import { spawn } from 'node:child_process';
import { DOCKER, type Dockerd } from '../../harness/dockerd.js';
import type { Ready } from './images.js';
import type { Host } from './topology.js';

const now = (): number => Number(process.hrtime.bigint()) / 1e9;

export interface Deployment {
  pull: number;
  create: number;
  run: number;
}

export async function deploy(
  host: Host,
  image: string,
  ready: Ready,
  options: { hostNetwork?: boolean; timeoutS?: number } = {},
): Promise<Deployment> {
  const d = host.dockerd;
  let t = now();
  await d.docker(['pull', '-q', image], { timeoutMs: 1_800_000 });
  const pull = now() - t;
  t = now();
  const id = (await d.docker(['create', '--network', options.hostNetwork ? 'host' : 'none', image])).stdout.trim();
  const create = now() - t;
  t = now();
  try {
    await startUntilReady(d, id, ready, options.timeoutS);
    return { pull, create, run: now() - t };
  } finally {
    await d.docker(['rm', '-f', id]).catch(() => undefined);
  }
}

/** Starts created container `id` and waits until it is ready (the HelloBench way). */
export async function startUntilReady(d: Dockerd, id: string, ready: Ready, timeoutS = 600): Promise<void> {
  if (ready.kind === 'exit') {
    const out = await d.docker(['start', '-a', id], { timeoutMs: timeoutS * 1000 });
    if (!out.stdout.includes(ready.output)) throw new Error(`container ${id} printed ${JSON.stringify(out.stdout)}`);
  } else {
    await d.docker(['start', id]);
    if (ready.kind === 'log') await waitForLog(d.socket, id, ready.line, timeoutS);
    else await waitForHttp(ready.port, timeoutS);
  }
}

function waitForLog(socket: string, id: string, line: string, timeoutS: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(DOCKER, ['--host', `unix://${socket}`, 'logs', '-f', id], { stdio: ['ignore', 'pipe', 'pipe'] });
    let seen = '';
    const timer = setTimeout(() => finish(new Error(`no "${line}" in ${timeoutS} s`)), timeoutS * 1000);
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      p.kill();
      if (err) reject(err);
      else resolve();
    };
    const onData = (b: Buffer): void => {
      seen = (seen + b.toString()).slice(-65536);
      if (seen.includes(line)) finish();
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', onData);
    p.on('exit', () => finish(seen.includes(line) ? undefined : new Error(`container exited before "${line}"`)));
  });
}

async function waitForHttp(port: number, timeoutS: number): Promise<void> {
  const deadline = now() + timeoutS;
  while (now() < deadline) {
    const ok = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(1000) }).then(
      async (r) => {
        await r.arrayBuffer();
        return true;
      },
      () => false,
    );
    if (ok) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`no HTTP response on port ${port} in ${timeoutS} s`);
}
