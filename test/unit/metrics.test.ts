/**
 * The metrics listener and the metrics before any layer host exists (a graphdriver before
 * dockerd's Init): loopback or unix socket only, the socket 0600, GET /metrics only, zeros.
 */
import { stat } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../common/logger.js';
import { LayerMetrics, serveMetrics } from '../../layers/metrics.js';
import { sample, scrape } from '../helpers/metrics.js';
import { tempDir } from '../helpers/tmp.js';

describe('metrics', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => (dir = await tempDir('slacker-metrics-')));
  afterEach(() => dir.cleanup());

  it.each(['0.0.0.0:9100', '10.1.2.3:9100', 'example:9100', 'nonsense'])('refuses to listen on %s', async (address) => {
    await expect(serveMetrics(new LayerMetrics().registry, address, silentLogger())).rejects.toThrow(/--metrics/);
  });

  it('serves GET /metrics on a 0600 unix socket: zeros before a host, call counts by front end', async () => {
    const metrics = new LayerMetrics();
    metrics.observer('graphdriver')('Get', true, 0.002);
    metrics.observer('graphdriver')('Get', false, 0.5);
    const socket = join(dir.path, 'm.sock');
    const server = await serveMetrics(metrics.registry, `unix://${socket}`, silentLogger());
    try {
      expect((await stat(socket)).mode & 0o777).toBe(0o600);
      const text = await scrape(socket);
      expect(sample(text, 'slacker_volumes')).toBe(0);
      expect(sample(text, 'slacker_chunk_fetched_bytes_total')).toBe(0);
      expect(sample(text, 'slacker_requests_total{front_end="graphdriver",method="Get",outcome="ok"}')).toBe(1);
      expect(sample(text, 'slacker_requests_total{front_end="graphdriver",method="Get",outcome="error"}')).toBe(1);
      const status = await new Promise<number>((resolve, reject) =>
        request({ socketPath: socket, path: '/other', method: 'GET' }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
          .on('error', reject)
          .end(),
      );
      expect(status).toBe(404);
    } finally {
      await server.close();
    }
  });
});
